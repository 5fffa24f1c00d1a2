"""Provisioned credentials against deploy/broker's own mosquitto config, started for real."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import config, provision
from gateway.store import EventStore
from gateway.sync import Publisher
from tests.broker import Broker
from tests.test_sync import fill

pytest_plugins = ("tests.broker",)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "broker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def fleet(tmp_path: Path, broker: Broker) -> Iterator[tuple[Broker, Path, int]]:
    """Provision two gateways, then run deploy/broker/mosquitto.conf with their lines."""
    out = tmp_path / "fleet"
    url = "mqtts://localhost:{port}"
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "provision", "--site", "hq", "--gateway", "gw-101",
         "--gateway", "gw-102", "--broker", url.format(port=port), "--ca", str(broker.ca_file),
         "--out", str(out)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    etc = tmp_path / "etc"
    etc.mkdir()
    central = provision.password_line("central", "central-secret")
    (etc / "passwd").write_text((out / "mosquitto-passwd").read_text() + central + "\n")
    shutil.copy(DEPLOY / "acl", etc / "acl")
    for name, source in (
        ("ca.crt", broker.ca_file),
        ("server.crt", broker.server_cert_file),
        ("server.key", broker.server_key_file),
    ):
        shutil.copy(source, etc / name)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = conf.replace("/etc/mosquitto/bluezone", str(etc))
    conf = conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    conf = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", conf, flags=re.MULTILINE)
    conf += f"log_dest file {tmp_path}/mosquitto.log\n"
    if os.geteuid() == 0:
        conf += "user root\n"  # mosquitto drops to user mosquitto, who cannot read tmp_path
    (tmp_path / "mosquitto.conf").write_text(conf)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with subprocess.Popen([mosquitto, "-c", str(tmp_path / "mosquitto.conf")]) as proc:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        try:
            yield broker, out, port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_provisioned_gateways_sync_and_are_fenced_in(fleet, tmp_path):
    _, out, port = fleet
    files = sorted(p.name for p in (out / "gw-101").iterdir())
    assert files == ["ca.crt", "gateway.toml", "mosquitto-passwd.line", "mqtt-password"]
    assert (out / "gw-101" / "mqtt-password").stat().st_mode & 0o777 == 0o600
    text = (out / "gw-101" / "gateway.toml").read_text()
    cfg = config.parse(text.replace("/etc/bluezone", str(out / "gw-101")))
    assert (cfg.gateway.id, cfg.gateway.site, cfg.mqtt.port, cfg.mqtt.tls) == (
        "gw-101", "hq", port, True)  # fmt: skip

    with EventStore.open(tmp_path / "e.db", gateway="gw-101", site="hq") as store:
        fill(store, 5)
        publisher = Publisher(cfg.mqtt, store, gateway="gw-101", site="hq", boot_time=time.time())
        assert asyncio.run(publisher.drain(20))
        assert publisher.acked == 10

    # gw-101's credentials on gw-102's topics: deploy/broker/acl refuses them.
    with EventStore.open(tmp_path / "f.db", gateway="gw-102", site="hq") as store:
        fill(store, 1)
        intruder = Publisher(cfg.mqtt, store, gateway="gw-102", site="hq", boot_time=time.time())
        assert not asyncio.run(intruder.drain(3))
        assert intruder.acked == 0
    # A wrong password is refused at CONNACK.
    wrong = tmp_path / "wrong"
    wrong.write_text("not-it")
    with EventStore.open(tmp_path / "g.db", gateway="gw-101", site="hq") as store:
        fill(store, 1)
        locked_out = Publisher(
            dataclasses.replace(cfg.mqtt, password_file=wrong),
            store,
            gateway="gw-101",
            site="hq",
            boot_time=time.time(),
        )
        assert not asyncio.run(locked_out.drain(3))
        assert "Not authorized" in (store.state("broker") or "")


def test_provision_refuses_to_overwrite_and_bad_ids(tmp_path):
    out = tmp_path / "fleet"
    broker = provision.Broker.parse("mqtts://mqtt.example.vn")
    assert (broker.port, broker.tls) == (8883, True)
    provision.provision("hq", "gw-1", broker, out)
    with pytest.raises(provision.ProvisionError, match="exists"):
        provision.provision("hq", "gw-1", broker, out)
    with pytest.raises(provision.ProvisionError, match="--gateway"):
        provision.provision("hq", "gw/1", broker, out)
    with pytest.raises(provision.ProvisionError, match="mqtts://"):
        provision.Broker.parse("http://mqtt.example.vn")
