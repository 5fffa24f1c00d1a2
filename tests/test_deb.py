"""deploy/debian: build the .deb for real once, then read and unpack it; never install it.

Needs dpkg-buildpackage, debhelper and dh-virtualenv (apt; .ci/run installs them): without
them the tests fail with the install line, never skip. deploy/debian/build.sh builds the full
package, the one a Pi gets: the [pi] extra's C extensions (dbus-python, PyGObject, pycairo,
systemd-python) are compiled in, and that they load from the unpacked venv is much of the
point. pip fetches the dependencies from the configured index like any pip install, and takes
the compiled wheels from its cache when `pip install -e '.[test]'` (which includes [pi]) built
them first, as .ci/run does: about 45 s then, about 110 s with no cache at all. The .deb is
only read with dpkg-deb and unpacked into a temporary directory: `dpkg -i` would change this
machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import __version__

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BUILD = DEPLOY / "debian" / "build.sh"
VENV = "opt/bluezone"
"""The venv inside the package: the unit's ExecStart= is /opt/bluezone/bin/bluezone-gateway."""
SYSTEM_PYTHON = Path("/usr/bin/python3")
"""What debian/rules builds the venv with, whatever python3 comes first on PATH here."""
TOOLS = ("dpkg-buildpackage", "dpkg-deb", "dh", "dh_virtualenv")
INSTALL_HINT = "apt-get install build-essential dpkg-dev debhelper dh-virtualenv (.ci/run does)"
UNIT_DIRS = ("./lib/systemd/system/", "./usr/lib/systemd/system/")
"""debhelper 13.11 (Bookworm) installs units in the first, Trixie's in the second."""
ALLOWED = (
    f"./{VENV}/",
    "./etc/bluezone/",
    *UNIT_DIRS,
    "./usr/lib/sysusers.d/",
    "./usr/share/doc/bluezone-gateway/",
)
"""Where the package may put files: anything else is a build step leaking something."""
MODULES = ("gateway", "bleak", "dbus_fast.message", "paho.mqtt.client", "aiohttp", "sqlalchemy")
PI_MODULES = (
    *("_dbus_bindings", "dbus.mainloop.glib"),  # dbus-python
    *("gi._gi", "gi._gi_cairo", "cairo._cairo"),  # PyGObject, pycairo
    *("systemd._daemon", "systemd._journal"),  # systemd-python
    *("bluezero.adapter", "gpiozero"),
)
"""The [pi] extra; the underscored modules are C extensions compiled at build time."""


