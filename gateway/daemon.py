"""The composition root: an advert source, the pipeline and the store under one event loop.

The source only enqueues; one consumer feeds the pipeline; a ticker ends silent visits and
commits. Scanning never waits for storage, and a full queue drops (and counts) adverts rather
than growing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any, Final

from gateway import capture
from gateway.clock import clock_synced
from gateway.config import Config
from gateway.model import Advert, CheckIn, GatewayError, PresenceEvent
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.scan import GattReader
from gateway.simulate import Scenario, Simulation
from gateway.store import EventStore, StoreError

_LOGGER = logging.getLogger(__name__)

QUEUE_MAX: Final = 10_000
"""Adverts waiting for the consumer: seconds of a busy entrance (a few thousand a second)."""
TICK_S: Final = 1.0
STATUS_EVERY_S: Final = 30.0
CLOCK_CHECK_EVERY_S: Final = 10.0
PRUNE_EVERY_S: Final = 3600.0
SIMULATED_HOUR_PEOPLE: Final = 120
"""People per simulated hour in ``run --simulate``: two a minute keeps the demo lively."""

Emit = Callable[[Advert], None]
AdvertSource = Callable[[Emit], Coroutine[Any, Any, None]]
"""A coroutine that calls ``emit`` for every advert heard until it is cancelled (or ends)."""


def simulated(seed: int | None = None) -> AdvertSource:
    """Return a source of simulated adverts in real time, stamped on the monotonic clock.

    The scenario starts now, so the simulated phones broadcast today's real rolling IDs; one
    simulated hour follows another until the daemon stops.
    """

    async def source(emit: Emit) -> None:
        rng = random.Random(seed)  # noqa: S311 - picks simulation seeds, not secrets
        while True:
            start = time.time()
            scenario = Scenario(
                people=SIMULATED_HOUR_PEOPLE, minutes=60, seed=rng.randrange(2**31), start=start
            )
            mono0 = time.monotonic()
            for advert in Simulation(scenario).adverts():
                delay = mono0 + (advert.t - start) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                emit(advert._replace(t=time.monotonic()))

    return source


class Daemon:
    """Runs the gateway until `stop` is called (or a signal asks)."""

    def __init__(
        self,
        config: Config,
        source: AdvertSource,
        *,
        capture_to: IO[bytes] | None = None,
        gatt: GattReader | None = None,
    ) -> None:
        self.config = config
        self._source = source
        self._capture_to = capture_to
        """Where to record every advert heard, in the capture format (``run --capture``)."""
        self._gatt = gatt
        self._stop = asyncio.Event()
        self.dropped = 0
        self.errors = 0
        self._synced = False

    def stop(self) -> None:
        """Ask the daemon to finish: close open visits, commit, return."""
        self._stop.set()

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        cfg = self.config
        store = EventStore.open(
            cfg.db_path,
            gateway=cfg.gateway.id,
            site=cfg.gateway.site,
            synchronous=cfg.store.synchronous,
            commit_interval_s=cfg.store.commit_interval_s,
            retention_days=cfg.store.retention_days,
        )
        self._synced = clock_synced()
        try:
            pipeline = Pipeline(
                PresenceTracker(cfg.presence, roles=cfg.scanner.role_of()),
                store,
                wall=wall_time,
                clock_synced=lambda: self._synced,
                on_events=_log_events,
                on_checkin=_log_checkin,
                ids=self._gatt.ids if self._gatt else None,
                on_unresolved=self._gatt.want if self._gatt else None,
                tap=self._record if self._capture_to else None,
            )
            _LOGGER.info(
                "Gateway %s (site %s) storing events in %s",
                cfg.gateway.id,
                cfg.gateway.site,
                cfg.db_path,
            )
            return await self._serve(pipeline)
        finally:
            store.close()

    async def _serve(self, pipeline: Pipeline) -> int:
        queue: asyncio.Queue[Advert] = asyncio.Queue(maxsize=QUEUE_MAX)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        failed = False
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._produce(queue), name="source"),
                    group.create_task(self._consume(queue, pipeline), name="pipeline"),
                    group.create_task(self._tick(pipeline), name="ticker"),
                ]
                if self._gatt is not None:
                    tasks.append(group.create_task(self._gatt.run(), name="gatt"))
                await self._stop.wait()
                for task in tasks:
                    task.cancel()
        except* Exception as group_error:
            for error in _leaves(group_error):
                if isinstance(error, GatewayError):  # expected trouble: its message says it
                    _LOGGER.error("Stopping: %s", error)  # noqa: TRY400
                else:
                    _LOGGER.error("Stopping: %s", error, exc_info=error)  # noqa: TRY400
            failed = True
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        while not queue.empty():
            self._feed(pipeline, queue.get_nowait())
        pipeline.close()
        _LOGGER.info("Stopped: %s", _summary(pipeline, self.dropped))
        return 1 if failed else 0

    def _record(self, advert: Advert) -> None:
        if self._capture_to is not None:
            self._capture_to.write(capture.dumps(advert._replace(t=wall_time(advert.t))))

    async def _produce(self, queue: asyncio.Queue[Advert]) -> None:
        def emit(advert: Advert) -> None:
            try:
                queue.put_nowait(advert)
            except asyncio.QueueFull:
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                    _LOGGER.warning("Advert queue full: %d adverts dropped so far", self.dropped)

        await self._source(emit)
        _LOGGER.info("The advert source ended")
        self.stop()

    async def _consume(self, queue: asyncio.Queue[Advert], pipeline: Pipeline) -> None:
        while True:
            self._feed(pipeline, await queue.get())
            for _ in range(queue.qsize()):  # drain a burst without going back to the loop
                self._feed(pipeline, queue.get_nowait())

    def _feed(self, pipeline: Pipeline, advert: Advert) -> None:
        try:
            pipeline.feed(advert)
        except StoreError as e:
            # The rows stay buffered in the store and the next commit retries them.
            self.errors += 1
            _LOGGER.error("%s", e)  # noqa: TRY400 - the message says it all
        except Exception:  # a task boundary: one bad advert must not stop the gateway
            self.errors += 1
            _LOGGER.exception("Could not process advert %r", advert)

    async def _tick(self, pipeline: Pipeline) -> None:
        last_status = last_clock = time.monotonic()
        last_prune = -PRUNE_EVERY_S
        last_adverts = 0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                pipeline.tick(now)
            except StoreError as e:
                self.errors += 1
                _LOGGER.error("%s", e)  # noqa: TRY400 - the message says it all
            if now - last_clock >= CLOCK_CHECK_EVERY_S:
                last_clock = now
                self._synced = clock_synced()
            if self._synced and now - last_prune >= PRUNE_EVERY_S:
                last_prune = now
                # No MQTT sync yet, so nothing would ever mark events synced: retention
                # applies to every event.
                pipeline.store.prune(time.time(), include_unsynced=True)
            if now - last_status >= STATUS_EVERY_S:
                rate = (pipeline.counters.adverts - last_adverts) / (now - last_status)
                last_status, last_adverts = now, pipeline.counters.adverts
                _LOGGER.info(
                    "%.0f adverts/s, %d present, %s",
                    rate,
                    len(pipeline.tracker.present()),
                    _summary(pipeline, self.dropped),
                )


def _leaves(error: BaseException) -> list[BaseException]:
    """Return the exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def wall_time(at: float) -> float:
    """Convert the monotonic clock to Unix time, with the offset of the moment (NTP may step)."""
    return at + (time.time() - time.monotonic())


def _summary(pipeline: Pipeline, dropped: int) -> str:
    c = pipeline.counters
    return (
        f"{c.adverts} adverts, {sum(c.sightings.values())} sightings, "
        f"{c.events['entry']} entries, {c.events['exit']} exits, {c.checkins} check-ins, "
        f"{dropped} dropped"
    )


def _log_events(_decided: list[PresenceEvent], stored: list[dict[str, Any]]) -> None:
    for event in stored:
        _LOGGER.info(
            "%-5s %s %s %s (rssi max %d, %d sightings%s)",
            event["type"],
            event["app"],
            event["platform"] or "-",
            event["rolling_id"] or "(id unknown)",
            event["rssi_max"],
            event["sightings"],
            f", {event['dwell_s']} s inside" if event["dwell_s"] is not None else "",
        )


def _log_checkin(checkin: CheckIn) -> None:
    _LOGGER.info(
        "CHECK-IN %s %s %s at %d dBm",
        checkin.app,
        checkin.platform or "-",
        checkin.rolling_id or "(id unknown)",
        checkin.rssi,
    )
