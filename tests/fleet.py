"""Simulated gateways and collector processes for the tests of the central side.

`simulate_gateways` runs the gateway's own pipeline (simulator → decode → presence → store)
into one SQLite store per gateway; `publish` drains them through the gateway's real
`Publisher` (gateway/sync.py), the MQTT contract itself; `CollectorProcess` runs
``python -m central collect`` as a child process that a test can SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway import config
from gateway.config import MqttSection
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.simulate import Scenario, Simulation
from gateway.store import EventStore
from gateway.sync import Publisher

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SimGateway:
    """One simulated gateway's identity and store."""

    gateway: str
    site: str
    path: Path

    def events(self) -> list[dict[str, Any]]:
        """Every event in its store, in seq order."""
        with EventStore.open(self.path, gateway="", site="", readonly=True) as store:
            return list(store.events())


def simulate_gateways(
    directory: Path,
    count: int,
    *,
    sites: Sequence[str],
    people: int = 25,
    minutes: float = 10.0,
    prefix: str = "sim",
) -> list[SimGateway]:
    """Simulate ``count`` lobbies (seed = gateway number) into ``directory``; return them."""
    presence = config.load(None).presence
    gateways = []
    for n in range(count):
        gateway = SimGateway(f"{prefix}-{n:03d}", sites[n % len(sites)], directory / f"{n}.db")
        simulation = Simulation(Scenario(people=people, minutes=minutes, seed=n))
        with EventStore.open(
            gateway.path, gateway=gateway.gateway, site=gateway.site, commit_interval_s=3600
        ) as store:
            pipeline = Pipeline(
                PresenceTracker(presence), store, wall=float, clock_synced=lambda: True
            )
            pipeline.replay(simulation.adverts())
            pipeline.close()
        gateways.append(gateway)
    return gateways


async def publish(
    gateways: Sequence[SimGateway],
    settings: Callable[[SimGateway], MqttSection],
    timeout_s: float = 60.0,
) -> None:
    """Drain every gateway's outbox through its own `Publisher`, all at once."""

    async def drain(g: SimGateway) -> bool:
        with EventStore.open(g.path, gateway=g.gateway, site=g.site) as store:
            publisher = Publisher(
                settings(g), store, gateway=g.gateway, site=g.site, boot_time=time.time()
            )
            return await publisher.drain(timeout_s)

    results = await asyncio.gather(*(drain(g) for g in gateways))
    failed = [g.gateway for g, ok in zip(gateways, results, strict=True) if not ok]
    assert not failed, f"outboxes not drained within {timeout_s} s: {failed}"


def stored_ids(url: str) -> list[str]:
    """Every event id in the central database at ``url``."""
    from central.store import create_engine

    engine = create_engine(url, readonly=True)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT id FROM events")).scalars())
    finally:
        engine.dispose()


def wait_for_count(url: str, expected: int, timeout_s: float = 60.0) -> int:
    """Poll the database until it holds ``expected`` events; return the last count."""
    deadline = time.monotonic() + timeout_s
    count = -1
    while time.monotonic() < deadline:
        count = len(stored_ids(url))
        if count >= expected:
            return count
        time.sleep(0.1)
    return count


class CollectorProcess:
    """``python -m central collect …`` in a child process, its log in a file."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.log = log
        self.args = list(args)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "central", "collect", *self.args],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def text(self) -> str:
        """Its log so far."""
        return self.log.read_text(errors="replace")

    def wait_for_log(self, *needles: str, timeout_s: float = 30.0) -> None:
        """Block until every needle appears in the log (or fail with the log)."""
        deadline = time.monotonic() + timeout_s
        while not all(n in self.text() for n in needles):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"collector (exit {self.process.poll()}) never logged {needles}:\n{self.text()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: a crash; nothing is flushed or acknowledged."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the clean shutdown; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def stats(self, final: bool = True) -> str:
        """The counters line it logged on a clean stop (or, not ``final``, the latest one)."""
        marks = ("Stopped:",) if final else ("Stopped:", "Collected so far:")
        lines = [line for line in self.text().splitlines() if any(m in line for m in marks)]
        assert lines, f"no counters in the log:\n{self.text()}"
        return lines[-1]

    def counter(self, name: str, final: bool = True) -> int:
        """One counter (``received``, ``stored``, …) from `stats`."""
        line = self.stats(final)
        for part in line.split(": ", 2)[-1].split(", "):
            key, _, value = part.partition(" ")
            if key == name:
                return int(value)
        raise AssertionError(f"no counter {name!r} in {line!r}")

    def wait_for_counter(self, name: str, minimum: int, timeout_s: float = 30.0) -> None:
        """Block until a periodic counters line shows ``name`` >= ``minimum``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "Collected so far:" in self.text() and self.counter(name, final=False) >= minimum:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} never reached {minimum}:\n{self.text()}")
