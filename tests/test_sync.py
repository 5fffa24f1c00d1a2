"""MQTT sync against a real mosquitto (tests/broker.py): nothing lost, duplicates counted.

Every payload the gateway publishes is validated against the shipped JSON Schemas.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from gateway import config, schemas
from gateway import sync as sync_module
from gateway.config import MqttSection
from gateway.daemon import Daemon, Emit
from gateway.model import App, EventType, Platform, PresenceEvent, iso_utc
from gateway.store import EventStore
from gateway.sync import Publisher
from tests.broker import Broker, Subscriber, publish_once, unique_site
from tests.factories import ROLLING_ID, android_advert

pytest_plugins = ("tests.broker",)

VALIDATORS = {name: Draft202012Validator(schemas.load(name))
              for name in ("event", "status", "health", "cmd-result")}  # fmt: skip
T0 = 1_596_870_000.0


def visits(first: int, count: int) -> list[PresenceEvent]:
    """``count`` entry/exit pairs (2 events each) for distinct rolling IDs."""
    out = []
    for n in range(first, first + count):
        rid = f"{n:024x}"
        at = T0 + n
        common: dict[str, Any] = {"key": rid, "visit": n, "app": App.BLUEZONE,
                                  "platform": Platform.ANDROID, "rolling_id": rid,
                                  "rssi_max": -60, "first_seen": at - 5}  # fmt: skip
        out.append(PresenceEvent(EventType.ENTRY, at=at, sightings=3, last_seen=at, **common))
        out.append(
            PresenceEvent(EventType.EXIT, at=at + 20, sightings=90, last_seen=at + 20, **common)
        )
    return out


def fill(store: EventStore, pairs: int, first: int = 0) -> None:
    store.append(visits(first, pairs), wall=float, clock_synced=True)
    store.flush()


def settings(broker: Broker, tmp_path: Path, user: str = "gw-001", **kw: Any) -> MqttSection:
    values: dict[str, Any] = {
        "host": "localhost", "port": broker.tls_port, "tls": True, "ca_file": broker.ca_file,
        "username": user, "password_file": broker.password_file_for(user, tmp_path),
        "health_interval_s": 3600.0,
    }  # fmt: skip
    values.update(kw)
    return MqttSection(**values)


def check(kind: str, payload: bytes) -> dict[str, Any]:
    """Validate a published payload against its schema; return it decoded."""
    decoded: dict[str, Any] = orjson.loads(payload)
    errors = sorted(VALIDATORS[kind].iter_errors(decoded), key=str)
    assert not errors, f"{kind} payload breaks its schema: {errors[0].message}"
    return decoded


def events_of(sub: Subscriber) -> list[dict[str, Any]]:
    return [check("event", m.payload) for m in sub.messages("bluezone/v1/+/+/events")]


async def drain(
    store: EventStore, cfg: MqttSection, site: str, gateway: str = "gw-001", timeout_s: float = 60
) -> tuple[bool, Publisher]:
    publisher = Publisher(cfg, store, gateway=gateway, site=site, boot_time=time.time())
    drained = await publisher.drain(timeout_s)
    return drained, publisher


def test_every_event_arrives_once_in_seq_order_and_valid(broker, tmp_path):
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/#"])
    with EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site) as store:
        fill(store, 300)
        ok, publisher = asyncio.run(drain(store, settings(broker, tmp_path), site))
        assert ok
        assert store.pending(limit=1) == []
        assert store.state("last_puback_ts") is not None
    got = sub.wait_for(lambda ms: sum(m.topic.endswith("/events") for m in ms) >= 600)
    events = events_of(sub)
    assert [e["seq"] for e in events] == list(range(1, 601))
    assert len({e["id"] for e in events}) == 600
    assert publisher.acked == 600
    statuses = [check("status", m.payload) for m in got if m.topic.endswith("/status")]
    assert [s["state"] for s in statuses][:1] == ["online"]
    sub.wait_for(lambda ms: any(b'"offline"' in m.payload for m in ms))
    assert check("status", sub.messages("+/+/+/+/status")[-1].payload)["reason"] == "shutdown"
    sub.close(keep_session=False)


def test_broker_outage_while_events_are_produced_loses_nothing(broker, tmp_path):
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/gw-001/events"])
    store = EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site)
    cfg = settings(broker, tmp_path, inflight=20)
    total_pairs = 2600  # 5,200 events, about half of them produced while the broker is down

    async def scenario() -> Publisher:
        publisher = Publisher(cfg, store, gateway="gw-001", site=site, boot_time=time.time())
        runner = asyncio.create_task(publisher.run())
        for batch in range(26):
            fill(store, 100, first=batch * 100)
            if batch == 8:
                broker.stop()  # the central broker goes away mid-stream
            if batch == 20:
                broker.start()
            await asyncio.sleep(0.05)
        async with asyncio.timeout(120):
            while store.pending(limit=1) or not publisher.connected:  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.1)
        await publisher.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return publisher

    try:
        publisher = asyncio.run(scenario())
    finally:
        store.close()
    sub.wait_for(
        lambda ms: len({orjson.loads(m.payload)["id"] for m in ms}) >= 2 * total_pairs, timeout=60
    )
    events = events_of(sub)
    unique = {e["id"] for e in events}
    assert len(unique) == 2 * total_pairs
    assert {e["seq"] for e in events} == set(range(1, 2 * total_pairs + 1))
    print(
        f"\nbroker outage: {2 * total_pairs} events, {len(events) - len(unique)} raw "
        f"duplicates at the subscriber, {publisher.reconnects} reconnects"
    )
    sub.close(keep_session=False)


def test_sigkill_mid_sync_then_restart_loses_nothing(broker, tmp_path):
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/gw-001/events"])
    db = tmp_path / "e.db"
    with EventStore.open(db, gateway="gw-001", site=site) as store:
        fill(store, 10_000)  # 20,000 events
    cfg = settings(broker, tmp_path)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'[gateway]\nid = "gw-001"\nsite = "{site}"\n[store]\npath = "{db}"\n'
        f'[mqtt]\nhost = "localhost"\nport = {cfg.port}\nca_file = "{cfg.ca_file}"\n'
        f'username = "gw-001"\npassword_file = "{cfg.password_file}"\n'
    )
    command = [sys.executable, "-m", "gateway", "sync", "--config", str(conf), "--until-empty"]
    with subprocess.Popen(command, stderr=subprocess.PIPE) as proc:
        sub.wait_for(lambda ms: len(ms) >= 3000, timeout=60)  # well under way
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with EventStore.open(db, gateway="", site="", readonly=True) as store:
        left_after_kill = store.stats()["outbox"]
    assert 0 < left_after_kill < 20_000
    again = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr.decode()
    sub.wait_for(lambda ms: len({orjson.loads(m.payload)["id"] for m in ms}) >= 20_000, timeout=60)
    events = events_of(sub)
    assert {e["seq"] for e in events} == set(range(1, 20_001))
    print(
        f"\nkill -9 mid-sync: {left_after_kill} events were still in the outbox, "
        f"{len(events) - 20_000} raw duplicates at the subscriber"
    )
    sub.close(keep_session=False)


def test_a_gateway_cannot_publish_as_another_and_keeps_its_events(broker, tmp_path, caplog):
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/#"])
    with EventStore.open(tmp_path / "e.db", gateway="gw-002", site=site) as store:
        fill(store, 5)
        # gw-001's credentials, gw-002's topics: the ACL refuses, MQTT 5 says so in the PUBACK.
        ok, publisher = asyncio.run(
            drain(
                store,
                settings(broker, tmp_path, user="gw-001"),
                site,
                gateway="gw-002",
                timeout_s=4,
            )
        )
        assert not ok
        assert publisher.acked == 0
        assert len(store.pending(limit=100)) == 10  # nothing lost, nothing marked synced
    # mosquitto answers PUBACK 135 "Not authorized" and closes the connection at once; the
    # close often overtakes the PUBACK (a reset drops unread data), so the gateway also says
    # what an unacknowledged drop most likely means.
    assert f"check that gw-001 may publish to bluezone/v1/{site}/gw-002/#" in caplog.text
    assert sub.messages(f"bluezone/v1/{site}/gw-002/events") == []
    sub.close(keep_session=False)


def test_wrong_credentials_fail_cleanly_and_are_retried(broker, tmp_path, caplog):
    site = unique_site()
    bad = tmp_path / "wrong-password"
    bad.write_text("not-the-password")
    with EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site) as store:
        fill(store, 1)
        cfg = settings(broker, tmp_path, password_file=bad)
        ok, _ = asyncio.run(drain(store, cfg, site, timeout_s=4))
        assert not ok
        assert "unreachable: the broker refused the connection: Not authorized" in (
            store.state("broker") or ""
        )
    refusals = [r for r in caplog.records if "refused the connection" in r.getMessage()]
    assert len(refusals) >= 2  # retried, with back-off, not a crash
    assert "check [mqtt] username and password_file" in refusals[0].getMessage()
    assert "not-the-password" not in caplog.text  # the password is never logged


def test_tls_verifies_the_broker_certificate(broker, tmp_path, caplog):
    site = unique_site()
    with EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site) as store:
        fill(store, 1)
        cfg = settings(broker, tmp_path, ca_file=None)  # the system CAs do not know ours
        ok, _ = asyncio.run(drain(store, cfg, site, timeout_s=3))
        assert not ok
    assert "TLS with the broker failed" in caplog.text


def test_client_certificate_instead_of_a_password(broker, tmp_path):
    site = unique_site()
    cert, key = broker.client_cert("gw-001")
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/gw-001/events"])
    with EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site) as store:
        fill(store, 3)
        cfg = MqttSection(
            host="localhost",
            port=broker.cert_port,
            ca_file=broker.ca_file,
            cert_file=cert,
            key_file=key,
            health_interval_s=3600.0,
        )
        ok, _ = asyncio.run(drain(store, cfg, site))
        assert ok
    assert len(sub.wait_for(lambda ms: len(ms) >= 6)) == 6
    sub.close(keep_session=False)


def test_cmd_replay_heals_a_gap_and_bad_commands_get_an_error(broker, tmp_path):
    site = unique_site()
    base = f"bluezone/v1/{site}/gw-001"
    sub = Subscriber(broker, "central", [f"{base}/events", f"{base}/cmd-result"])
    store = EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site)
    fill(store, 10)  # seqs 1..20

    async def scenario() -> None:
        publisher = Publisher(
            settings(broker, tmp_path), store, gateway="gw-001", site=site, boot_time=time.time()
        )
        runner = asyncio.create_task(publisher.run())
        await asyncio.to_thread(sub.wait_for, lambda ms: len(ms) >= 20)
        # The central saw 1..20 but lost 5..7 (say, a consumer crashed): it asks again.
        requests = [
            ("replay", {"from_seq": 5, "to_seq": 7, "request_id": "gap-1"}),
            ("replay", {"from_seq": 9, "to_seq": 3}),
            ("replay", b"not json"),
            ("reboot", {}),
            ("replay", {"from_seq": 1, "to_seq": 2, "extra": True}),
        ]
        for name, body in requests:
            payload = body if isinstance(body, bytes) else orjson.dumps(body)
            await asyncio.to_thread(publish_once, broker, "central", f"{base}/cmd/{name}", payload)
        await asyncio.to_thread(
            sub.wait_for,
            lambda ms: sum(m.topic.endswith("cmd-result") for m in ms) >= len(requests),
            30,
        )
        await publisher.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        store.close()
    results = [check("cmd-result", m.payload) for m in sub.messages(f"{base}/cmd-result")]
    by_id = {r["request_id"]: r for r in results}
    assert by_id["gap-1"]["ok"]
    assert (by_id["gap-1"]["published"], by_id["gap-1"]["missing"]) == (3, 0)
    refused = [r for r in results if not r["ok"]]
    assert len(refused) == 4
    errors = " | ".join(r["error"] for r in refused)
    assert "to_seq" in errors
    assert "not JSON" in errors
    assert "unknown command 'reboot'" in errors
    assert "unknown key 'extra'" in errors
    seqs = [e["seq"] for e in events_of(sub)]
    assert sorted(seqs) == sorted([*range(1, 21), 5, 6, 7])  # the gap, healed
    sub.close(keep_session=False)


def test_daemon_syncs_reports_health_and_leaves_a_retained_offline(broker, tmp_path):
    site = unique_site()
    base = f"bluezone/v1/{site}/gw-001"
    sub = Subscriber(broker, "central", [f"{base}/#"])
    cfg = settings(broker, tmp_path)
    conf = tmp_path / "gw.toml"
    conf.write_text(
        f'[gateway]\nid = "gw-001"\nsite = "{site}"\ndata_dir = "{tmp_path}"\n'
        f'[mqtt]\nhost = "localhost"\nport = {cfg.port}\nca_file = "{cfg.ca_file}"\n'
        f'username = "gw-001"\npassword_file = "{cfg.password_file}"\nhealth_interval_s = 1\n'
    )
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "run",
            "--simulate",
            "--seed",
            "3",
            "--config",
            str(conf),
        ],
        stderr=subprocess.DEVNULL,
    ) as proc:
        sub.wait_for(lambda ms: sum(m.topic.endswith("/health") for m in ms) >= 2, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    sub.wait_for(lambda ms: any(b'"offline"' in m.payload for m in ms), timeout=10)
    for message in sub.messages(f"{base}/health"):
        health = check("health", message.payload)
        assert health["scanners"][0]["state"] == "simulated"
    last = check("status", sub.messages(f"{base}/status")[-1].payload)
    assert (last["state"], last["reason"]) == ("offline", "shutdown")
    sub.close(keep_session=False)
    # A newcomer subscribing now gets the retained offline, not the will.
    late = Subscriber(broker, "central", [f"{base}/status"])
    retained = late.wait_for(lambda ms: len(ms) >= 1, timeout=10)[0]
    assert retained.retain
    assert check("status", retained.payload)["reason"] == "shutdown"
    late.close(keep_session=False)


def test_events_restamped_mid_sync_reach_the_broker_corrected_under_the_same_id(broker, tmp_path):
    """The clock syncs while events stamped before are acknowledged, in flight and waiting."""
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/gw-001/events"])
    store = EventStore.open(tmp_path / "e.db", gateway="gw-001", site=site, boot_id="boot")
    late_s = 3 * 86_400.0  # the clock is three days behind until NTP answers
    pairs = 3000

    async def scenario() -> tuple[int, int]:
        publisher = Publisher(
            settings(broker, tmp_path), store, gateway="gw-001", site=site, boot_time=time.time()
        )
        runner = asyncio.create_task(publisher.run())
        store.append(visits(0, pairs), wall=lambda t: t - late_s, clock_synced=False)
        store.flush()
        async with asyncio.timeout(60):
            while publisher.acked < 2500:  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.001)
        acked_at_correction = publisher.acked
        publisher.restamped(store.correct_clock(0.0))  # what the daemon does on sync
        async with asyncio.timeout(60):
            while store.pending(limit=1) or publisher._inflight:  # noqa: ASYNC110 - polled
                await asyncio.sleep(0.05)
        await publisher.close()
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        return acked_at_correction, publisher.published

    try:
        acked_at_correction, published = asyncio.run(scenario())
    finally:
        store.close()
    assert 0 < acked_at_correction < 2 * pairs  # the correction came mid-stream
    # Every copy sent was PUBACKed (nothing was left in flight), so each reaches the subscriber.
    sub.wait_for(lambda ms: len(ms) >= published, timeout=60)
    latest: dict[str, dict[str, Any]] = {}
    for event in events_of(sub):
        latest[event["id"]] = event  # the copy received last is the one that counts
    assert len(latest) == 2 * pairs
    assert all(e["clock_synced"] for e in latest.values())
    expected = [iso_utc(T0 + n + d) for n in range(pairs) for d in (0, 20)]
    assert [e["ts"] for e in sorted(latest.values(), key=lambda e: e["seq"])] == expected
    sub.close(keep_session=False)


async def test_a_commit_sends_its_events_without_waiting_for_the_publisher_to_look(
    broker, tmp_path, monkeypatch
):
    # The publisher looks at the outbox on its own only every POLL_S when idle; made an hour
    # here, an entry still reaches central: the store's commit wakes it.
    monkeypatch.setattr(sync_module, "POLL_S", 3600.0)
    site = unique_site()
    sub = Subscriber(broker, "central", [f"bluezone/v1/{site}/gw-001/events"])
    mqtt = settings(broker, tmp_path)
    cfg = config.parse(
        f'[gateway]\nid = "gw-001"\nsite = "{site}"\ndata_dir = "{tmp_path}"\n'
        f'[mqtt]\nhost = "localhost"\nport = {mqtt.port}\nca_file = "{mqtt.ca_file}"\n'
        f'username = "gw-001"\npassword_file = "{mqtt.password_file}"\n'
        "health_interval_s = 3600\n[web]\nenabled = false\n"
    )
    daemon: Daemon | None = None

    async def source(emit: Emit) -> None:
        while daemon is None or daemon.publisher is None or not daemon.publisher.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the connection's own messages acknowledged: idle
        for _ in range(20):
            emit(android_advert(t=time.monotonic(), rssi=-55))
            await asyncio.sleep(0.05)
        await asyncio.Event().wait()

    daemon = Daemon(cfg, source)
    task = asyncio.create_task(daemon.run())
    try:
        got = await asyncio.to_thread(
            sub.wait_for, lambda ms: any(b'"entry"' in m.payload for m in ms), 30
        )
    finally:
        daemon.stop()
        assert await task == 0
        sub.close(keep_session=False)
    assert check("event", got[0].payload)["rolling_id"] == ROLLING_ID
