"""The daemon in-process with a scripted source, and as a real process with the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway import daemon as daemon_module
from gateway.daemon import Daemon
from gateway.model import Advert, parse_iso_utc
from gateway.store import EventStore
from tests.factories import ROLLING_ID, android_advert


def make_config(tmp_path: Path, **presence: float) -> config.Config:
    lines = [
        "[gateway]",
        'id = "gw-test"',
        'site = "lobby"',
        f'data_dir = "{tmp_path}"',
        "[store]",
        "commit_interval_s = 0.1",
        "[presence]",
        *(f"{k} = {v}" for k, v in presence.items()),
    ]
    return config.parse("\n".join(lines))


async def test_scripted_phone_gives_entry_then_exit_and_clean_stop(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway")
    cfg = make_config(tmp_path, exit_timeout_s=1.0)
    heard = asyncio.Event()

    async def source(emit: Callable[[Advert], None]) -> None:
        for _ in range(20):
            emit(android_advert(t=time.monotonic(), rssi=-58))
            await asyncio.sleep(0.01)
        heard.set()
        await asyncio.Event().wait()  # a scanner that stays up but hears nothing more

    daemon = Daemon(cfg, source)
    task = asyncio.create_task(daemon.run())
    await heard.wait()
    # The ticker ends the visit after exit_timeout_s of silence and commits a tick later.
    seen_before_stop: list[str] = []
    for _ in range(50):
        await asyncio.sleep(0.2)
        with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
            seen_before_stop = [e["type"] for e in store.events()]
        if len(seen_before_stop) == 2:
            break
    daemon.stop()
    assert await task == 0
    assert seen_before_stop == ["entry", "exit"]
    with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
        events = list(store.events())
    assert [e["rolling_id"] for e in events] == [ROLLING_ID, ROLLING_ID]
    assert events[1]["entry_id"] == events[0]["id"]
    assert {e["gateway"] for e in events} == {"gw-test"}
    # Each event's log line carries its id as a structured field (a journald field).
    logged = [r for r in caplog.records if getattr(r, "EVENT_ID", None)]
    assert [r.EVENT_ID for r in logged] == [e["id"] for e in events]
    assert {r.ROLLING_ID for r in logged} == {ROLLING_ID}


async def test_stop_closes_open_visits(tmp_path):
    cfg = make_config(tmp_path)

    async def source(emit: Callable[[Advert], None]) -> None:
        for _ in range(10):
            emit(android_advert(t=time.monotonic(), rssi=-58))
        await asyncio.Event().wait()

    daemon = Daemon(cfg, source)
    task = asyncio.create_task(daemon.run())
    await asyncio.sleep(0.3)
    daemon.stop()
    assert await task == 0
    with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
        assert [e["type"] for e in store.events()] == ["entry", "exit"]


async def test_a_source_that_crashes_stops_the_daemon_with_exit_code_1(tmp_path):
    async def source(emit: Callable[[Advert], None]) -> None:
        emit(android_advert(t=time.monotonic()))
        await asyncio.sleep(0)
        raise RuntimeError("adapter vanished")

    assert await Daemon(make_config(tmp_path), source).run() == 1


def test_run_simulate_as_a_process_stops_cleanly_on_sigterm(tmp_path):
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "gw-demo"\ndata_dir = "{tmp_path}"\n')
    with subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--simulate", "--seed", "1", "--config",
         str(conf)],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:  # fmt: skip
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the "storing events in" line: the store is open
        assert "storing events in" in first
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=20) == 0
    assert "Stopped:" in rest
    assert (tmp_path / "events.db").exists()


async def test_events_stamped_before_the_clock_syncs_are_restamped(tmp_path, monkeypatch):
    """A Pi boots three days behind; NTP steps the clock and says so while a visit is open."""
    monkeypatch.setattr(daemon_module, "CLOCK_CHECK_EVERY_S", 0.2)
    synced_flag = tmp_path / "synchronized"  # as systemd-timesyncd's /run/.../synchronized
    cfg = make_config(tmp_path, exit_timeout_s=1.0)
    cfg = dataclasses.replace(
        cfg, gateway=dataclasses.replace(cfg.gateway, clock_check=str(synced_flag))
    )
    behind_s = 3 * 86_400.0
    step = {"s": -behind_s}
    entered, synced = asyncio.Event(), asyncio.Event()

    async def source(emit: Callable[[Advert], None]) -> None:
        for n in range(40):
            emit(android_advert(t=time.monotonic(), rssi=-58))
            if n == 20:
                entered.set()
                await synced.wait()
            await asyncio.sleep(0.01)
        await asyncio.Event().wait()

    daemon = Daemon(cfg, source, wall_clock=lambda: time.time() + step["s"])
    task = asyncio.create_task(daemon.run())
    await entered.wait()
    stored: list[dict[str, Any]] = []
    for _ in range(50):  # the entry is committed with the wrong clock
        await asyncio.sleep(0.1)
        with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
            stored = list(store.events())
        if stored:
            break
    [entry] = stored
    assert entry["clock_synced"] is False
    assert parse_iso_utc(entry["ts"]) == pytest.approx(time.time() - behind_s, abs=5)

    step["s"] = 0.0  # NTP steps the clock ...
    synced_flag.touch()  # ... and the sync is known
    synced.set()
    events: list[dict[str, Any]] = []
    for _ in range(50):
        await asyncio.sleep(0.2)
        with EventStore.open(cfg.db_path, gateway="", site="", readonly=True) as store:
            events = list(store.events())
        if len(events) == 2 and events[0]["clock_synced"]:
            break
    daemon.stop()
    assert await task == 0
    [entry_after, exit_] = events
    assert entry_after["id"] == entry["id"]
    assert entry_after["clock_synced"] is True
    assert exit_["clock_synced"] is True
    moved = parse_iso_utc(entry_after["ts"]) - parse_iso_utc(entry["ts"])
    assert moved == pytest.approx(behind_s, abs=0.5)
    dwell = parse_iso_utc(exit_["ts"]) - parse_iso_utc(entry_after["ts"])
    assert dwell == pytest.approx(exit_["dwell_s"], abs=0.06)  # dwell_s has 0.1 s steps


async def test_a_check_in_lights_the_green_led_and_beeps(tmp_path, monkeypatch):
    """The daemon opens [indicator] through gpiozero's default factory (here its mock)."""
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    saved, Device.pin_factory = Device.pin_factory, None
    cfg = make_config(tmp_path)
    cfg = dataclasses.replace(
        cfg,
        indicator=config.IndicatorSection(
            green_pin="GPIO17", buzzer_pin="GPIO27", red_pin="GPIO22", checkin_s=30.0, beep_s=30.0
        ),
    )
    held = asyncio.Event()

    async def source(emit: Callable[[Advert], None]) -> None:
        for _ in range(10):  # a Bluezone phone held to the gateway
            emit(android_advert(t=time.monotonic(), rssi=-42))
            await asyncio.sleep(0.01)
        held.set()
        await asyncio.Event().wait()

    daemon = Daemon(cfg, source)
    task = asyncio.create_task(daemon.run())
    try:
        await held.wait()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if daemon.indicator is not None and daemon.indicator.green.is_lit:
                break
        indicator = daemon.indicator
        assert indicator is not None
        assert indicator.green.is_lit
        assert indicator.buzzer.is_active
        assert not indicator.red.is_lit  # a simulated source and no broker: nothing wrong
    finally:
        daemon.stop()
        assert await task == 0
        if Device.pin_factory is not None:
            Device.pin_factory.close()
        Device.pin_factory = saved
    assert daemon.indicator is not None
    assert daemon.indicator.green is None  # closed with the daemon: pins released
