"""The daemon under a test-owned NOTIFY_SOCKET: READY, STATUS, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.systemd import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    try:
        yield sock, path
    finally:
        sock.close()


def collect(sock: socket.socket, until: str, timeout: float = 30.0) -> list[str]:
    """Read datagrams until one contains ``until``; return every line read."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            continue
        lines += data.split("\n")
        if until in data:
            return lines
    pytest.fail(f"no {until!r} within {timeout} s; got {lines}")


def test_notifier_is_a_no_op_without_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_s is None
    assert notifier.send("READY=1") is False


def test_watchdog_interval_is_half_of_watchdogsec_and_only_for_us(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier().watchdog_s == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier().watchdog_s is None


def test_daemon_notifies_in_order_and_reloads_on_sighup(notify_socket, tmp_path):
    sock, path = notify_socket
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[gateway]\nid = "gw-sd"\ndata_dir = "{tmp_path}"\n[presence]\nenter_rssi = -75\n'
    )
    log = tmp_path / "gateway.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000",
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("WATCHDOG_PID", None)
    with log.open("wb") as out, subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--simulate", "--seed", "2", "--config",
         str(conf)], stdout=out, stderr=out, env=env,
    ) as proc:  # fmt: skip
        started = collect(sock, "READY=1")
        assert any(line.startswith("STATUS=simulating, 0 present") for line in started)
        pings = collect(sock, "WATCHDOG=1")  # sent while the pipeline makes progress
        conf.write_text(conf.read_text().replace("enter_rssi = -75", "enter_rssi = -70"))
        proc.send_signal(signal.SIGHUP)
        reloaded = collect(sock, "RELOADING=1")
        after = collect(sock, "READY=1")
        proc.send_signal(signal.SIGTERM)
        stopping = collect(sock, "STOPPING=1")
        assert proc.wait(timeout=30) == 0
    text = log.read_text()
    assert "SIGHUP: presence thresholds now PresencePolicy(enter_rssi=-70.0" in text
    assert "WATCHDOG=1" in pings
    assert "RELOADING=1" in reloaded
    assert "READY=1" in after
    assert "STATUS=stopping" in stopping


def test_sighup_with_a_broken_config_keeps_the_running_one(notify_socket, tmp_path):
    sock, path = notify_socket
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "gw-sd"\ndata_dir = "{tmp_path}"\n')
    log = tmp_path / "gateway.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out, subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--simulate", "--config", str(conf)],
        stdout=out, stderr=out, env=env,
    ) as proc:  # fmt: skip
        collect(sock, "READY=1")
        conf.write_text(conf.read_text() + "[presence]\nenter_rssi = 'loud'\n")
        proc.send_signal(signal.SIGHUP)
        collect(sock, "READY=1")  # still serving
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "SIGHUP: keeping the running configuration" in log.read_text()
    assert "presence.enter_rssi must be a number" in log.read_text()
