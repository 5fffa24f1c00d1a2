"""Side by side with Theengs Gateway: CPU and MQTT messages per advert on the same stream.

``python bench/theengs.py [--adverts N] [--warmup W] [--runs K] [--theengs-python PATH]
[--write docs/benchmarks.md]`` from the repository root.

One simulated entrance stream (``simulate``, 90 minutes by default, about N adverts: Bluezone
Android and iPhones, GAEN, Apple and other devices) goes, in separate processes per run, through:

- **Theengs Gateway** (PyPI ``theengsgateway``), driven through its own advert handler
  ``detection_callback`` by ``bench/_theengs_driver.py`` with the method of
  ../shared/theengs-anchor.md (defaults as its ``main()`` sets them up, discovery on, MQTT to
  the broker below; W records of warm-up, then CPU (``process_time``, all threads) until
  paho's queue is empty, less the driver's own overhead). Theengs runs with the Python of a
  venv of its own (``--theengs-python``, default ``$THEENGS_PYTHON`` or
  /tmp/theengs-venv/bin/python); this script installs nothing, and without it the section
  says "not run" and why;
- **this gateway**: the same records parsed beforehand (not timed), then decode → presence →
  SQLite (`Pipeline`, `EventStore` defaults) and `Publisher.drain` of the outbox to the same
  broker (QoS 1, until every PUBACK is in); CPU of the whole, every record timed (no warm-up).

The broker is the tests' mosquitto (plain TCP on loopback); Theengs publishes with the
``fleet`` account, given its ``home/#`` and ``homeassistant/#`` topics for this run. A
subscriber to both trees counts what reached the broker. Prints JSON; numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import capture as capture_format
from gateway.bench import (
    ADVERTS_PER_PERSON_HOUR,
    goal,
    load_average,
    load_note,
    machine,
    simulate_capture,
    verdict,
    write_section,
)
from gateway.config import MqttSection
from gateway.model import PresencePolicy
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.store import EventStore
from gateway.sync import Publisher
from tests.broker import FLEET_USER, Broker

DRIVER: Final = Path(__file__).resolve().parent / "_theengs_driver.py"
DEFAULT_PYTHON: Final = Path("/tmp/theengs-venv/bin/python")  # noqa: S108 - a path to look at
GATEWAY: Final = "gw-001"
THEENGS_ACL: Final = """
# bench/theengs.py: Theengs Gateway's own topic trees, for the fleet account.
user fleet
topic readwrite home/#
topic readwrite homeassistant/#
"""
PER_PERSON: Final = ADVERTS_PER_PERSON_HOUR
"""The stream is 90 minutes long: each person contributes what they do in an hour-long run."""
CPU_GOAL: Final = 10.0
MESSAGES_GOAL: Final = 100.0
STATUS_MESSAGES: Final = 2
"""The publisher's retained online and offline status messages, besides the events."""
VERSIONS: Final = (
    "import json; from importlib.metadata import version as v; "
    "import TheengsGateway, TheengsDecoder, bleak, paho.mqtt; "
    "print(json.dumps({p: v(p) for p in ('theengsgateway', 'theengsdecoder', 'bleak', "
    "'paho-mqtt')}))"
)


