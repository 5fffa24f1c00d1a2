"""A real, throw-away mosquitto for tests: own ports, generated TLS, passwords, ACL, persistence.

`Broker` writes everything into one directory (a CA, a server certificate for ``localhost`` /
``127.0.0.1``, a ``mosquitto_passwd`` file, an ACL, ``mosquitto.conf``, the persistence database
and ``mosquitto.log``) and runs ``mosquitto -c`` on free loopback ports picked in Python. It never
uses the machine's own mosquitto (port 1883) or its configuration.

Accounts (random passwords in `Broker.passwords`):

``gw-001``, ``gw-002``
    gateways: read and write only ``bluezone/v1/+/<their username>/#``.
``central``
    the consumer: reads ``bluezone/v1/#``, writes ``bluezone/v1/+/+/cmd/#``.
``fleet``
    many simulated gateways at once (tests of the central collector): publishes what a
    gateway publishes, reads commands, for any gateway id.

Listeners, all on ``127.0.0.1`` (`Broker.host`):

`Broker.port`
    plain MQTT, username/password.
`Broker.tls_port`
    TLS (1.2 minimum), username/password; clients verify the server with `Broker.ca_file`.
`Broker.cert_port`
    TLS with a required client certificate signed by the CA (`Broker.client_cert`); the
    certificate's CN is the username (``use_identity_as_username``), no password is checked.

Test clients (paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``, MQTT v5):

`Subscriber`
    a persistent session (``clean_start=False`` + SessionExpiryInterval) that collects what it
    receives; `publish_once` returns the PUBACK reason code (135 "Not authorized" when the ACL
    denies); `publish_many` pipelines a backlog; `connect_result` returns the CONNACK reason
    code (135 for a wrong password).

Lifecycle: `Broker.start` waits for ``READY=1`` on a ``NOTIFY_SOCKET`` plus one round trip
through mosquitto's event loop; `Broker.stop` repeats SIGTERM (mosquitto 2.0.11 loses one sent
right after READY=1) and kills after 2 s; `Broker.restart` keeps ports and persistence;
`Broker.kill` is a crash (only the last autosave survives: `Broker.wait_for_autosave`,
`Broker.save`). Probes and wake-ups connect to the plain port: "New connection" lines in the log.

Fixtures (``pytest_plugins = ("tests.broker",)`` in a test module, or import them in a conftest):

``mqtt_broker``
    session scope: ONE broker for the whole session.
``broker``
    function scope: the same broker, started again if an earlier test stopped or killed it.
    State is shared (retained messages, persistent sessions): give each test its own topics
    (`unique_site`) and client ids.

A missing ``mosquitto``/``mosquitto_passwd`` binary or Python package fails the fixture with an
install hint; it is never a skip.

PYTEST_DONT_REWRITE: no assertions here need pytest's rewriting, and a test module's
``pytest_plugins`` naming this module after importing from it would otherwise warn.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import ipaddress
import os
import secrets
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import pytest

# A missing package is reported by the fixtures with an install hint, not as an ImportError
# while the test module is collected.
with contextlib.suppress(ImportError):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions
with contextlib.suppress(ImportError):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GATEWAY_USERS: Final = ("gw-001", "gw-002")
CENTRAL_USER: Final = "central"
FLEET_USER: Final = "fleet"
USERS: Final = (*GATEWAY_USERS, CENTRAL_USER, FLEET_USER)
TOPIC_ROOT: Final = "bluezone/v1"
HOST: Final = "127.0.0.1"
DEFAULT_TIMEOUT_S: Final = 5.0
STOP_TIMEOUT_S: Final = 2.0
STOP_RESEND_S: Final = 0.05
SESSION_EXPIRY_S: Final = 3600
CERT_VALIDITY: Final = datetime.timedelta(days=30)
# mosquitto built without systemd support never sends READY=1: after this long, poll the ports.
NOTIFY_GRACE_S: Final = 1.0

Listener = Literal["plain", "tls", "cert"]
"""Which listener a test client uses: `Broker.port`, `Broker.tls_port` or `Broker.cert_port`."""

INSTALL_HINT: Final = (
    "the test broker needs mosquitto and mosquitto_passwd (apt-get install -y mosquitto "
    "mosquitto-clients; the package's system service is not used) and the Python packages "
    "paho-mqtt>=2.1 and cryptography (.venv/bin/pip install 'paho-mqtt>=2.1' cryptography)"
)

ACL: Final = """\
# Generated by tests/broker.py.
# Gateways: read and write only their own subtree, bluezone/v1/<site>/<gateway id>/#.
pattern readwrite bluezone/v1/+/%u/#

