"""The collector against real brokers and a real PostgreSQL: nothing lost, nothing twice.

mosquitto (tests/broker.py) with MQTT 5 shared subscriptions, and NATS (tests/natsbroker.py),
the second broker, which clusters without a licence but has no shared subscriptions on its
MQTT listener: there the collectors share a JetStream durable consumer instead.
"""

from __future__ import annotations

import asyncio
import gc
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from central.collector import Collector, Settings
from central.schema import gaps, quarantine
from central.store import CentralStore, create_engine, migrate
from gateway.config import MqttSection
from gateway.store import EventStore
from gateway.sync import Publisher
from tests.broker import FLEET_USER, Broker, publish_many, unique_site
from tests.fleet import (
    ROOT,
    CollectorProcess,
    SimGateway,
    publish,
    simulate_gateways,
    stored_ids,
    wait_for_count,
)
from tests.natsbroker import NatsServer
from tests.postgres import PostgresCluster
from tests.test_sync import fill

pytest_plugins = ("tests.broker", "tests.postgres", "tests.natsbroker")


def fleet_settings(broker: Broker, tmp_path: Path) -> MqttSection:
    return MqttSection(
        host="localhost",
        port=broker.tls_port,
        tls=True,
        ca_file=broker.ca_file,
        username=FLEET_USER,
        password_file=broker.password_file_for(FLEET_USER, tmp_path),
        health_interval_s=3600.0,
    )


def collector_args(
    broker: Broker, tmp_path: Path, db: str, group: str, client_id: str
) -> list[str]:
    return [
        "--broker", f"mqtts://localhost:{broker.tls_port}", "--ca-file", str(broker.ca_file),
        "--username", "central",
        "--password-file", str(broker.password_file_for("central", tmp_path)),
        "--db", db, "--group", group, "--client-id", client_id,
        # The gateways are gone once drained: this test is about the shared subscription.
        "--gap-grace-s", "3600", "--stats-interval-s", "0.3",
    ]  # fmt: skip


