"""Central collector throughput: events/s into PostgreSQL, the store alone and end to end.

``python bench/central.py [--gateways G] [--events N] [--runs K] [--write docs/benchmarks.md]``
from the repository root. A throw-away PostgreSQL cluster with its default durability (fsync
on, synchronous commit) and the tests' mosquitto (TLS off: loopback); events are real gateway
events (`EventStore`), spread over G gateways.

- **ingest**: `Collector`'s validation (JSON Schema) and `CentralStore.ingest` of batches of 20
  (mosquitto's default in-flight window to one client, so what a collector can batch) and 500;
- **end to end**: the events published QoS 1 by simulated gateways (pipelined paho), one or two
  ``bluezone-central collect`` processes sharing the subscription; the time from the first
  publish until PostgreSQL holds every event.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from central.collector import Delivery, classify
from central.store import CentralStore, create_engine, migrate
from gateway.bench import machine, write_section
from gateway.store import EventStore
from tests.broker import FLEET_USER, Broker
from tests.fleet import CollectorProcess, stored_ids
from tests.postgres import PostgresCluster
from tests.test_sync import fill

PREFIX = "bluezone/v1"


def _messages(work: Path, gateways: int, events: int) -> list[tuple[str, bytes]]:
    """Real gateway events, ``events // gateways`` per gateway, as (topic, payload)."""
    out: list[tuple[str, bytes]] = []
    for g in range(gateways):
        gateway, site = f"bench-{g:04d}", f"site-{g % 50:02d}"
        with EventStore.open(work / f"{g}.db", gateway=gateway, site=site) as store:
            fill(store, max(1, events // gateways // 2))
            out += [(f"{PREFIX}/{site}/{gateway}/events", orjson.dumps(e)) for e in store.events()]
    return out


def _ingest_rate(url: str, messages: list[tuple[str, bytes]], batch: int) -> float:
    engine = create_engine(url)
    migrate(engine)
    store = CentralStore(engine)
    started = time.perf_counter()
    for i in range(0, len(messages), batch):
        deliveries = [Delivery(t, p) for t, p in messages[i : i + batch]]
        store.ingest(classify(PREFIX, deliveries), time.time())
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(messages) / elapsed


def _publish(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    """Publish QoS 1 as the simulated fleet, pipelined (20 in flight), until all are acked."""
    done = threading.Event()
    room = threading.Semaphore(1000)
    acked = 0

    def on_publish(*_args: Any) -> None:
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(messages):
            done.set()

    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"fleet-{secrets.token_hex(3)}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.username_pw_set(FLEET_USER, broker.passwords[FLEET_USER])
    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    connected.wait(10)
    for topic, payload in messages:
        room.acquire()
        client.publish(topic, payload, qos=1)
    done.wait(600)
    client.disconnect()
    client.loop_stop()


def _end_to_end(
    broker: Broker, url: str, work: Path, messages: list[tuple[str, bytes]], collectors: int
) -> float:
    group = f"bench{secrets.token_hex(3)}"
    password = broker.password_file_for("central", work)
    running = []
    for n in range(collectors):
        args = [
            "--broker", f"mqtt://{broker.host}:{broker.port}", "--username", "central",
            "--password-file", str(password), "--db", url, "--group", group,
            "--client-id", f"{group}-{n}", "--gap-grace-s", "3600",
        ]  # fmt: skip
        running.append(CollectorProcess(args, work / f"{group}-{n}.log"))
    for c in running:
        c.wait_for_log("Subscribed to")
    started = time.perf_counter()
    _publish(broker, messages)
    while len(stored_ids(url)) < len(messages):
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    for c in running:
        c.terminate()
        # A persistent session would keep queueing this group's share: end it.
        c.process.wait()
    return len(messages) / elapsed


def measure(gateways: int, events: int, runs: int) -> dict[str, Any]:
    """Run every measurement ``runs`` times; return medians (events/s)."""
    results: dict[str, list[float]] = {
        "ingest_20": [], "ingest_500": [], "sqlite_500": [], "e2e_1": [], "e2e_2": [],
        "publish_only": [],
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bluezone-central-bench-") as tmp:
        work = Path(tmp)
        messages = _messages(work, gateways, events)
        cluster = PostgresCluster()
        cluster.start(durable=True)
        broker = Broker(work / "broker", cert_listener=False)
        broker.start()
        try:
            for run in range(runs):
                for batch in (20, 500):
                    url = cluster.create_database()
                    results[f"ingest_{batch}"].append(_ingest_rate(url, messages, batch))
                results["sqlite_500"].append(
                    _ingest_rate(str(work / f"bench{run}.db"), messages, 500)
                )
                for n in (1, 2):
                    url = cluster.create_database()
                    results[f"e2e_{n}"].append(_end_to_end(broker, url, work, messages, n))
                started = time.perf_counter()
                _publish(broker, messages)
                results["publish_only"].append(len(messages) / (time.perf_counter() - started))
        finally:
            broker.close()
            cluster.stop()
    return {
        "events": len(messages),
        "gateways": gateways,
        **{k: round(statistics.median(v)) for k, v in results.items()},
    }


def render(result: dict[str, Any], runs: int) -> str:
    """Return the central section of docs/benchmarks.md."""
    return f"""## Central collector into PostgreSQL

`python bench/central.py` ({result["events"]:,} real gateway events from {result["gateways"]}
gateways, median of {runs} runs; PostgreSQL 15 with its default durability, fsync on, on the
same machine as mosquitto, the publishers and the collectors). {machine()}.

| what | events/s |
| --- | --- |
| validate + store, batches of 20 (mosquitto's default in-flight window) | {result["ingest_20"]:,} |
| validate + store, batches of 500 | {result["ingest_500"]:,} |
| validate + store into SQLite (WAL), batches of 500 | {result["sqlite_500"]:,} |
| end to end, one `collect` process (publish QoS 1 → mosquitto → PostgreSQL) | {result["e2e_1"]:,} |
| end to end, two `collect` processes sharing the subscription | {result["e2e_2"]:,} |
| the publisher alone (no collector), for scale | {result["publish_only"]:,} |

Two cores for everything: end to end, the publisher, mosquitto, the collectors and
PostgreSQL share them, and the run is CPU-bound (the publisher alone reaches the last row's
rate). So the end-to-end rows are a floor, and the two-collector row shows that sharing works,
not how it scales on machines of their own. A commit costs an fsync: batches of 20 are what a
collector would get from mosquitto's default in-flight window (`max_inflight_messages 20`);
the collector connects with an MQTT 5 Receive Maximum of 1,000, which mosquitto 2.0 honours
(200 of 200 unacknowledged messages delivered at once, against 20 without), so its batches
grow to 500 under load.
"""


def main() -> int:
    """Measure and print (or write into docs/benchmarks.md)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="update this Markdown file's section")
    args = parser.parse_args()
    result = measure(args.gateways, args.events, args.runs)
    print(orjson.dumps(result).decode())  # noqa: T201
    if args.write:
        write_section(args.write, "central", render(result, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
