"""deploy/bluezone-gateway.service: systemd accepts it, its sandbox scores, it runs our CLI.

systemd-analyze and systemd-sysusers work offline: no booted systemd is needed (CI runs as
root in a container whose PID 1 is not systemd). A missing tool fails with an install hint.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "bluezone-gateway.service"
SYSUSERS = ROOT / "deploy" / "sysusers.d" / "bluezone-gateway.conf"
UNIT_NAME = UNIT.name
INSTALLED_SCRIPT = "/opt/bluezone/bin/bluezone-gateway"
SCRIPT = Path(sys.executable).with_name("bluezone-gateway")
"""The console script of this venv: an executable that `verify` can check for real."""
MAX_EXPOSURE = 2.5
"""`systemd-analyze security` exposure (0.0 best, 10.0 worst) the unit must stay within."""
EXPOSURE_RE = re.compile(rf"Overall exposure level for {re.escape(UNIT_NAME)}: (\d+\.\d)")
SUBJECT_RE = re.compile(r"^(?:\S*/)?([\w@.\\-]+\.(?:service|target|socket|mount|slice|path))[:\s]")
"""The unit a diagnostic is about: `/lib/.../x.service:3: ...` or `x.service: ...`."""
ENV = {
    **os.environ,
    "SYSTEMD_COLORS": "0",
    "SYSTEMD_LOG_LEVEL": "info",  # warnings show; a caller's "debug" would add noise
    "LC_ALL": "C.UTF-8",
}


def systemd_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run one of systemd's offline tools; never raises on a non-zero exit."""
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} not found: apt-get install systemd (.ci/run installs it)")
    return subprocess.run(
        [exe, *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=ENV,
        timeout=120,
        check=False,
    )


def console_script() -> Path:
    """Return this venv's ``bluezone-gateway``, or fail saying how to get it."""
    if not os.access(SCRIPT, os.X_OK):
        pytest.fail(f"{SCRIPT} is missing: pip install -e '.[test]' installs the console script")
    return SCRIPT


def directives(text: str) -> dict[str, list[str]]:
    """Return ``Section.Key`` -> values, in order (no line continuations are used)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continuation line: {line}"
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        found.setdefault(f"{section}.{key}", []).append(value)
    return found


UNIT_TEXT = UNIT.read_text()
UNIT_DIRECTIVES = directives(UNIT_TEXT)


def one(key: str) -> str:
    """Return the single value of ``Section.Key`` in the unit."""
    values = UNIT_DIRECTIVES.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on this venv's console script (`verify` checks it exists).

    The file keeps the unit's name: `verify` refuses names without a unit suffix
    ("Failed to prepare filename ... Invalid argument").
    """
    script = str(console_script())
    # Quoted for spaces; a backslash, quote or % (a specifier) would need escaping.
    assert not set(script) & set('\\"%'), script
    old = f"ExecStart={INSTALLED_SCRIPT} "
    assert UNIT_TEXT.count(old) == 1, f"expected one line starting with {old!r}"
    copy = tmp_path / UNIT_NAME
    copy.write_text(UNIT_TEXT.replace(old, f'ExecStart="{script}" '))
    return copy


def verify(unit: Path) -> tuple[int, list[str]]:
    """Run `systemd-analyze verify`; return its exit code and its lines about our unit.

    Lines whose subject is another unit (on a host with systemd, the unit files it loads as
    dependencies may draw warnings) are printed, not returned. Lines with no unit as their
    subject are returned: they could be about ours.
    """
    # --man=no: a Documentation=man: line must not depend on the man pages installed here.
    result = systemd_tool("systemd-analyze", "verify", "--man=no", "--generators=no", unit)
    ours = []
    for line in result.stderr.splitlines():
        subject = SUBJECT_RE.match(line)
        if subject and subject.group(1) != UNIT_NAME:
            print("about another unit (not failed):", line)
        else:
            ours.append(line)
    return result.returncode, ours


def test_verify_is_clean(unit_copy: Path) -> None:
    # verify exits 0 on unknown keys and bad values (it only warns): stderr is the verdict.
    # Here (systemd 252, no booted systemd, no bluezone user or bluetooth group, no
    # bluetooth.service) it prints nothing at all.
    returncode, ours = verify(unit_copy)
    assert ours == [], "\n".join(ours)
    assert returncode == 0


def test_verify_catches_a_bad_key(unit_copy: Path) -> None:
    # The check above is only worth something if a broken unit makes verify speak.
    unit_copy.write_text(unit_copy.read_text().replace("WatchdogSec=60s", "WatchdogSecs=60s"))
    _, ours = verify(unit_copy)
    assert any("Unknown key 'WatchdogSecs'" in line for line in ours), ours


def test_security_exposure_is_low(unit_copy: Path) -> None:
    # `security UNIT` needs a running manager; --offline=true reads the file. systemd 252's
    # --threshold is an integer on a 0-100 scale (the displayed score times 10): "2.5" is
    # refused with "Failed to parse threshold".
    threshold = f"--threshold={round(MAX_EXPOSURE * 10)}"
    result = systemd_tool(
        "systemd-analyze", "security", "--offline=true", threshold, "--no-pager", unit_copy
    )
    score = EXPOSURE_RE.search(result.stdout)
    assert score, result.stdout + result.stderr
    print(f"exposure {score.group(1)} (threshold {MAX_EXPOSURE})")
    assert result.returncode == 0, result.stdout + result.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE


def test_exec_start_runs_the_cli_with_a_config_in_the_configuration_directory() -> None:
    argv = shlex.split(one("Service.ExecStart"))
    assert argv[:2] == [INSTALLED_SCRIPT, "run"], argv
    options = [arg for arg in argv[2:] if arg.startswith("-")]
    assert options == ["--config"], argv
    config = Path(argv[argv.index("--config") + 1])
    assert config.parent == Path("/etc") / one("Service.ConfigurationDirectory")
    result = subprocess.run(
        [console_script(), "run", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for option in options:
        assert re.search(rf"^\s+{option}\b", result.stdout, re.MULTILINE), result.stdout
    assert one("Service.ExecReload") == "/bin/kill -HUP $MAINPID"


def test_sysusers_creates_the_units_user(tmp_path: Path) -> None:
    lines = [
        shlex.split(line)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    user, group = one("Service.User"), one("Service.SupplementaryGroups")
    home = f"/var/lib/{one('Service.StateDirectory')}"
    # Type Name ID GECOS Home Shell; then "m user group"
    assert lines == [
        ["u", user, "-", "Bluezone entrance gateway", home, "/usr/sbin/nologin"],
        ["m", user, group],
    ]
    assert one("Service.Group") == user  # `u` makes a group of the user's name
    # --root on an empty directory and --dry-run: parsed for real, nothing written anywhere.
    result = systemd_tool("systemd-sysusers", "--dry-run", f"--root={tmp_path}", SYSUSERS)
    assert result.returncode == 0, result.stderr
    said = result.stderr.splitlines()
    assert f"Creating group '{group}'" in result.stderr, said
    assert re.search(rf"Creating user '{user}' .*with UID", result.stderr), said
    unexpected = [line for line in said if not line.startswith(("Creating ", "Would write "))]
    assert unexpected == [], said
    assert list(tmp_path.iterdir()) == []


def test_the_gpio_drop_in_verifies_and_keeps_the_exposure_low(unit_copy: Path) -> None:
    # A drop-in's sections merge into the unit's; the same text appended to the unit file is
    # what systemd reads, and verify and security both speak about every key of it.
    drop_in = (UNIT.parent / "systemd" / "indicator.conf").read_text()
    unit_copy.write_text(unit_copy.read_text() + "\n" + drop_in)
    returncode, ours = verify(unit_copy)
    assert ours == [], "\n".join(ours)
    assert returncode == 0
    result = systemd_tool("systemd-analyze", "security", "--offline=true", "--no-pager", unit_copy)
    score = EXPOSURE_RE.search(result.stdout)
    assert score, result.stdout + result.stderr
    print(f"exposure with the GPIO drop-in {score.group(1)}")
    assert float(score.group(1)) <= MAX_EXPOSURE
