"""``doctor`` against the fake BlueZ and the test broker: FAIL with a hint where it matters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from tests.broker import Broker
from tests.fakebluez import BUS_ADDRESS_ENV, FakeBlueZ

pytest_plugins = ("tests.fakebluez", "tests.broker")


def doctor(bluez: FakeBlueZ, conf: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    env = {**os.environ, BUS_ADDRESS_ENV: bluez.address}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--config", str(conf), "--json"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    checks = {c["check"]: c for c in orjson.loads(done.stdout)}
    return done.returncode, checks


def config(tmp_path: Path, broker: Broker, password_file: Path) -> Path:
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'[gateway]\nid = "gw-001"\nsite = "lobby"\ndata_dir = "{tmp_path}"\n'
        f'[mqtt]\nhost = "localhost"\nport = {broker.tls_port}\nca_file = "{broker.ca_file}"\n'
        f'username = "gw-001"\npassword_file = "{password_file}"\n'
    )
    return conf


def test_a_missing_adapter_and_a_bad_password_fail_with_hints(bluez, broker, tmp_path):
    bad = tmp_path / "password"
    bad.write_text("wrong")
    code, checks = doctor(bluez, config(tmp_path, broker, bad))
    assert code == 1
    adapter, mqtt = checks["adapter hci0"], checks["broker"]
    assert adapter["level"] == "FAIL"
    assert "no Bluetooth adapter hci0" in adapter["detail"]
    assert "bluetoothctl list" in adapter["hint"]
    assert mqtt["level"] == "FAIL"
    assert "Not authorized" in mqtt["detail"]
    assert "password_file" in mqtt["hint"]
    assert checks["data dir"]["level"] == "OK"


def test_a_healthy_gateway_has_no_failure(bluez, broker, tmp_path):
    bluez.add_adapter("hci0", "00:1A:7D:DA:71:13")
    good = broker.password_file_for("gw-001", tmp_path)
    code, checks = doctor(bluez, config(tmp_path, broker, good))
    assert checks["adapter hci0"]["level"] == "OK"
    assert "00:1A:7D:DA:71:13, powered" in checks["adapter hci0"]["detail"]
    assert checks["broker"]["level"] == "OK"
    assert code == 0, checks  # the clock and systemd may only warn here


def test_a_broken_config_is_the_one_failure_reported(tmp_path):
    conf = tmp_path / "gw.toml"
    conf.write_text("[presence]\nenter_rssi = 'loud'\n")
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout  # the human table
    as_json = subprocess.run(
        [sys.executable, "-m", "gateway", "doctor", "--config", str(conf), "--json"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    [check] = orjson.loads(as_json.stdout)
    assert check["level"] == "FAIL"
    assert check["detail"] == f"{conf}:2: presence.enter_rssi must be a number, got 'loud'"
