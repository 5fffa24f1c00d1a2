"""deploy/ansible: syntax check, then a real run against a throwaway root, twice.

Needs ansible-core (the test extra) in this venv: without it the tests fail with an install
hint, never skip. The run uses the local connection, bluezone_root=<tmp> and no service
management, so it touches nothing outside tmp_path (ANSIBLE_HOME and the temp dirs point
there too). It installs the package for real: a wheel of this checkout, pip-installed with
its dependencies into <tmp>/opt/bluezone, the venv the unit runs.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ANSIBLE = DEPLOY / "ansible"
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
GATEWAY = "gw-test-01"
CERT_GATEWAY = "gw-test-02"
"""Provisioned with a client certificate instead of a password (no package install)."""
SITE = "test-site"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "ansible-home"
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\nretry_files_enabled = False\nfact_caching = memory\n")
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_GATHERING": "explicit",
    }


def playbook(env: dict[str, str], inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not PLAYBOOK.exists():
        pytest.fail(f"{PLAYBOOK} missing: pip install -e '.[test]' (ansible-core)", pytrace=False)
    proc = subprocess.run(
        [str(PLAYBOOK), "-i", str(inventory), str(ANSIBLE / "site.yml"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def recap(stdout: str, host: str = GATEWAY) -> dict[str, int]:
    match = re.search(rf"^{re.escape(host)}\s*:\s*(.*)$", stdout, re.MULTILINE)
    assert match, stdout
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match[1])}


def test_syntax_check(env: dict[str, str]) -> None:
    proc = playbook(env, ANSIBLE / "inventory.example.ini", "--syntax-check")
    assert "site.yml" in proc.stdout


def test_run_against_throwaway_root_is_idempotent(tmp_path: Path, env: dict[str, str]) -> None:
    fleet = tmp_path / "fleet"
    ca = tmp_path / "site-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "provision", "--site", SITE, "--gateway", GATEWAY),
            *("--broker", "mqtts://mqtt.example.test", "--ca", str(ca), "--out", str(fleet)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    client_ca, client_ca_key = tmp_path / "client-ca.crt", tmp_path / "client-ca.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(client_ca_key), "-out", str(client_ca), "-days", "3650"),
            *("-subj", "/CN=test site CA", "-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "provision", "--site", SITE),
            *("--gateway", CERT_GATEWAY, "--broker", "mqtts://mqtt.example.test"),
            *("--client-ca", str(client_ca), "--client-ca-key", str(client_ca_key)),
            *("--out", str(fleet)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = wheels.glob("bluezone_gateway-*.whl")
    root, cert_root = tmp_path / "root", tmp_path / "cert-root"
    root.mkdir()
    cert_root.mkdir()
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        f"[gateways]\n{GATEWAY} ansible_connection=local ansible_become=false"
        f" gateway_id={GATEWAY} site={SITE} bluezone_root={root}/\n"
        f"{CERT_GATEWAY} ansible_connection=local ansible_become=false"
        f" gateway_id={CERT_GATEWAY} site={SITE} bluezone_root={cert_root}/"
        " bluezone_install_package=false\n"
    )
    # key=value strings, as typed on a command line: the role must apply `| bool`.
    extra = [
        *("-e", f"bluezone_provisioned_dir={fleet}"),
        *("-e", f"bluezone_package={wheel}"),
        *("-e", f"bluezone_python={sys.executable}"),
        *("-e", "bluezone_manage_services=false"),
    ]
    if os.geteuid() != 0:  # unprivileged: cannot chown to root
        import grp
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        extra += ["-e", f"bluezone_file_owner={user} bluezone_file_group={group}"]

    run = playbook(env, inventory, *extra).stdout
    first, first_cert = recap(run), recap(run, CERT_GATEWAY)
    assert first["failed"] == first_cert["failed"] == 0
    assert first["changed"] >= 5, first
    assert first_cert["changed"] >= 4, first_cert  # config dir, config, certificate, key

    etc = root / "etc"
    expected = {
        etc / "bluezone" / "gateway.toml": ((fleet / GATEWAY / "gateway.toml").read_bytes(), 0o644),
        etc / "bluezone" / "mqtt-password": (
            (fleet / GATEWAY / "mqtt-password").read_bytes(),
            0o640,
        ),
        etc / "bluezone" / "ca.crt": (ca.read_bytes(), 0o644),
        etc / "systemd" / "system" / "bluezone-gateway.service": (
            (DEPLOY / "bluezone-gateway.service").read_bytes(),
            0o644,
        ),
        etc / "sysusers.d" / "bluezone-gateway.conf": (
            (DEPLOY / "sysusers.d" / "bluezone-gateway.conf").read_bytes(),
            0o644,
        ),
    }
    for path, (content, mode) in expected.items():
        assert path.read_bytes() == content, path
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode, (path, oct(st.st_mode))
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), path
    assert f'id = "{GATEWAY}"' in (etc / "bluezone" / "gateway.toml").read_text()
    assert stat.S_IMODE((etc / "bluezone").stat().st_mode) == 0o755
    # The unit's ExecStart, in the venv the role made: the installed package runs.
    installed = root / "opt" / "bluezone" / "bin" / "bluezone-gateway"
    version = subprocess.run(
        [installed, "--version"], check=True, capture_output=True, text=True, timeout=60
    )
    assert version.stdout.strip().endswith(__version__), version.stdout

    # The certificate gateway: the certificate and its key instead of a password, no venv.
    cert_etc = cert_root / "etc" / "bluezone"
    for name, mode in (("client.crt", 0o644), ("client.key", 0o640), ("gateway.toml", 0o644)):
        path = cert_etc / name
        assert path.read_bytes() == (fleet / CERT_GATEWAY / name).read_bytes(), path
        assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
    assert not (cert_etc / "mqtt-password").exists()
    # Without the pip install (the .deb's case), the package's own unit and sysusers entry
    # stay in charge: no copies in /etc to override them.
    assert not (cert_root / "opt").exists()
    assert not (cert_root / "etc" / "systemd" / "system" / "bluezone-gateway.service").exists()
    assert not (cert_root / "etc" / "sysusers.d").exists()

    run = playbook(env, inventory, *extra).stdout
    for host in (GATEWAY, CERT_GATEWAY):
        second = recap(run, host)
        assert second["changed"] == 0, (host, second)
        assert second["failed"] == 0