# The central consumer: reads every gateway's topics and sends commands to gateways.
user central
topic read bluezone/v1/#
topic write bluezone/v1/+/+/cmd/#

# Simulated gateways (tests of the central collector): any gateway id, a gateway's rights.
user fleet
topic write bluezone/v1/+/+/events
topic write bluezone/v1/+/+/status
topic write bluezone/v1/+/+/health
topic write bluezone/v1/+/+/cmd-result
topic read bluezone/v1/+/+/cmd/#
"""


class BrokerUnavailableError(RuntimeError):
    """mosquitto, mosquitto_passwd or a Python package (paho-mqtt, cryptography) is missing."""


class BrokerError(RuntimeError):
    """mosquitto did not start, or died; the message carries its output and log."""


class NoConnackError(ConnectionError):
    """The connection failed or was closed before the broker answered CONNECT (e.g. a TLS
    handshake the broker refused, or nothing listening)."""


class MqttTimeoutError(TimeoutError):
    """A test client waited longer than its timeout for an acknowledgement or messages."""


def _check_dependencies() -> None:
    missing = [
        what
        for what, present in (
            ("mosquitto", _mosquitto_binary() is not None),
            ("mosquitto_passwd", shutil.which("mosquitto_passwd") is not None),
            ("paho-mqtt", _importable("paho.mqtt")),
            ("cryptography", _importable("cryptography.x509")),
        )
        if not present
    ]
    if missing:
        raise BrokerUnavailableError(f"{', '.join(missing)} not found: {INSTALL_HINT}")
    from paho.mqtt import __version__ as paho_version

    if int(paho_version.split(".")[0]) < 2:
        raise BrokerUnavailableError(f"paho-mqtt {paho_version} is too old: {INSTALL_HINT}")


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (``find_spec`` raises when a parent is missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _mosquitto_binary() -> str | None:
    """``mosquitto`` from PATH, else Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"
    return found


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on `HOST` (bound together, then released; a tiny race)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _write_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a file only its owner can read (mode 0600 even if it existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
    return path


def unique_site(prefix: str = "site") -> str:
    """A fresh site topic level, so tests sharing the session broker do not see each other."""
    return f"{prefix}-{secrets.token_hex(4)}"


# --- certificates ---------------------------------------------------------------------------


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _cert_builder(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None
) -> x509.CertificateBuilder:
    """Common fields: validity from an hour ago (clock skew) for `CERT_VALIDITY`, SKI/AKI."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if issuer is None else issuer.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if issuer is not None:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    return builder


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --- the broker -----------------------------------------------------------------------------


class Broker:
    """One mosquitto with generated TLS material, accounts, ACL and config in ``workdir``.

    Ports are chosen once, in the constructor, and kept across `restart` / `start` after `stop`
    or `kill`, so clients reconnect to the same address; so does the persistence database.

    Args:
        workdir: where to write everything (created if missing, kept afterwards); by default a
            new temporary directory that `close` removes.
        cert_listener: also open `cert_port` (client-certificate authentication).
    """

    def __init__(self, workdir: Path | None = None, *, cert_listener: bool = True) -> None:
        _check_dependencies()
        self._own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host: str = HOST
        """Where every listener is bound; the server certificate covers it and ``localhost``."""
        self.port, self.tls_port, cert_port = _free_ports(3)
        self.cert_port: int | None = cert_port if cert_listener else None
        """The client-certificate listener (None if built with ``cert_listener=False``)."""
        self.ca_file = self.dir / "ca.crt"
        self.server_cert_file = self.dir / "server.crt"
        self.server_key_file = self.dir / "server.key"
        self.password_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        self.config_file = self.dir / "mosquitto.conf"
        self.log_file = self.dir / "mosquitto.log"
        self.output_file = self.dir / "mosquitto.out"
        """mosquitto's stdout/stderr (errors from before its log is open, e.g. config errors)."""
        self.persistence_dir = self.dir / "persistence"
        self.persistence_file = self.persistence_dir / "mosquitto.db"
        self.passwords: dict[str, str] = {user: secrets.token_hex(16) for user in USERS}
        """Username → password for every account in the password file."""
        self.starts = 0
        """How many times mosquitto was started (1 after the first `start`)."""
        self.forced_kills = 0
        """How many `stop` calls had to SIGKILL (SIGTERM not honoured within the timeout)."""
        self._process: subprocess.Popen[bytes] | None = None
        self._client_certs = 0
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        self._ca_cert = self._make_ca()
        self._write_server_cert()
        self._write_passwords()
        self.acl_file.write_text(ACL)
        self.persistence_dir.mkdir(exist_ok=True)
        self.config_file.write_text(self._config())

    # --- generated files ----------------------------------------------------------------------

    def _make_ca(self) -> x509.Certificate:
        cert = (
            _cert_builder("bluezone test CA", self._ca_key, None)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_file.write_bytes(_pem_cert(cert))
        return cert

    def _sign(
        self,
        cn: str,
        usage: x509.ObjectIdentifier,
        san: Iterable[x509.GeneralName] = (),
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            _cert_builder(cn, key, self._ca_cert)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        names = list(san)
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return key, builder.sign(self._ca_key, hashes.SHA256())

    def _write_server_cert(self) -> None:
        key, cert = self._sign(
            "localhost",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))],
        )
        self.server_cert_file.write_bytes(_pem_cert(cert))
        _write_private(self.server_key_file, _pem_key(key))

    def _write_passwords(self) -> None:
        _write_private(self.password_file, b"")
        for user, password in self.passwords.items():
            result = subprocess.run(
                ["mosquitto_passwd", "-b", str(self.password_file), user, password],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                raise BrokerError(f"mosquitto_passwd failed for {user}: {result.stderr.strip()}")

    def _config(self) -> str:
        tls = [
            f"cafile {self.ca_file}",
            f"certfile {self.server_cert_file}",
            f"keyfile {self.server_key_file}",
            "tls_version tlsv1.2",
        ]
        lines = [
            "# Generated by tests/broker.py.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            # Sessions and queued QoS 1 messages survive restart(); autosave bounds what kill()
            # loses (mosquitto saves when it is more than 1 s older than now: every ~2 s).
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            f"persistence_file {self.persistence_file.name}",
            "autosave_interval 1",
            # Unlimited queue for offline persistent sessions: a long outage drops nothing.
            "max_queued_messages 0",
            # Without it a TLS CONNACK waits for the client's delayed ACK (Nagle): +40 ms.
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto switches to user "mosquitto", which cannot read the
            # 0700 work directory ("Error: Unable to open pwfile").
            lines.append("user root")
        lines += ["", f"listener {self.port} {HOST}"]
        lines += ["", f"listener {self.tls_port} {HOST}", *tls, "require_certificate false"]
        if self.cert_port is not None:
            lines += [
                "",
                f"listener {self.cert_port} {HOST}",
                *tls,
                "require_certificate true",
                "use_identity_as_username true",
            ]
        return "\n".join(lines) + "\n"

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the mosquitto process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The running mosquitto's process id (None when stopped)."""
        return self._process.pid if self._process is not None and self.running else None

    def _ports(self) -> list[int]:
        return [p for p in (self.port, self.tls_port, self.cert_port) if p is not None]

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once its event loop serves connections.

        Readiness is mosquitto's ``READY=1`` on a ``NOTIFY_SOCKET`` owned here (Debian builds it
        with systemd support; it is sent after all listeners are bound), then one round trip
        through its event loop (`_loop_answers`): ``READY=1`` comes a moment *before* the loop
        runs, and a SIGTERM in that moment is lost (see `stop`). A build without systemd
        support is detected by probing the ports after `NOTIFY_GRACE_S`.

        Raises:
            BrokerError: it exited or did not become ready in time (with its output and log).
        """
        if self.running:
            raise BrokerError("mosquitto is already running")
        binary = _mosquitto_binary()
        if binary is None:
            raise BrokerUnavailableError(f"mosquitto not found: {INSTALL_HINT}")
        name = f"bluezone-mosquitto-{os.getpid()}-{secrets.token_hex(6)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind("\0" + name)  # abstract: no file, no 108-byte path limit
            env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
            with self.output_file.open("ab") as out:
                self._process = subprocess.Popen(
                    [binary, "-c", str(self.config_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            self.starts += 1
            try:
                self._wait_ready(notify, time.monotonic() + timeout)
            except BaseException:
                self.kill()
                raise

    def _check_alive(self, doing: str) -> None:
        if self._process is None or self._process.poll() is not None:
            code = None if self._process is None else self._process.returncode
            raise BrokerError(f"mosquitto exited with {code} while {doing}\n" + self.diagnostics())

    def _wait_ready(self, notify: socket.socket, deadline: float) -> None:
        grace_end = time.monotonic() + NOTIFY_GRACE_S
        while True:
            self._check_alive("starting")
            readable, _, _ = select.select([notify], [], [], 0.05)
            if readable and b"READY=1" in notify.recv(4096).split(b"\n"):
                break
            if time.monotonic() > grace_end and all(_port_open(p) for p in self._ports()):
                break
            if time.monotonic() > deadline:
                raise BrokerError("mosquitto sent no READY=1 in time\n" + self.diagnostics())
        while not self._loop_answers():
            self._check_alive("starting")
            if time.monotonic() > deadline:
                raise BrokerError("mosquitto's event loop did not answer\n" + self.diagnostics())

    def _loop_answers(self, timeout: float = 1.0) -> bool:
        """Whether mosquitto's event loop accepted a connection and saw it closed: connect to
        the plain port, shut down our side, expect mosquitto's close (EOF) back. (The kernel
        completes the TCP handshake by itself; only the EOF proves the loop runs.) Logs a "New
        connection" and a "closed its connection" line."""
        try:
            with socket.create_connection((self.host, self.port), timeout=timeout) as s:
                s.shutdown(socket.SHUT_WR)
                return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except OSError:  # refused, or timed out
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop mosquitto cleanly (it saves its persistence database on SIGTERM). Idempotent.

        Two mosquitto 2.0.11 behaviours shape this:

        * A SIGTERM arriving just after READY=1 is lost: mosquitto sets its run flag *after*
          notifying, overwriting what the handler did (most immediate stops here). SIGTERM is
          therefore repeated every `STOP_RESEND_S` until the process exits.
        * Signals are blocked while mosquitto waits in ``epoll_wait`` (100 ms timeout), so an
          idle broker acts on one only at its next 100 ms tick. A TCP connect to the plain
          port after each SIGTERM wakes the loop (it logs a "New connection" line).

        After ``timeout`` the process is killed (counted in `forced_kills`; the changes since
        the last autosave are then lost).
        """
        process = self._process
        if process is None:
            return
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                process.kill()
                self.forced_kills += 1
                break
            process.send_signal(signal.SIGTERM)
            self._wake()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=min(STOP_RESEND_S, remaining))
        process.wait()
        self._process = None

    def _wake(self) -> None:
        """Make mosquitto's event loop run once now (a connection it accepts and sees closed)."""
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=0.05),
        ):
            pass

    def kill(self) -> None:
        """SIGKILL: a crash or power cut. Only what the last autosave wrote survives."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def restart(self, timeout: float = 10.0) -> None:
        """`stop` (clean, persistence saved) and `start` again on the same ports."""
        self.stop()
        self.start(timeout)

    def _db_version(self) -> tuple[int, int] | None:
        try:
            st = self.persistence_file.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def wait_for_autosave(self, timeout: float = 5.0) -> None:
        """Block until mosquitto has rewritten its persistence file after this call (its
        autosave, every ~2 s): what was acknowledged before the call then survives `kill`.

        Raises:
            BrokerError: no save within ``timeout``.
        """
        before = self._db_version()
        deadline = time.monotonic() + timeout
        while self._db_version() == before:
            if not self.running or time.monotonic() > deadline:
                raise BrokerError(f"no autosave of {self.persistence_file} within {timeout} s")
            time.sleep(0.02)

    def save(self, timeout: float = 5.0) -> None:
        """Make mosquitto write its persistence file now (SIGUSR1) and wait until it has."""
        before = self._db_version()
        if self._process is None or not self.running:
            raise BrokerError("mosquitto is not running")
        self._process.send_signal(signal.SIGUSR1)
        self._wake()  # signals wait for the next 100 ms tick otherwise (see `stop`)
        deadline = time.monotonic() + timeout
        while self._db_version() == before:
            if time.monotonic() > deadline:
                raise BrokerError(f"SIGUSR1 did not save {self.persistence_file} in {timeout} s")
            time.sleep(0.005)

    def ensure_running(self) -> None:
        """Start it if it is not running (stopped, killed, or crashed)."""
        if not self.running:
            self.kill()  # reap a crashed process
            self.start()

    def close(self) -> None:
        """Stop it; remove the work directory if the constructor created it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- credentials --------------------------------------------------------------------------

    def password_file_for(self, user: str, directory: Path) -> Path:
        """Write ``user``'s password (no trailing newline) to ``directory/<user>.password``, mode
        0600, as the gateway's ``password_file`` setting expects; returns the path."""
        directory.mkdir(parents=True, exist_ok=True)
        return _write_private(directory / f"{user}.password", self.passwords[user].encode())

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        """A client certificate (EKU clientAuth) for ``cn``, signed by the CA; returns
        ``(cert_path, key_path)`` (key mode 0600). On `cert_port` the CN is the username."""
        key, cert = self._sign(cn, ExtendedKeyUsageOID.CLIENT_AUTH)
        self._client_certs += 1
        base = self.dir / "clients"
        base.mkdir(exist_ok=True)
        stem = f"client{self._client_certs}"
        cert_path = base / f"{stem}.crt"
        cert_path.write_bytes(_pem_cert(cert))
        return cert_path, _write_private(base / f"{stem}.key", _pem_key(key))

    def ssl_context(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A client context trusting only the test CA (hostname checked), with an optional
        client certificate ``(cert_path, key_path)``."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            context.load_cert_chain(str(cert[0]), str(cert[1]))
        return context

    def listener_port(self, listener: Listener) -> int:
        """The port of ``"plain"``, ``"tls"`` or ``"cert"``."""
        if listener == "plain":
            return self.port
        if listener == "tls":
            return self.tls_port
        if self.cert_port is None:
            raise BrokerError("this broker was built with cert_listener=False")
        return self.cert_port

    # --- diagnostics --------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything in mosquitto.log so far (all starts)."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        """The tail of mosquitto's output and log, for error messages."""
        return f"output:\n{_tail(self.output_file)}\nlog ({self.log_file}):\n{_tail(self.log_file)}"

    def __repr__(self) -> str:
        return (
            f"Broker(dir={str(self.dir)!r}, port={self.port}, tls_port={self.tls_port}, "
            f"cert_port={self.cert_port}, running={self.running})"
        )


# --- test clients ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """A message a `Subscriber` received."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


def _client(
    broker: Broker,
    user: str | None,
    *,
    password: str | None,
    client_id: str,
    listener: Listener,
    cert: tuple[Path, Path] | None,
) -> mqtt.Client:
    """A configured, unconnected paho client (VERSION2 callbacks, MQTT v5)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    if user is not None:
        client.username_pw_set(user, broker.passwords.get(user) if password is None else password)
    if listener != "plain":
        client.tls_set_context(broker.ssl_context(cert))
    return client


def _connect_properties(session_expiry: int) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = session_expiry
    return properties


class _Waiter:
    """Results that paho callbacks hand to the test thread (the callbacks only store)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.session_present = False
        self.disconnected: ReasonCode | None = None
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}

    def on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self.cond:
            self.connack = reason_code
            self.session_present = flags.session_present
            self.disconnected = None
            self.cond.notify_all()

    def on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self.cond:
            self.disconnected = reason_code
            self.cond.notify_all()

    def on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self.cond:
            self.acks[mid] = reason_code
            self.cond.notify_all()

    def on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        with self.cond:
            self.subacks[mid] = reason_codes
            self.cond.notify_all()

    def attach(self, client: mqtt.Client) -> None:
        client.on_connect = self.on_connect
        client.on_disconnect = self.on_disconnect
        client.on_publish = self.on_publish
        client.on_subscribe = self.on_subscribe


