"""A throw-away PostgreSQL cluster for the tests: initdb in a temporary directory, a free port.

Never the machine's own PostgreSQL: `PostgresCluster` runs Debian's server binaries
(``/usr/lib/postgresql/<version>/bin``, the newest installed; else ``initdb`` on PATH) on
127.0.0.1 and a free port, with its socket in its own directory, trust authentication and
``fsync=off`` (a test cluster needs no durability). PostgreSQL refuses to run as root, and CI
runs as root: then every server command runs as the ``postgres`` user (``runuser``), which
Debian's ``postgresql`` package creates, and the directory is handed to it.

Fixtures (``pytest_plugins = ("tests.postgres",)`` in a test module):

``postgres_cluster``
    session scope: ONE cluster for the whole session.
``pg_url``
    function scope: a fresh, empty database on it; its SQLAlchemy URL (``postgresql://…``).

A missing server is a failure with the install hint (``apt-get install postgresql``), never a
skip.

PYTEST_DONT_REWRITE: test modules import from here and name it in ``pytest_plugins``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

HOST: Final = "127.0.0.1"
SUPERUSER: Final = "postgres"
INSTALL_HINT: Final = (
    "the tests need PostgreSQL's server binaries (apt-get install -y postgresql; its system "
    "service is not used) and psycopg (pip install 'psycopg[binary]')"
)


class PostgresUnavailableError(RuntimeError):
    """No initdb/pg_ctl, or no unprivileged user to run them as root."""


def _bin_dir() -> Path:
    # Debian: /usr/lib/postgresql/<major>/bin, not on PATH; the newest major wins.
    found = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parts[-3].isdigit()),
        key=lambda p: int(p.parts[-3]),
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise PostgresUnavailableError(f"initdb not found: {INSTALL_HINT}")
    return Path(initdb).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One PostgreSQL server in a temporary directory; `stop` removes everything."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.as_user: list[str] = []
        self._owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailableError(
                    f"running as root, but there is no 'postgres' user to run the server as: "
                    f"{INSTALL_HINT}"
                ) from None
            self.as_user = ["runuser", "-u", "postgres", "--"]
        # Not under pytest's basetemp: that is root's 0700 directory, which 'postgres' cannot
        # enter. /tmp is world-traversable; the cluster's own directory stays private.
        self.dir = Path(tempfile.mkdtemp(prefix="bluezone-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        if self._owner is not None:
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--no-locale", "--no-sync",
        )  # fmt: skip

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()}\n{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def start(self, *, durable: bool = False) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``).

        Tests need no durability (``fsync=off``); ``durable`` keeps PostgreSQL's defaults, for
        benchmarks whose numbers should mean something on a real server.
        """
        options = f"-p {self.port} -k {self.dir} -c listen_addresses={HOST} -c max_connections=100"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once and remove its directory."""
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (``postgresql://`` means psycopg 3 to us)."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def create_database(self) -> str:
        """Create a new empty database; return its URL."""
        import psycopg

        name = f"test_{secrets.token_hex(6)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """ONE PostgreSQL server for the whole session."""
    try:
        cluster = PostgresCluster()
    except PostgresUnavailableError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster: PostgresCluster) -> str:
    """A fresh database on the session's server."""
    return postgres_cluster.create_database()
