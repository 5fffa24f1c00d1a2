"""The composition root: an advert source, the pipeline and the store under one event loop.

The source only enqueues; one consumer feeds the pipeline; a ticker ends silent visits and
commits. Scanning never waits for storage, and a full queue drops (and counts) adverts rather
than growing without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import shutil
import signal
import time
from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Any, Final

from gateway import __version__, capture
from gateway.clock import boot_id, clock_check
from gateway.config import Config, ConfigError
from gateway.config import load as load_config
from gateway.linker import quarter_hour_phase
from gateway.model import (
    Advert,
    App,
    CheckIn,
    GatewayError,
    PresenceEvent,
    iso_utc,
    parse_iso_utc,
)
from gateway.pipeline import Pipeline
from gateway.presence import PresenceTracker
from gateway.scan import AdapterScanner, GattReader
from gateway.simulate import Scenario, Simulation
from gateway.store import EventStore, StoreError
from gateway.sync import Publisher
from gateway.systemd import Notifier
from gateway.web import Feeds, WebError, WebView

if TYPE_CHECKING:
    from gateway.indicator import Indicator

_LOGGER = logging.getLogger(__name__)

QUEUE_MAX: Final = 10_000
"""Adverts waiting for the consumer: seconds of a busy entrance (a few thousand a second)."""
TICK_S: Final = 1.0
STATUS_EVERY_S: Final = 30.0
CLOCK_CHECK_EVERY_S: Final = 10.0
INDICATOR_EVERY_S: Final = 2.0
"""How often the red LED follows health: a scanner's brief recovery shows, but not for long."""
PRUNE_EVERY_S: Final = 3600.0
DISK_CHECK_EVERY_S: Final = 60.0
DROP_BATCH: Final = 1000
"""Unsynced events dropped per minute while the disk stays below ``min_free_mb``."""
RATE_WINDOW_S: Final = 10.0
STATUS_NOTIFY_S: Final = 5.0
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
        scanners: list[AdapterScanner] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._wall_clock = wall_clock
        """The system clock (a test may pass one that NTP "steps")."""
        self._source = source
        self._capture_to = capture_to
        """Where to record every advert heard, in the capture format (``run --capture``)."""
        self._gatt = gatt
        self._scanners = scanners
        """The live scanners, for health; None when the source is the simulator."""
        self._stop = asyncio.Event()
        self.dropped = 0
        self.errors = 0
        self._synced = False
        self._boot_time = time.time()
        self._started = self._last_advert = time.monotonic()
        self._rate = 0.0
        self._disk_free_mb: float | None = None
        self.publisher: Publisher | None = None
        self.notifier = Notifier()
        self._pipeline: Pipeline | None = None
        self._consumed = 0
        self._queue: asyncio.Queue[Advert] | None = None
        self._store_ok = True
        self._clock_synced = clock_check(config.gateway.clock_check)
        self.indicator: Indicator | None = None
        """The optional LEDs and buzzer (``[indicator]``), while open."""
        self.web: WebView | None = None
        """The desk's page, while it serves."""

    def stop(self) -> None:
        """Ask the daemon to finish: close open visits, commit, say offline, return."""
        if not self._stop.is_set():
            self.notifier.stopping()
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: read the configuration again and apply its ``[presence]`` thresholds.

        The thresholds are all the engine reads per sighting, so they apply at once; a change
        to any other section is reported as needing a restart. A configuration that no longer
        loads is reported and the running one kept.
        """
        if self.config.source is None or self._pipeline is None:
            _LOGGER.warning("SIGHUP: no configuration file to reload")
            return
        self.notifier.reloading()
        try:
            fresh = load_config(self.config.source)
        except ConfigError as e:
            _LOGGER.error("SIGHUP: keeping the running configuration: %s", e)  # noqa: TRY400
        else:
            if fresh.presence != self.config.presence:
                self._pipeline.tracker.policy = fresh.presence
                _LOGGER.info("SIGHUP: presence thresholds now %s", fresh.presence)
            others = [
                name
                for name in ("gateway", "store", "link", "scanner", "mqtt", "web")
                if getattr(fresh, name) != getattr(self.config, name)
            ]
            if others:
                _LOGGER.warning(
                    "SIGHUP: changes to %s take effect at the next restart",
                    ", ".join(f"[{name}]" for name in others),
                )
            self.config = dataclasses.replace(self.config, presence=fresh.presence)
        self.notifier.ready(self._status_line(self._pipeline))

    async def run(self) -> int:
        """Run until stopped; return the process exit code."""
        cfg = self.config
        # Before anything is opened: an unreadable token file is a configuration error.
        web_token = cfg.web.token() if cfg.web.enabled else None
        store = EventStore.open(
            cfg.db_path,
            gateway=cfg.gateway.id,
            site=cfg.gateway.site,
            synchronous=cfg.store.synchronous,
            commit_interval_s=cfg.store.commit_interval_s,
            retention_days=cfg.store.retention_days,
            boot_id=boot_id(),
        )
        self._synced = self._clock_synced()
        if cfg.indicator.enabled:
            self.indicator = _open_indicator(cfg)
        self._disk_free_mb = round(shutil.disk_usage(cfg.db_path.parent).free / 2**20, 1)
        try:
            pipeline = Pipeline(
                PresenceTracker(
                    cfg.presence,
                    roles=cfg.scanner.role_of(),
                    link=cfg.link,
                    phase=quarter_hour_phase(self._wall_time),  # adverts: monotonic clock
                ),
                store,
                wall=self._wall_time,
                clock_synced=lambda: self._synced,
                on_events=self._on_events,
                on_checkin=self._on_checkin,
                ids=self._gatt.ids if self._gatt else None,
                on_unresolved=self._gatt.want if self._gatt else None,
                tap=self._record if self._capture_to else None,
            )
            if cfg.mqtt.enabled:
                self.publisher = Publisher(
                    cfg.mqtt, store, gateway=cfg.gateway.id, site=cfg.gateway.site,
                    boot_time=self._boot_time, health=lambda: self.health(pipeline),
                )  # fmt: skip
            _LOGGER.info(
                "Gateway %s (site %s) storing events in %s%s",
                cfg.gateway.id,
                cfg.gateway.site,
                cfg.db_path,
                f", syncing to {cfg.mqtt.host}" if cfg.mqtt.enabled else "",
            )
            if cfg.web.enabled:
                self.web = self._web_view(pipeline, web_token)
            store.on_commit = self._on_commit
            return await self._serve(pipeline)
        finally:
            store.close()
            if self.indicator is not None:
                self.indicator.close()

    async def _serve(self, pipeline: Pipeline) -> int:
        queue: asyncio.Queue[Advert] = asyncio.Queue(maxsize=QUEUE_MAX)
        self._queue = queue
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._pipeline = pipeline
        failed = False
        web = await self._start_web()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._produce(queue), name="source"),
                    group.create_task(self._consume(queue, pipeline), name="pipeline"),
                    group.create_task(self._tick(pipeline), name="ticker"),
                ]
                if self._gatt is not None:
                    tasks.append(group.create_task(self._gatt.run(), name="gatt"))
                if web is not None:
                    tasks.append(group.create_task(web.run(), name="web"))
                tasks.append(group.create_task(self._announce_ready(pipeline), name="ready"))
                sync = None
                if self.publisher is not None:
                    sync = group.create_task(self.publisher.run(), name="sync")
                await self._stop.wait()
                await self._shut_down(tasks, sync, queue, pipeline)
        except* Exception as group_error:
            for error in _leaves(group_error):
                if isinstance(error, GatewayError):  # expected trouble: its message says it
                    _LOGGER.error("Stopping: %s", error)  # noqa: TRY400
                else:
                    _LOGGER.error("Stopping: %s", error, exc_info=error)  # noqa: TRY400
            failed = True
            pipeline.close()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if web is not None:
                await web.stop()
        _LOGGER.info("Stopped: %s", _summary(pipeline, self.dropped))
        return 1 if failed else 0

    def _on_commit(self, seconds: float, rows: int) -> None:
        """Events were committed: time it for ``/metrics``, and send them to central now."""
        if self.web is not None:
            self.web.on_commit(seconds, rows)
        if self.publisher is not None:
            self.publisher.committed()

    def _web_view(self, pipeline: Pipeline, token: str | None) -> WebView:
        """Return the desk's page over this pipeline, fed by its hooks (`_serve` starts it)."""
        feeds = Feeds(
            health=lambda: self.health(pipeline),
            occupants=pipeline.tracker.occupants,
            counters=pipeline.counters,
            wall=self._wall_time,
            alive=lambda: self._store_ok and not self._stop.is_set(),
            broker=lambda: None if self.publisher is None else self.publisher.connected,
        )
        view = WebView(
            self.config, pipeline.store, feeds, token=token, reads_ids=self._gatt is not None,
            clock=self._wall_clock,
        )  # fmt: skip
        if self._gatt is not None:
            self._gatt.on_read = view.on_read
        return view

    async def _start_web(self) -> WebView | None:
        """Start the desk's page. Scanning and storing matter more: without it, go on."""
        if self.web is None:
            return None
        try:
            await self.web.start()
        except (WebError, StoreError) as e:
            _LOGGER.error("No desk view: %s (the gateway runs on without it)", e)  # noqa: TRY400
            self.web = None
        except Exception:  # an optional part's boundary: a bug in it must not stop scanning
            _LOGGER.exception("No desk view (the gateway runs on without it)")
            self.web = None
        return self.web

    def _on_events(self, decided: list[PresenceEvent], stored: list[dict[str, Any]]) -> None:
        _log_events(decided, stored)
        if self.web is not None:
            self.web.on_events(stored)

    def _on_checkin(self, checkin: CheckIn) -> None:
        _log_checkin(checkin)
        if self.web is not None:
            self.web.on_checkin(checkin)
        if self.indicator is not None and checkin.app is App.BLUEZONE:
            self.indicator.checkin()

    def _update_indicator(self, pipeline: Pipeline) -> None:
        """Red while a scanner is in trouble or (with a broker) the outbox is getting old."""
        if self.indicator is None or self.indicator.red is None:
            return
        health = self.health(pipeline)
        if not self.config.mqtt.enabled:
            health["outbox"] = {}  # without a broker the outbox only grows: not trouble
        self.indicator.update(health)

    async def _announce_ready(self, pipeline: Pipeline) -> None:
        """READY=1 once the scanners scan (at once for the simulator): systemd's start waits."""
        if self._scanners is not None:
            while not self._scanners:  # noqa: ASYNC110 - the source fills it as it starts
                await asyncio.sleep(0.05)
            for scanner in list(self._scanners):
                await scanner.scanning.wait()
        self.notifier.ready(self._status_line(pipeline))
        _LOGGER.info("Ready: %s", self._status_line(pipeline))

    def _status_line(self, pipeline: Pipeline) -> str:
        """Return what ``systemctl status`` shows: "scanning hci0, 12 present, outbox 0"."""
        if self._scanners is None:
            source = "simulating"
        else:
            source = (
                ", ".join(f"{s.state} {s.info.name if s.info else s.ident}" for s in self._scanners)
                or "starting"
            )
        outbox = pipeline.store.stats()["outbox"] if self.config.mqtt.enabled else None
        line = f"{source}, {pipeline.tracker.people()} present"
        return line + (f", outbox {outbox}" if outbox is not None else "")

    async def _shut_down(
        self,
        tasks: list[asyncio.Task[None]],
        sync: asyncio.Task[None] | None,
        queue: asyncio.Queue[Advert],
        pipeline: Pipeline,
    ) -> None:
        """Stop listening, finish what was heard, commit, then say offline to the broker."""
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while not queue.empty():
            self._feed(pipeline, queue.get_nowait())
        pipeline.close()  # the visits still open end now, and everything is committed
        if sync is not None and self.publisher is not None:
            await self.publisher.close()  # retained "offline", then DISCONNECT
            sync.cancel()

    def health(self, pipeline: Pipeline) -> dict[str, Any]:
        """Return the health message (docs/mqtt.md): outbox, scanners, counters."""
        store = pipeline.store
        stats = store.stats()
        oldest = stats["oldest_unsynced_ts"]
        now = time.time()
        publisher = self.publisher.health() if self.publisher else {}
        if self._scanners is not None:
            scanners = [s.health() for s in self._scanners]
        else:
            age_s = round(time.monotonic() - self._last_advert, 1)
            scanners = [{"adapter": "simulator", "name": None, "state": "simulated",
                         "adverts": pipeline.counters.adverts, "malformed": 0,
                         "recoveries": {}, "last_advert_age_s": age_s}]  # fmt: skip
        return {
            "gateway": self.config.gateway.id,
            "site": self.config.gateway.site,
            "version": __version__,
            "ts": iso_utc(now),
            "uptime_s": round(time.monotonic() - self._started, 1),
            "clock_synced": self._synced,
            "disk_free_mb": self._disk_free_mb,
            "present": pipeline.tracker.people(),
            "present_ids": len(pipeline.tracker.present()),
            "adverts_per_s": round(self._rate, 1),
            "outbox": {
                "depth": stats["outbox"],
                "oldest_unsynced_ts": oldest,
                "oldest_unsynced_age_s": None
                if oldest is None
                else round(now - parse_iso_utc(oldest), 1),
                "last_puback_ts": publisher.get("last_puback_ts") or store.state("last_puback_ts"),
                "first_seq": stats["first_seq"],
                "last_seq": stats["last_seq"],
            },
            "scanners": scanners,
            "counters": {
                "dropped_adverts": self.dropped,
                "dropped_unsynced_events": int(store.state("dropped_unsynced") or 0),
                "publish_failures": publisher.get("publish_failures", 0),
                "reconnects": publisher.get("reconnects", 0),
                "recoveries": sum(sum(s.recoveries.values()) for s in self._scanners or []),
            },
        }

    def _record(self, advert: Advert) -> None:
        if self._capture_to is not None:
            self._capture_to.write(capture.dumps(advert._replace(t=self._wall_time(advert.t))))

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
            self._last_advert = time.monotonic()
            self._consumed += 1

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
        await asyncio.gather(self._run_ticks(pipeline), self._watch_progress(pipeline))

    async def _watch_progress(self, pipeline: Pipeline) -> None:
        """WATCHDOG=1 only while the pipeline makes progress, and STATUS= for humans.

        Progress: the consumer has caught up with the queue or moved since the last look, and
        the last commit worked. A wedged loop sends nothing at all, so systemd restarts us.
        """
        interval = self.notifier.watchdog_s
        consumed = self._consumed
        next_status = 0.0
        while True:
            await asyncio.sleep(min(interval or STATUS_NOTIFY_S, STATUS_NOTIFY_S))
            moving = self._queue_empty() or self._consumed != consumed
            consumed = self._consumed
            if interval is not None and moving and self._store_ok:
                self.notifier.watchdog()
            elif interval is not None:
                _LOGGER.warning(
                    "No watchdog ping: the pipeline is stuck (queue %s, store %s)",
                    "moving" if moving else "stuck",
                    "ok" if self._store_ok else "failing",
                )
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + STATUS_NOTIFY_S
                self.notifier.status(self._status_line(pipeline))

    def _queue_empty(self) -> bool:
        return self._queue is None or self._queue.empty()

    async def _run_ticks(self, pipeline: Pipeline) -> None:
        last_status = last_clock = last_rate = last_indicator = time.monotonic()
        last_prune = last_disk = -PRUNE_EVERY_S
        status_adverts = rate_adverts = 0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            try:
                pipeline.tick(now)
                self._store_ok = True
                if now - last_disk >= DISK_CHECK_EVERY_S:
                    last_disk = now
                    self._mind_the_disk(pipeline.store)
                if self._synced and now - last_prune >= PRUNE_EVERY_S:
                    last_prune = now
                    # Without a broker nothing is ever marked synced: then retention applies
                    # to every event; with one, unsynced events wait for it.
                    unsynced_too = not self.config.mqtt.enabled
                    pipeline.store.prune(self._wall_clock(), include_unsynced=unsynced_too)
            except StoreError as e:
                self.errors += 1
                self._store_ok = False
                _LOGGER.error("%s", e)  # noqa: TRY400 - the message says it all
            if now - last_indicator >= INDICATOR_EVERY_S:
                last_indicator = now
                self._update_indicator(pipeline)
            if now - last_clock >= CLOCK_CHECK_EVERY_S:
                last_clock = now
                self._check_clock(pipeline.store)
            if now - last_rate >= RATE_WINDOW_S:
                self._rate = (pipeline.counters.adverts - rate_adverts) / (now - last_rate)
                last_rate, rate_adverts = now, pipeline.counters.adverts
            if now - last_status >= STATUS_EVERY_S:
                rate = (pipeline.counters.adverts - status_adverts) / (now - last_status)
                last_status, status_adverts = now, pipeline.counters.adverts
                _LOGGER.info(
                    "%.0f adverts/s, %d present, %s",
                    rate,
                    pipeline.tracker.people(),
                    _summary(pipeline, self.dropped),
                )

    def _wall_time(self, at: float) -> float:
        """Convert the monotonic clock to wall time, with the offset of the moment."""
        return at + (self._wall_clock() - time.monotonic())

    def _check_clock(self, store: EventStore) -> None:
        """Follow the clock's state; once it is synchronised, restamp what was stamped before."""
        was, self._synced = self._synced, self._clock_synced()
        if self._synced == was:
            return
        if not self._synced:
            _LOGGER.warning(
                "The clock is no longer synchronised: new events say clock_synced=false"
            )
            return
        _LOGGER.info("The clock is synchronised")
        try:
            seqs = store.correct_clock(self._wall_clock() - time.monotonic())
        except StoreError as e:
            self.errors += 1
            self._synced = False  # try again at the next check
            _LOGGER.error("%s", e)  # noqa: TRY400 - the message says it all
            return
        if seqs and self.publisher is not None:
            self.publisher.restamped(seqs)
        if seqs and self.web is not None:
            self.web.recount()  # the desk's counts and times, on the corrected clock

    def _mind_the_disk(self, store: EventStore) -> None:
        """Keep ``min_free_mb`` free: oldest unsynced events go only when nothing else can."""
        path = self.config.db_path.parent
        free_mb = shutil.disk_usage(path).free / 2**20
        self._disk_free_mb = round(free_mb, 1)
        if free_mb >= self.config.store.min_free_mb:
            return
        if self._synced:
            store.prune(self._wall_clock(), include_unsynced=False)
        store.drop_oldest_unsynced(DROP_BATCH)


def _open_indicator(cfg: Config) -> Indicator | None:
    """Open the ``[indicator]`` GPIO outputs (gpiozero comes with the ``pi`` extra).

    Raises:
        ConfigError: gpiozero is missing, or it rejects a pin.
    """
    try:
        from gateway.indicator import open_indicator  # only with pins set: gpiozero is optional
    except ImportError as e:
        msg = f"[indicator] pins are set but gpiozero cannot be imported ({e}):"
        msg += " pip install 'bluezone-gateway[pi]'"
        raise ConfigError(msg) from None
    return open_indicator(cfg.indicator)


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
            # Journal fields under systemd (upper case, or journald drops them):
            # `journalctl EVENT_ID=…` or `journalctl ROLLING_ID=…` finds an event's line.
            extra={
                "EVENT_ID": event["id"],
                "EVENT_SEQ": event["seq"],
                "ROLLING_ID": event["rolling_id"] or "",
            },
        )


def _log_checkin(checkin: CheckIn) -> None:
    _LOGGER.info(
        "CHECK-IN %s %s %s at %d dBm",
        checkin.app,
        checkin.platform or "-",
        checkin.rolling_id or "(id unknown)",
        checkin.rssi,
    )