@pytest.mark.slow
def test_fifty_gateways_two_collectors_one_killed_mid_run(
    broker: Broker, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """50 gateways' simulated lobbies through their Publishers; two collectors share the
    subscription; one is SIGKILLed while the second half publishes and restarted after: every
    event is stored exactly once, and the restarted one got the share queued for it."""
    sites = [unique_site(f"office{n}") for n in range(5)]
    fleet = simulate_gateways(tmp_path / "gw", 50, sites=sites, people=20, minutes=8)
    expected = {e["id"] for g in fleet for e in g.events()}
    assert len(expected) > 1000
    db = postgres_cluster.create_database()
    group = f"ingest-{secrets.token_hex(3)}"
    ids = [f"c1-{group}", f"c2-{group}"]
    args = [collector_args(broker, tmp_path, db, group, i) for i in ids]
    first = CollectorProcess(args[0], tmp_path / "c1.log")
    second = CollectorProcess(args[1], tmp_path / "c2.log")
    for c in (first, second):
        c.wait_for_log("Subscribed to")

    settings = fleet_settings(broker, tmp_path)
    asyncio.run(publish(fleet[:25], lambda _g: settings))
    half = {e["id"] for g in fleet[:25] for e in g.events()}
    assert wait_for_count(db, len(half)) == len(half)
    for c in (first, second):  # round robin: both took a share of the first half
        c.wait_for_counter("stored", 1)

    publishing = threading.Thread(
        target=lambda: asyncio.run(publish(fleet[25:], lambda _g: settings))
    )
    publishing.start()
    second.kill()  # mid-run: the second half is on its way, some of it to this collector
    publishing.join(timeout=120)
    assert not publishing.is_alive()

    restarted = CollectorProcess(args[1], tmp_path / "c2-restarted.log")
    assert wait_for_count(db, len(expected)) == len(expected)
    assert first.terminate() == 0
    assert restarted.terminate() == 0

    stored = stored_ids(db)
    assert len(stored) == len(set(stored)) == len(expected)
    assert set(stored) == expected
    # The broker kept routing the dead collector's share into its session; the restart got it.
    assert "session resumed" in restarted.text()
    assert restarted.counter("stored") > 0
    assert first.counter("stored") > 0
    assert first.counter("quarantined") == restarted.counter("quarantined") == 0


@pytest.mark.slow
def test_nats_jetstream_collectors_share_the_load_and_survive_a_kill(
    nats_server: NatsServer, postgres_cluster: PostgresCluster, tmp_path: Path
) -> None:
    """NATS: gateways publish over MQTT 3.1.1; two collectors pull from one JetStream durable
    consumer; one is SIGKILLed mid-run and NOT restarted: its unacknowledged share goes to the
    other after ack_wait, and every event is stored exactly once."""
    prefix = f"bluezone/t{secrets.token_hex(3)}"
    # NATS 2.9's MQTT listener refuses '.' in topics (it is NATS's level separator): plain ids.
    fleet = simulate_gateways(
        tmp_path / "gw", 20, sites=["hanoi", "haiphong"], people=20, minutes=8
    )
    expected = {e["id"] for g in fleet for e in g.events()}
    db = postgres_cluster.create_database()
    group = f"ingest{secrets.token_hex(3)}"
    common = [
        "--broker", nats_server.mqtt_url, "--protocol", "3.1.1", "--topic-prefix", prefix,
        "--intake", "jetstream", "--nats", nats_server.url, "--nats-stream", group.upper(),
        "--ack-wait-s", "2", "--db", db, "--group", group, "--gap-grace-s", "3600",
        "--stats-interval-s", "0.3",
    ]  # fmt: skip
    first = CollectorProcess([*common, "--client-id", f"n1-{group}"], tmp_path / "n1.log")
    first.wait_for_log("Subscribed to", "Pulling")
    second = CollectorProcess([*common, "--client-id", f"n2-{group}"], tmp_path / "n2.log")
    second.wait_for_log("Subscribed to", "Pulling")

    settings = MqttSection(
        host="127.0.0.1", port=nats_server.mqtt_port, tls=False, protocol="3.1.1",
        topic_prefix=prefix, health_interval_s=3600.0,
    )  # fmt: skip
    asyncio.run(publish(fleet[:10], lambda _g: settings))
    half = {e["id"] for g in fleet[:10] for e in g.events()}
    assert wait_for_count(db, len(half)) == len(half)
    for c in (first, second):  # both pulled from the one durable consumer
        c.wait_for_counter("stored", 1)

    publishing = threading.Thread(
        target=lambda: asyncio.run(publish(fleet[10:], lambda _g: settings))
    )
    publishing.start()
    second.kill()
    publishing.join(timeout=120)
    assert not publishing.is_alive()

    assert wait_for_count(db, len(expected)) == len(expected)
    assert first.terminate() == 0
    stored = stored_ids(db)
    assert len(stored) == len(set(stored)) == len(expected)
    assert set(stored) == expected
    assert first.counter("stored") > 0


# --- in-process collectors ---------------------------------------------------------------------


class Running:
    """A `Collector` on a thread of this process, for tests that look at its counters."""

    def __init__(self, store: CentralStore, settings: Settings) -> None:
        self.collector = Collector(store, settings)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.collector.run, args=(self.stop,), daemon=True)
        self.thread.start()
        assert self.collector.connected.wait(10), "the collector did not subscribe"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def central_settings(broker: Broker, tmp_path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "broker": f"mqtts://localhost:{broker.tls_port}", "ca_file": broker.ca_file,
        "username": "central", "password_file": broker.password_file_for("central", tmp_path),
        "group": f"g{secrets.token_hex(3)}", "client_id": f"central-{secrets.token_hex(3)}",
    }  # fmt: skip
    values.update(kw)
    return Settings(**values)