def _wait(
    client: mqtt.Client,
    waiter: _Waiter,
    done: Callable[[], bool],
    timeout: float,
    *,
    threaded: bool,
) -> bool:
    """Until ``done()``, the connection dropping, or ``timeout``; returns ``done()``.

    ``threaded``: paho's `loop_start` thread runs the client, wait for its callbacks; else run
    paho's loop in this thread. (Never both on one client: `loop` creates a wake-up socket
    pair that a later `loop_start` replaces without closing, a ResourceWarning.)
    """
    if threaded:
        with waiter.cond:
            waiter.cond.wait_for(lambda: done() or waiter.disconnected is not None, timeout)
            return done()
    deadline = time.monotonic() + timeout
    while not done():
        if waiter.disconnected is not None or time.monotonic() > deadline:
            break
        if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            break
    return done()


def _open(
    broker: Broker,
    user: str | None,
    *,
    password: str | None,
    client_id: str,
    listener: Listener,
    cert: tuple[Path, Path] | None,
    clean_start: bool,
    session_expiry: int,
    timeout: float,
    threaded: bool = False,
    waiter: _Waiter | None = None,
    on_message: Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None] | None = None,
) -> tuple[mqtt.Client, _Waiter]:
    """Connect and wait for CONNACK; the caller must `_close` the client.

    ``threaded``: start paho's network thread (`loop_start`) right after CONNECT; else the
    caller drives the client with `_wait` (``threaded=False``).

    ``on_message`` is attached before CONNECT: a resumed session's queued messages can arrive
    in the same read as the CONNACK, and paho acknowledges (and drops) a QoS 1 message that
    finds no ``on_message``.

    Raises:
        NoConnackError: the TCP/TLS connection failed or closed before a CONNACK.
    """
    client = _client(
        broker, user, password=password, client_id=client_id, listener=listener, cert=cert
    )
    waiter = _Waiter() if waiter is None else waiter
    waiter.attach(client)
    client.on_message = on_message
    try:
        client.connect(
            broker.host,
            broker.listener_port(listener),
            keepalive=30,
            clean_start=clean_start,
            properties=_connect_properties(session_expiry),
        )
    except OSError as e:  # ssl.SSLError included
        _close(client)
        raise NoConnackError(f"connecting to {listener} port failed: {e!r}") from e
    if threaded:
        client.loop_start()
    started = time.monotonic()
    if not _wait(client, waiter, lambda: waiter.connack is not None, timeout, threaded=threaded):
        _close(client)
        raise NoConnackError(
            f"no CONNACK on the {listener} listener: connection lost or timed out after "
            f"{time.monotonic() - started:.3f} s (paho's disconnect reason: {waiter.disconnected})"
        )
    return client, waiter