def theengs_versions(python: Path) -> tuple[dict[str, str] | None, str]:
    """Return Theengs' package versions in ``python``'s environment, or None and why not."""
    if not python.exists():
        return None, f"{python} does not exist"
    done = subprocess.run(  # noqa: S603 - the interpreter the user named, a fixed script
        [str(python), "-c", VERSIONS], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"theengsgateway is not importable with {python}: {last}"
    versions: dict[str, str] = json.loads(done.stdout)
    return versions, ""


class _Counter:
    """Counts the messages reaching the broker under some topic filters (its own thread)."""

    def __init__(self, broker: Broker, user: str, topics: list[str]) -> None:
        self.count = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{user}")
        client.username_pw_set(user, broker.passwords[user])
        client.on_connect = lambda c, *_a: c.subscribe([(t, 0) for t in topics])
        client.on_subscribe = lambda *_a: ready.set()
        client.on_message = self._on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        self.client = client
        if not ready.wait(10):
            msg = "the counting subscriber got no SUBACK"
            raise RuntimeError(msg)

    def _on_message(self, *_args: Any) -> None:
        with self._lock:
            self.count += 1

    def take(self, settle_s: float = 1.0) -> int:
        """Return the count once it has stopped growing for ``settle_s``, and reset it."""
        last = -1
        while True:
            with self._lock:
                now = self.count
            if now == last:
                break
            last = now
            time.sleep(settle_s)
        with self._lock:
            self.count = 0
        return now

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()


def ours(path: Path, host: str, port: int, password_file: Path, work: Path) -> dict[str, Any]:
    """Run this gateway over the capture and drain it to the broker; return the measurements."""
    with path.open("rb") as lines:
        adverts = [capture_format.parse_line(line) for line in lines]
    settings = MqttSection(
        host=host,
        port=port,
        tls=False,
        username=GATEWAY,
        password_file=password_file,
        health_interval_s=3600,
    )
    with EventStore.open(work / "ours.db", gateway=GATEWAY, site="bench") as store:
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy()), store, wall=float, clock_synced=lambda: True
        )
        cpu0, wall0 = time.process_time(), time.perf_counter()
        pipeline.replay(adverts)
        pipeline.close()
        pipeline_cpu_s = time.process_time() - cpu0
        publisher = Publisher(settings, store, gateway=GATEWAY, site="bench", boot_time=time.time())
        if not asyncio.run(publisher.drain(600)):
            msg = "the outbox did not drain"
            raise RuntimeError(msg)
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "adverts": len(adverts),
        "cpu_s": round(cpu_s, 3),
        "pipeline_cpu_s": round(pipeline_cpu_s, 3),
        "wall_s": round(wall_s, 3),
        "events": sum(pipeline.counters.events.values()),
        "published": publisher.published,
        "acked": publisher.acked,
        "messages": publisher.published + STATUS_MESSAGES,
    }


def _ours(path: Path, broker: Broker, work: Path) -> dict[str, Any]:
    password = broker.password_file_for(GATEWAY, work)
    cmd = [sys.executable, __file__, "--child", str(path), broker.host, str(broker.port)]
    cmd += [str(password), str(work)]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603 - this script
    result: dict[str, Any] = json.loads(out)
    return result


def _theengs(python: Path, path: Path, broker: Broker, work: Path, warmup: int) -> dict[str, Any]:
    password = broker.password_file_for(FLEET_USER, work)
    cmd = [str(python), str(DRIVER), "--capture", str(path), "--host", broker.host]
    cmd += ["--port", str(broker.port), "--user", FLEET_USER, "--password-file", str(password)]
    cmd += ["--warmup", str(warmup)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=work)  # noqa: S603
    if done.returncode != 0:
        msg = f"the Theengs driver failed (exit {done.returncode}): {done.stderr[-2000:]}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def measure(adverts: int, minutes: int, warmup: int, runs: int, python: Path) -> dict[str, Any]:
    """Run Theengs (if there) and this gateway ``runs`` times each, alternating."""
    versions, reason = theengs_versions(python)
    with tempfile.TemporaryDirectory(prefix="bluezone-theengs-bench-") as tmp:
        work = Path(tmp)
        path, people, _ = simulate_capture(
            adverts,
            work,
            minutes=minutes,
            seed=2,
            name="stream",
            per_person=ADVERTS_PER_PERSON_HOUR,
        )
        records = sum(1 for _ in path.open("rb"))
        broker = Broker(work / "broker", cert_listener=False)
        with broker.acl_file.open("a", encoding="utf-8") as acl:
            acl.write(THEENGS_ACL)
        broker.start()
        theirs_runs: list[dict[str, Any]] = []
        our_runs: list[dict[str, Any]] = []
        try:
            theirs_seen = _Counter(broker, FLEET_USER, ["home/#", "homeassistant/#"])
            ours_seen = _Counter(broker, "central", [f"bluezone/v1/bench/{GATEWAY}/events"])
            for i in range(runs):
                run_dir = work / f"run{i}"
                run_dir.mkdir()
                if versions is not None:
                    theirs_runs.append(_theengs(python, path, broker, run_dir, warmup))
                    theirs_runs[-1]["broker_received"] = theirs_seen.take()
                our_runs.append(_ours(path, broker, run_dir))
                our_runs[-1]["broker_received"] = ours_seen.take()
            theirs_seen.close()
            ours_seen.close()
        finally:
            broker.close()
    result: dict[str, Any] = {
        "records": records,
        "people": people,
        "minutes": minutes,
        "warmup": warmup,
        "runs": runs,
        "theengs_python": str(python),
        "ours": _summarise_ours(our_runs),
        "theengs": None,
        "not_run_reason": reason or None,
        "versions": versions,
    }
    if theirs_runs:
        result["theengs"] = _summarise_theirs(theirs_runs)
        result["cpu_ratio"] = round(
            result["theengs"]["cpu_us_per_advert"] / result["ours"]["cpu_us_per_advert"], 1
        )
        ours_rate = result["ours"]["messages_per_advert"]
        result["messages_ratio"] = (
            round(result["theengs"]["messages_per_advert"] / ours_rate) if ours_rate else None
        )
    return result