def sqlite_store(tmp_path: Path) -> CentralStore:
    engine = create_engine(str(tmp_path / "central.db"))
    migrate(engine)
    return CentralStore(engine)


def wait_until(predicate: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class GatewayThread:
    """A gateway's Publisher running (as in the daemon) on its own event loop and thread."""

    def __init__(self, path: Path, gateway: str, site: str, settings: MqttSection) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = EventStore.open(path, gateway=gateway, site=site)
        self.publisher = Publisher(
            settings, self.store, gateway=gateway, site=site, boot_time=time.time()
        )
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.publisher.run())
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        # paho's client calls back into the loop when it is finalised: let that happen while
        # the loop is still open, on its own thread.
        del self.publisher
        gc.collect()
        self.loop.close()

    def close(self) -> None:
        async def stop() -> None:
            await self.publisher.close()  # the retained offline status, a clean DISCONNECT
            if self.task is not None:
                self.task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(timeout=10)
        self.thread.join(timeout=10)
        self.store.close()


def test_a_withheld_range_is_replayed_and_the_gap_closes(broker: Broker, tmp_path: Path) -> None:
    """Seqs 31-36 never reach the broker; the collector sees the hole, waits out the grace,
    sends cmd/replay to that gateway (which is running), gets the events and closes the gap."""
    site = unique_site()
    path = tmp_path / "gw.db"
    with EventStore.open(path, gateway="gw-001", site=site) as store:
        fill(store, 40)  # 80 events
        store.mark_synced(range(31, 37))  # withheld: as if lost after the broker acknowledged
    settings = MqttSection(
        host="localhost", port=broker.tls_port, tls=True, ca_file=broker.ca_file,
        username="gw-001", password_file=broker.password_file_for("gw-001", tmp_path),
        health_interval_s=3600.0,
    )  # fmt: skip
    central = sqlite_store(tmp_path)
    running = Running(
        central,
        central_settings(broker, tmp_path, gap_check_s=0.2, gap_grace_s=1.0, gap_retry_s=30.0),
    )
    gateway = GatewayThread(path, "gw-001", site, settings)
    try:
        assert wait_until(lambda: running.collector.stats()["stored"] == 80), (
            running.collector.stats()
        )
        assert wait_until(lambda: running.collector.stats()["gaps_closed"] >= 1)
        assert wait_until(lambda: running.collector.stats()["results"] >= 1)
    finally:
        gateway.close()
        running.close()
    stats = running.collector.stats()
    assert stats["replays_requested"] == 1  # one gap, asked for once
    with central.engine.connect() as conn:
        seqs = sorted(
            conn.execute(sa.text("SELECT seq FROM events WHERE gateway = 'gw-001'")).scalars()
        )
        assert seqs == list(range(1, 81))
        assert list(conn.execute(sa.select(gaps))) == []
        row = conn.execute(
            sa.text("SELECT max_seq, contiguous_seq FROM gateways WHERE gateway = 'gw-001'")
        ).one()
    assert tuple(row) == (80, 80)


def handled(stats: dict[str, Any]) -> int:
    return int(stats["stored"] + stats["duplicates"] + stats["quarantined"])