def _close(client: mqtt.Client) -> None:
    """Disconnect (if connected) and release paho's sockets."""
    with contextlib.suppress(Exception):
        client.disconnect()
    with contextlib.suppress(Exception):
        client.loop_stop()


def connect_result(
    broker: Broker,
    user: str | None,
    password: str | None = None,
    *,
    listener: Listener = "plain",
    cert: tuple[Path, Path] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ReasonCode:
    """The CONNACK reason code for ``user``/``password`` (default: the right password).

    0 "Success", or under MQTT v5 mosquitto 2.0's 135 "Not authorized" for a wrong password,
    an unknown user or no credentials (not 134 "Bad user name or password").

    Raises:
        NoConnackError: no CONNACK at all (e.g. the cert listener without a client cert).
    """
    client, waiter = _open(
        broker,
        user,
        password=password,
        client_id=f"probe-{secrets.token_hex(4)}",
        listener=listener,
        cert=cert,
        clean_start=True,
        session_expiry=0,
        timeout=timeout,
    )
    _close(client)
    assert waiter.connack is not None
    return waiter.connack


def _open_publisher(
    broker: Broker,
    user: str | None,
    prefix: str,
    listener: Listener,
    cert: tuple[Path, Path] | None,
    timeout: float,
) -> tuple[mqtt.Client, _Waiter]:
    """A clean, driven-by-hand connection for publishing; raises if the CONNACK refused it."""
    client, waiter = _open(
        broker,
        user,
        password=None,
        client_id=f"{prefix}-{user or 'cert'}-{secrets.token_hex(4)}",
        listener=listener,
        cert=cert,
        clean_start=True,
        session_expiry=0,
        timeout=timeout,
    )
    assert waiter.connack is not None
    if waiter.connack.is_failure:
        _close(client)
        raise ConnectionRefusedError(f"CONNACK {waiter.connack.value} {waiter.connack}")
    return client, waiter


def publish_once(
    broker: Broker,
    user: str | None,
    topic: str,
    payload: bytes | str,
    qos: int = 1,
    retain: bool = False,
    *,
    listener: Listener = "plain",
    cert: tuple[Path, Path] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ReasonCode:
    """Connect as ``user``, publish one message, disconnect; returns the acknowledgement's
    reason code (QoS 1: the PUBACK's).

    Check ``rc.is_failure``, not ``rc == 0``: 16 "No matching subscribers" is a success. An ACL
    denial is 135 "Not authorized" under MQTT v5 (v3.1.1 would acknowledge and drop silently),
    and mosquitto 2.0 then closes the connection ("Bad socket read/write ... Unknown error" in
    its log; eclipse-mosquitto/mosquitto#2579): harmless here, one message per connection.

    Raises:
        NoConnackError: no CONNACK; `MqttTimeoutError`: no acknowledgement in time;
        `ConnectionRefusedError`: the CONNACK was a failure (its reason code in the message).
    """
    client, waiter = _open_publisher(broker, user, "pub", listener, cert, timeout)
    try:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if not _wait(client, waiter, lambda: info.mid in waiter.acks, timeout, threaded=False):
            raise MqttTimeoutError(f"no acknowledgement for {topic!r} within {timeout} s")
        return waiter.acks[info.mid]
    finally:
        _close(client)


def publish_many(
    broker: Broker,
    user: str | None,
    messages: Iterable[tuple[str, bytes | str]],
    qos: int = 1,
    *,
    listener: Listener = "plain",
    cert: tuple[Path, Path] | None = None,
    timeout: float = 30.0,
) -> list[ReasonCode]:
    """Publish ``(topic, payload)`` pairs pipelined on one connection (paho's default 20 in
    flight); returns the acknowledgements' reason codes in order. For backlogs and floods.

    Raises:
        ConnectionError: the broker closed the connection (mosquitto 2.0 does so right after
            a PUBLISH its ACL denies, see `publish_once`); the message says how many were
            acknowledged. `MqttTimeoutError`, `NoConnackError`, `ConnectionRefusedError`: as
            for `publish_once`.
    """
    client, waiter = _open_publisher(broker, user, "bulk", listener, cert, timeout)
    try:
        mids = [client.publish(topic, payload, qos=qos).mid for topic, payload in messages]
        if not _wait(
            client, waiter, lambda: all(m in waiter.acks for m in mids), timeout, threaded=False
        ):
            acked = sum(m in waiter.acks for m in mids)
            if waiter.disconnected is not None or not client.is_connected():
                raise ConnectionError(
                    f"connection closed after {acked} of {len(mids)} acknowledgements "
                    f"(last: {[waiter.acks[m].value for m in mids if m in waiter.acks][-1:]})"
                )
            raise MqttTimeoutError(f"{acked} of {len(mids)} acknowledged within {timeout} s")
        return [waiter.acks[m] for m in mids]
    finally:
        _close(client)


class Subscriber:
    """A test subscriber with a persistent session, collecting messages in paho's thread.

    Connects with ``clean_start=False`` and SessionExpiryInterval ``session_expiry``: the broker
    keeps its subscriptions and queues QoS 1 messages while it is disconnected (`close`, broker
    `stop`/`restart` with persistence). A new `Subscriber` with the same ``client_id`` resumes
    that session (`session_present`) and receives the queued messages. Across a broker restart
    while connected, paho reconnects by itself (after ~1 s, paho's minimum delay).

    Args:
        broker: the broker.
        user: the username (``None`` on the cert listener: the certificate's CN is the user).
        topics: filters to subscribe to at QoS 1 (again on every construction; idempotent).
        client_id: reuse one to resume a session; default a new random one.
        password: default the user's right one.
        listener: ``"plain"``, ``"tls"`` or ``"cert"`` (needs ``cert``).
        cert: ``(cert_path, key_path)`` from `Broker.client_cert`.
        session_expiry: seconds the broker keeps the session after a disconnect.
        timeout: for CONNACK and SUBACK.

    Raises:
        ConnectionRefusedError: the CONNACK or a SUBACK was a failure.
        NoConnackError, MqttTimeoutError: as the names say.
    """

    def __init__(
        self,
        broker: Broker,
        user: str | None,
        topics: Iterable[str] = (f"{TOPIC_ROOT}/#",),
        *,
        client_id: str | None = None,
        password: str | None = None,
        listener: Listener = "plain",
        cert: tuple[Path, Path] | None = None,
        session_expiry: int = SESSION_EXPIRY_S,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.client_id = client_id or f"sub-{user or 'cert'}-{secrets.token_hex(4)}"
        self._messages: list[Message] = []
        self._waiter = _Waiter()
        self._client, _ = _open(
            broker,
            user,
            password=password,
            client_id=self.client_id,
            listener=listener,
            cert=cert,
            clean_start=False,
            session_expiry=session_expiry,
            timeout=timeout,
            threaded=True,
            waiter=self._waiter,
            on_message=self._on_message,
        )
        connack = self._waiter.connack
        assert connack is not None
        self.session_present: bool = self._waiter.session_present
        """Whether the broker resumed an existing session on the first CONNACK."""
        try:
            if connack.is_failure:
                raise ConnectionRefusedError(f"CONNACK {connack.value} {connack}")
            self._subscribe(list(topics), timeout)
        except BaseException:
            _close(self._client)
            raise

    def _subscribe(self, topics: list[str], timeout: float) -> None:
        if not topics:
            return
        rc, mid = self._client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        if mid is None:
            raise ConnectionError(f"SUBSCRIBE not sent: {rc}")
        waiter = self._waiter
        if not _wait(self._client, waiter, lambda: mid in waiter.subacks, timeout, threaded=True):
            raise MqttTimeoutError(f"no SUBACK for {topics} within {timeout} s")
        failed = [(t, rc.value) for t, rc in zip(topics, waiter.subacks[mid], strict=True)]
        if any(value >= 0x80 for _, value in failed):
            raise ConnectionRefusedError(f"SUBACK reason codes {failed}")

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup))
        with self._waiter.cond:
            self._messages.append(message)
            self._waiter.cond.notify_all()

    @property
    def connected(self) -> bool:
        """Whether paho currently has a session with the broker."""
        return self._client.is_connected()

    def messages(self, topic_filter: str = "#") -> list[Message]:
        """What arrived so far (in order, duplicates included) on topics matching the filter."""
        with self._waiter.cond:
            snapshot = list(self._messages)
        return [m for m in snapshot if mqtt.topic_matches_sub(topic_filter, m.topic)]

    def payloads(self, topic_filter: str = "#") -> list[bytes]:
        """The payloads of `messages`."""
        return [m.payload for m in self.messages(topic_filter)]

    def wait_for(
        self, predicate: Callable[[list[Message]], bool], timeout: float = DEFAULT_TIMEOUT_S
    ) -> list[Message]:
        """Block until ``predicate(all messages so far)`` is true; returns those messages.

        Raises:
            MqttTimeoutError: not within ``timeout`` (with what did arrive).
        """
        with self._waiter.cond:
            if not self._waiter.cond.wait_for(lambda: predicate(self._messages), timeout):
                raise MqttTimeoutError(
                    f"{self.client_id}: condition not met within {timeout} s; got "
                    f"{[(m.topic, m.payload) for m in self._messages]}"
                )
            return list(self._messages)

    def wait_for_connected(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Block until paho has (re)connected, e.g. after a broker restart."""
        deadline = time.monotonic() + timeout
        while not self._client.is_connected():
            if time.monotonic() > deadline:
                raise MqttTimeoutError(f"{self.client_id}: not reconnected within {timeout} s")
            time.sleep(0.02)

    def close(self, *, keep_session: bool = True) -> None:
        """Disconnect normally and stop paho's thread. Idempotent.

        The broker keeps the session (subscriptions, queued QoS 1 messages) for
        ``session_expiry`` seconds, unless ``keep_session=False``: then the DISCONNECT carries
        SessionExpiryInterval 0 and the broker discards it.
        """
        if not keep_session and self._client.is_connected():
            properties = Properties(PacketTypes.DISCONNECT)
            properties.SessionExpiryInterval = 0
            with contextlib.suppress(Exception):
                self._client.disconnect(properties=properties)
        _close(self._client)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """ONE mosquitto for the whole session; its files stay in pytest's basetemp."""
    try:
        broker = Broker(tmp_path_factory.mktemp("mosquitto"))
    except BrokerUnavailableError as e:
        missing = str(e)
    else:
        missing = ""
    if missing:
        pytest.fail(missing, pytrace=False)  # a failure with the install hint, never a skip
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def broker(mqtt_broker: Broker) -> Broker:
    """The session's broker, started again if an earlier test stopped or killed it."""
    mqtt_broker.ensure_running()
    return mqtt_broker