def _summarise_theirs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    net = [(r["cpu_s"] - r["overhead_cpu_s"]) / r["adverts"] * 1e6 for r in runs]
    return {
        "adverts": runs[0]["adverts"],
        "cpu_us_per_advert": round(statistics.median(net), 1),
        "all_cpu_us_per_advert": [round(x, 1) for x in net],
        "overhead_us_per_advert": round(
            statistics.median(r["overhead_cpu_s"] / r["adverts"] * 1e6 for r in runs), 1
        ),
        "adverts_per_s": round(statistics.median(r["adverts"] / r["wall_s"] for r in runs), 1),
        "messages": runs[0]["messages"],
        "messages_all": runs[0]["messages_all"],
        "messages_per_advert": round(runs[0]["messages"] / runs[0]["adverts"], 3),
        "broker_received": [r["broker_received"] for r in runs],
        "queue_empty": all(r["queue_empty"] for r in runs),
    }


def _summarise_ours(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per = [r["cpu_s"] / r["adverts"] * 1e6 for r in runs]
    return {
        "adverts": runs[0]["adverts"],
        "cpu_us_per_advert": round(statistics.median(per), 2),
        "all_cpu_us_per_advert": [round(x, 2) for x in per],
        "pipeline_us_per_advert": round(
            statistics.median(r["pipeline_cpu_s"] / r["adverts"] * 1e6 for r in runs), 2
        ),
        "events": runs[0]["events"],
        "messages": runs[0]["messages"],
        "messages_per_advert": round(runs[0]["messages"] / runs[0]["adverts"], 5),
        "broker_received": [r["broker_received"] for r in runs],
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return this section's goals and verdicts (not run without Theengs)."""
    cpu_goal = f"≥ {CPU_GOAL:.0f}× less CPU per advert than Theengs Gateway"
    msg_goal = f"≥ {MESSAGES_GOAL:.0f}× fewer MQTT messages per advert than Theengs Gateway"
    theirs = result["theengs"]
    if theirs is None:
        why = result["not_run_reason"] or "Theengs Gateway was not run"
        return [goal(cpu_goal, "not run", None, why), goal(msg_goal, "not run", None, why)]
    ours = result["ours"]
    ratio = result["messages_ratio"]
    return [
        goal(
            cpu_goal,
            f"{result['cpu_ratio']}× ({theirs['cpu_us_per_advert']:,} vs"
            f" {ours['cpu_us_per_advert']} µs)",
            result["cpu_ratio"] >= CPU_GOAL,
            "Theengs' decoder is faster than the anchor measured",
        ),
        goal(
            msg_goal,
            f"{ratio:,}× ({theirs['messages_per_advert']} vs {ours['messages_per_advert']})"
            if ratio
            else "no messages from this gateway",
            ratio is not None and ratio >= MESSAGES_GOAL,
            "this gateway published more than one message per 100 of Theengs'",
        ),
    ]


def render(result: dict[str, Any]) -> str:
    """Return the theengs section of docs/benchmarks.md."""
    ours = result["ours"]
    head = f"""## Side by side: Theengs Gateway and this gateway on the same adverts

`python bench/theengs.py --write docs/benchmarks.md`, {machine()}.

One simulated entrance stream
(`simulate --people {result["people"]} --minutes {result["minutes"]} --seed 2`:
{result["records"]:,} adverts of Bluezone Android and iPhones, GAEN, Apple and other devices),
the same records through both gateways, each run a fresh process, MQTT to the same local
mosquitto (plain TCP on loopback); {result["runs"]} runs, medians."""
    if result["theengs"] is None:
        return f"""{head}

**Theengs Gateway: not run.** {result["not_run_reason"]}. Install it in a venv of its own
(README, Development) and pass `--theengs-python`.

| this gateway | value |
| --- | --- |
| CPU µs per advert (pipeline + SQLite + publishing) | {ours["cpu_us_per_advert"]} |
| MQTT messages per advert | {ours["messages_per_advert"]} ({ours["messages"]:,} messages) |

{load_note(result["load_before"], result["load_after"])}
"""
    theirs, v = result["theengs"], result["versions"]
    g_cpu, g_msg = result["goals"]
    cpu_row = (
        f"| CPU µs | {theirs['cpu_us_per_advert']:,} | {ours['cpu_us_per_advert']} "
        f"| **{result['cpu_ratio']}×** |"
    )
    msg_row = (
        f"| MQTT messages | {theirs['messages_per_advert']} | {ours['messages_per_advert']} "
        f"| **{result['messages_ratio']:,}×** |"
    )
    return f"""{head}

| per advert | Theengs Gateway {v["theengsgateway"]} | this gateway | ratio |
| --- | --- | --- | --- |
{cpu_row}
{msg_row}

- {g_cpu["goal"]}: {verdict(g_cpu["met"])}{"" if g_cpu["met"] else " (" + g_cpu["why"] + ")"}.
- {g_msg["goal"]}: {verdict(g_msg["met"])}{"" if g_msg["met"] else " (" + g_msg["why"] + ")"}.

**Theengs Gateway** (theengsgateway {v["theengsgateway"]}, theengsdecoder {v["theengsdecoder"]},
bleak {v["bleak"]}, paho-mqtt {v["paho-mqtt"]}; its own venv), by the method of
`../shared/theengs-anchor.md`: its `main()` set-up with `-H 127.0.0.1 -P <port>` and the
broker's credentials, defaults otherwise (discovery on, publish_all on); each record built into
bleak's `BLEDevice` and `AdvertisementData` and handed to `detection_callback`; after
{result["warmup"]:,} records of warm-up, {theirs["adverts"]:,} timed with `process_time()` (all
threads) until paho's queue is empty, less the driver's own {theirs["overhead_us_per_advert"]} µs
per advert of building objects. All runs: {theirs["all_cpu_us_per_advert"]} µs per advert;
{theirs["adverts_per_s"]:,} adverts/s of wall time; {theirs["messages"]:,} messages (QoS 0) from
the timed records; of the {theirs["messages_all"]:,} published in a whole run (warm-up and
status included) the broker delivered {theirs["broker_received"]} to a subscriber of `home/#`
and `homeassistant/#`.

**This gateway**: the same records parsed beforehand (not timed), then decode → presence →
SQLite and the publisher draining the outbox to the broker (QoS 1, until every PUBACK is in),
every record timed, no warm-up: {ours["all_cpu_us_per_advert"]} µs per advert
({ours["pipeline_us_per_advert"]} of it before publishing); {ours["events"]:,} entry and exit
events, {ours["messages"]:,} MQTT messages with the online and offline status; the broker
delivered {ours["broker_received"]} events to a subscriber.

Why (as `../shared/theengs-anchor.md` found): most of Theengs' CPU is its C++ `decodeBLE`,
which parses its device definitions again on every call, and with publish_all it publishes
every advert it cannot decode (Bluezone's company 0x22B5 among them) raw, one message each;
this gateway recognises the tracing apps with a few dictionary look-ups and publishes one event
per entry and per exit. Not included on either side: BlueZ, D-Bus and bleak's own parsing, and
the broker's CPU. The stream is replayed as fast as possible, not over its real length.
{load_note(result["load_before"], result["load_after"])}
"""


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON (or, with ``--child``, run this gateway's side once)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adverts", type=int, default=70_000, help="about this many adverts")
    parser.add_argument("--minutes", type=int, default=90, help="length of the simulated stream")
    parser.add_argument("--warmup", type=int, default=1000, help="Theengs' untimed records")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--theengs-python",
        type=Path,
        default=Path(os.environ.get("THEENGS_PYTHON", DEFAULT_PYTHON)),
        help="Python of a venv with theengsgateway (default: $THEENGS_PYTHON or %(default)s)",
    )
    parser.add_argument("--write", type=Path, help="rewrite this file's theengs section")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        path, host, port, password, work = args.child
        out = ours(Path(path), host, int(port), Path(password), Path(work))
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    before = load_average()
    result = measure(args.adverts, args.minutes, args.warmup, args.runs, args.theengs_python)
    result.update(load_before=before, load_after=load_average())
    result["goals"] = goals(result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.write:
        write_section(args.write, "theengs", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