def test_invalid_payloads_are_quarantined_and_the_collector_carries_on(
    broker: Broker, tmp_path: Path
) -> None:
    site = unique_site()
    central = sqlite_store(tmp_path)
    running = Running(central, central_settings(broker, tmp_path))
    good_path = tmp_path / "gw.db"
    with EventStore.open(good_path, gateway="gw-002", site=site) as store:
        fill(store, 1)
        good, exit_ = list(store.events())
    wrong_gateway = {**good, "id": "0173ccde-bc1f-7269-b2a7-4de452e6b439", "gateway": "gw-009"}
    base = f"bluezone/v1/{site}/gw-002"
    messages = [
        (f"{base}/events", b"not json"),
        (f"{base}/events", orjson.dumps({**good, "seq": 0})),
        (f"{base}/events", orjson.dumps(wrong_gateway)),
        (f"{base}/events", orjson.dumps({**good, "seq": 2**63})),
        (f"{base}/events", orjson.dumps(good)),
        (f"{base}/events", orjson.dumps(good)),  # a redelivery
        (f"{base}/events", orjson.dumps(exit_)),
    ]
    try:
        assert all(not rc.is_failure for rc in publish_many(broker, "gw-002", messages))
        # Retained statuses of other tests' gateways arrive too: count the events' fates.
        assert wait_until(lambda: handled(running.collector.stats()) == len(messages))
        assert running.collector.connected.is_set()
    finally:
        running.close()
    stats = running.collector.stats()
    assert (stats["stored"], stats["duplicates"], stats["quarantined"]) == (2, 1, 4)
    with central.engine.connect() as conn:
        reasons = sorted(conn.execute(sa.select(quarantine.c.reason)).scalars())
    assert len(reasons) == 4
    assert reasons[0].startswith("events schema: seq: 0 is less than the minimum of 1")
    assert "beyond a 64-bit integer" in reasons[1]
    assert reasons[2] == "gateway 'gw-009' in the payload, 'gw-002' in the topic"
    assert reasons[3].startswith("not JSON")


def doc_example(name: str) -> dict[str, Any]:
    """The first ``<!-- schema: name -->`` example in docs/mqtt.md (kept valid by test_schemas)."""
    text = (ROOT / "docs" / "mqtt.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- schema: {name} -->\n```json\n(.*?)\n```", text, re.DOTALL)
    assert match is not None, f"no {name} example in docs/mqtt.md"
    example: dict[str, Any] = orjson.loads(match.group(1))
    return example


def test_status_and_health_reach_the_gateways_table(broker: Broker, tmp_path: Path) -> None:
    """The retained online status, a health report, and the offline status of a clean stop."""
    site = unique_site()
    path = tmp_path / "gw.db"
    with EventStore.open(path, gateway="gw-001", site=site) as store:
        fill(store, 2)
    settings = MqttSection(
        host="localhost", port=broker.tls_port, tls=True, ca_file=broker.ca_file,
        username="gw-001", password_file=broker.password_file_for("gw-001", tmp_path),
        health_interval_s=3600.0,
    )  # fmt: skip
    central = sqlite_store(tmp_path)
    running = Running(central, central_settings(broker, tmp_path))

    def row() -> dict[str, Any]:
        rows = [r for r in central.gateway_rows() if r["gateway"] == "gw-001"]
        return rows[0] if rows else {}

    try:
        gateway = GatewayThread(path, "gw-001", site, settings)
        assert wait_until(lambda: row().get("state") == "online"), row()
        health = orjson.dumps({**doc_example("health"), "site": site})
        topic = f"bluezone/v1/{site}/gw-001/health"
        assert not publish_many(broker, "gw-001", [(topic, health)])[0].is_failure
        assert wait_until(lambda: row().get("outbox_depth") == 1280), row()
        gateway.close()
        assert wait_until(lambda: row().get("state") == "offline"), row()
    finally:
        running.close()
    final = row()
    assert final["state_reason"] == "shutdown"
    assert (final["outbox_first_seq"], final["outbox_last_seq"]) == (1, 1409)
    assert final["site"] == site
    assert final["topic_base"] == f"bluezone/v1/{site}/gw-001"
    assert final["max_seq"] == 4


def test_sim_gateway_helper_builds_distinct_events(tmp_path: Path) -> None:
    fleet: list[SimGateway] = simulate_gateways(tmp_path, 2, sites=["a"], people=5, minutes=3)
    ids = [e["id"] for g in fleet for e in g.events()]
    assert len(ids) == len(set(ids)) > 0