@dataclass(frozen=True)
class Deb:
    path: Path
    root: Path
    """The data archive unpacked (dpkg-deb -x)."""
    control: Path
    """The control archive unpacked (dpkg-deb -e): control, conffiles, postinst, ..."""

    @property
    def venv(self) -> Path:
        return self.root / VENV

    @property
    def site(self) -> Path:
        [site] = self.venv.glob("lib/python3.*/site-packages")
        return site


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a command that must succeed; return its output."""
    proc = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Deb:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: {INSTALL_HINT}", pytrace=False)
    tmp = tmp_path_factory.mktemp("deb")
    out = tmp / "out"
    started = time.monotonic()
    proc = subprocess.run(
        [BUILD, out],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
        # gzip -1, not dpkg-deb's xz: the same files, compressed in 3 s instead of 25 s (a
        # third of the build). A Pi build keeps xz: a smaller .deb to copy to every gateway.
        env={
            **os.environ,
            "DPKG_DEB_COMPRESSOR_TYPE": "gzip",
            "DPKG_DEB_COMPRESSOR_LEVEL": "1",
        },
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-8000:]
    path = Path(proc.stdout.splitlines()[-1])
    print(f"built {path.name} in {time.monotonic() - started:.0f} s, {path.stat().st_size} bytes")
    assert [p.name for p in out.iterdir()] == [path.name]
    assert path.parent == out
    deb = Deb(path, tmp / "root", tmp / "control")
    run("dpkg-deb", "-x", path, deb.root)
    run("dpkg-deb", "-e", path, deb.control)
    return deb


def field(deb: Deb, name: str) -> str:
    return run("dpkg-deb", "--field", deb.path, name).stdout.strip()


def test_control_fields(deb: Deb) -> None:
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert field(deb, "Package") == "bluezone-gateway"
    assert field(deb, "Version") == __version__
    assert field(deb, "Architecture") == arch
    assert deb.path.name == f"bluezone-gateway_{__version__}_{arch}.deb"
    depends = [dep.strip() for dep in field(deb, "Depends").split(",")]
    # The Python minor the venv was built with, and nothing newer: lib/python3.X is baked in.
    major, minor = run(
        SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"
    ).stdout.split()
    assert depends[:2] == [
        f"python3 (>= {major}.{minor})",
        f"python3 (<< {major}.{int(minor) + 1})",
    ]
    assert deb.site == deb.venv / "lib" / f"python{major}.{minor}" / "site-packages"
    names = {re.split(r"[\s(]", dep)[0] for dep in depends}
    # dpkg-shlibdeps found the libraries the [pi] extensions link; the rest come from control.
    expected = {"libsystemd0", "libdbus-1-3", "libglib2.0-0", "gir1.2-glib-2.0", "systemd"}
    assert expected <= names, depends


def test_files_are_where_the_unit_and_the_playbook_expect_them(deb: Deb) -> None:
    listing = run("dpkg-deb", "--contents", deb.path).stdout.splitlines()
    # "-rwxr-xr-x root/root 166 2026-11-29 03:30 ./opt/..." (a symlink adds " -> target")
    entries = {line.split()[5].removesuffix("/"): line for line in listing}
    script = entries[f"./{VENV}/bin/bluezone-gateway"]
    assert script.startswith("-rwxr-xr-x root/root "), script
    assert all(" root/root " in line for line in listing), "files not owned by root"
    # Outside the allowed roots only the directories leading to them (./usr, ./usr/lib, ...).
    strays = [
        name
        for name in entries
        if not f"{name}/".startswith(ALLOWED) and not any(a.startswith(f"{name}/") for a in ALLOWED)
    ]
    assert strays == []

    [unit] = [
        f"{d}bluezone-gateway.service"
        for d in UNIT_DIRS
        if f"{d}bluezone-gateway.service" in entries
    ]
    copies = {
        unit: DEPLOY / "bluezone-gateway.service",
        "./usr/lib/sysusers.d/bluezone-gateway.conf": DEPLOY / "sysusers.d/bluezone-gateway.conf",
        "./etc/bluezone/gateway.toml": DEPLOY / "gateway.toml",
        "./usr/share/doc/bluezone-gateway/examples/indicator.conf": DEPLOY
        / "systemd/indicator.conf",
    }
    for name, source in copies.items():
        assert (deb.root / name).read_bytes() == source.read_bytes(), name
        assert entries[name].startswith("-rw-r--r-- "), entries[name]
    assert (deb.control / "conffiles").read_text().split() == ["/etc/bluezone/gateway.toml"]


def test_postinst_creates_the_user_then_enables_and_starts_the_unit(deb: Deb) -> None:
    postinst = (deb.control / "postinst").read_text()
    steps = [
        'systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} bluezone-gateway.conf',
        "deb-systemd-helper enable 'bluezone-gateway.service'",
        "_dh_action=start",  # on first install; restart on upgrade
        "deb-systemd-invoke $_dh_action 'bluezone-gateway.service'",
    ]
    found = [postinst.find(step) for step in steps]
    assert -1 < found[0] < found[1] < found[2] < found[3], (found, postinst)
    for script in ("postinst", "prerm", "postrm"):
        run("sh", "-n", deb.control / script)


def test_venv_is_built_for_opt_bluezone(deb: Deb) -> None:
    # Venvs are not relocatable: the paths inside name /opt/bluezone, never the build tree.
    shebang = (deb.venv / "bin" / "bluezone-gateway").read_text().splitlines()[0]
    assert shebang == "#!/opt/bluezone/bin/python"
    assert '\nVIRTUAL_ENV="/opt/bluezone"\n' in (deb.venv / "bin" / "activate").read_text()
    assert (deb.venv / "bin" / "python3").readlink() == SYSTEM_PYTHON
    lines = (deb.venv / "pyvenv.cfg").read_text().splitlines()
    config = dict(line.split(" = ", 1) for line in lines if line)
    assert config["home"] == str(SYSTEM_PYTHON.parent), config
    assert config["include-system-site-packages"] == "false", config
    grep = subprocess.run(
        ["grep", "-rlF", "debian/bluezone-gateway", deb.venv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert grep.returncode == 1, grep.stdout + grep.stderr  # 1: no file names the build tree
    # pip built the venv, then was removed: dpkg owns these files.
    assert not (deb.site / "pip").exists()
    assert not (deb.venv / "bin" / "pip").exists()


def test_bytecode_is_checked_by_hash(deb: Deb) -> None:
    # dpkg-deb sets every mtime to the changelog's date at the latest, so .pyc validated by
    # mtime would be stale, and the service (read-only /opt) would compile in memory at every
    # start. PEP 552 flags: bit 0 hash-based, bit 1 check the source.
    pycs = list((deb.site / "gateway" / "__pycache__").glob("*.pyc"))
    assert len(pycs) == len(list((deb.site / "gateway").glob("*.py"))), pycs
    for pyc in pycs:
        flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
        assert flags == 0b11, (pyc, flags)


def unpacked_python(deb: Deb, *args: str | Path) -> str:
    """Run the unpacked venv's python, /usr/bin/python3 through the venv's bin/python symlink.

    Python looks for pyvenv.cfg beside the path it was started as, so this runs with the
    unpacked venv's site-packages; -I keeps this test run's PYTHONPATH and user site out.
    """
    return run(deb.venv / "bin" / "python", "-I", *args).stdout


def test_unpacked_console_script_runs(deb: Deb) -> None:
    # The shebang names /opt/bluezone/bin/python, absent here: the unpacked venv's python runs
    # the same script file that the unit's ExecStart= runs.
    script = deb.venv / "bin" / "bluezone-gateway"
    assert unpacked_python(deb, script, "--version").strip() == f"bluezone-gateway {__version__}"
    assert "--config" in unpacked_python(deb, script, "run", "--help")


def test_unpacked_venv_has_the_pi_extra_compiled_in(deb: Deb) -> None:
    # Each module comes from the unpacked venv (not this test's .venv, not the system's
    # dist-packages), the C extensions loading against this system's libraries, and the GLib
    # typelib found where gir1.2-glib-2.0 puts it.
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    print(importlib.import_module(name).__file__)\n"
        "from gi.repository import GLib\n"
        "print(GLib.MAJOR_VERSION)\n"
    )
    names = (*MODULES, *PI_MODULES)
    *files, glib = unpacked_python(deb, "-c", code, *names).splitlines()
    assert len(files) == len(names)
    for name, file in zip(names, files, strict=True):
        assert Path(file).is_relative_to(deb.site), (name, file)
    assert glib == "2"
