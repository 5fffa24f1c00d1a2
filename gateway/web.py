"""The security desk's live page, its JSON API and Prometheus ``/metrics``, on the daemon's loop.

aiohttp serves on the same event loop as the pipeline; a `Desk` (gateway/desk.py) holds
what the page shows. The page gets a snapshot when it connects to ``/api/stream``
(Server-Sent Events) and then deltas: a check-in, new events, and every few seconds the
counts and the health strip. Each page has a small queue; one that does not keep up is
disconnected (its browser reconnects and gets a fresh snapshot) instead of growing memory.

Nothing here may disturb scanning and storing: the daemon's hooks into this module catch
and log their own errors, and a port that cannot be bound leaves the daemon running
without its page (`WebError`).

Access: on a loopback address every route is open. On any other address every route but
``/healthz`` needs the token of ``[web] token_file``: ``Authorization: Bearer …``, the
cookie the page sets, or ``?token=`` (how a browser gets in: the page then moves the token
into an HttpOnly cookie and drops it from the address bar). Anything else is a bare 401.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final

import orjson
from aiohttp import web
from aiohttp_sse import sse_response
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway import __version__
from gateway.config import Config
from gateway.desk import Desk
from gateway.model import CheckIn, EventType, GatewayError, iso_utc, parse_iso_utc
from gateway.pipeline import Counters
from gateway.presence import Occupant
from gateway.store import EventStore

_LOGGER = logging.getLogger(__name__)

CLIENT_QUEUE_MAX: Final = 64
"""Messages waiting for one page: minutes of a busy entrance (a few a second at most)."""
MAX_CLIENTS: Final = 32
"""Pages streaming at once; a Pi serves a desk or two, the rest is a mistake or an attack."""
HEARTBEAT_S: Final = 15.0
"""SSE comment lines that keep proxies and NAT from closing an idle stream."""
SEND_TIMEOUT_S: Final = 10.0
"""A page whose TCP window stays shut this long is cut off (aiohttp-sse's send timeout)."""
RETRY_MS: Final = 2000
"""EventSource's reconnect delay after the stream ends (the default 3 s feels slow)."""
STATUS_EVERY_S: Final = 5.0
"""Counts and health to the pages: the hour window slides, the outbox drains."""
TICK_S: Final = 0.5
COOKIE: Final = "bzgw_token"
COOKIE_MAX_AGE_S: Final = 30 * 86_400
EVENTS_LIMIT_DEFAULT: Final = 100
EVENTS_LIMIT_MAX: Final = 1000
MAX_UNIX_S: Final = 253_402_300_800.0
"""10000-01-01T00:00:00Z: ``since`` beyond it cannot be formatted back."""
LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Store commit time: an fsync on a good SD card takes 1-20 ms, a worn one 100 ms and more."""
STATIC: Final = ("desk.css", "desk.js", "icon.svg")
CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "svg": "image/svg+xml",
}
SECURITY_HEADERS: Final = {
    # No inline script or style anywhere, so the page can forbid both.
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
UNAUTHORISED: Final = b'{"error": "unauthorized"}'


class WebError(GatewayError):
    """The web view cannot start (its address is taken or cannot be bound)."""


@dataclass(frozen=True, slots=True)
class Feeds:
    """What the web view reads from the running daemon: callables, so it holds no daemon."""

    health: Callable[[], dict[str, Any]]
    """The health message (docs/mqtt.md)."""
    occupants: Callable[[], list[Occupant]]
    """The devices inside the zone now (the presence engine)."""
    counters: Counters
    """The pipeline's counters (live: the same object the pipeline updates)."""
    wall: Callable[[float], float]
    """The source's clock (monotonic) to Unix seconds."""
    alive: Callable[[], bool]
    """Whether the pipeline and the store work: the health probe's answer."""
    broker: Callable[[], bool | None] = lambda: None
    """Whether the MQTT broker is connected; None when sync is off."""


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    gzipped: bytes
    etag: str
    content_type: str

    @classmethod
    def of(cls, body: bytes, name: str) -> _Asset:
        digest = hashlib.sha256(body).hexdigest()[:16]
        return cls(
            body,
            gzip.compress(body, compresslevel=9, mtime=0),
            f'"{digest}"',
            CONTENT_TYPES[name.rpartition(".")[2]],
        )


def _load_assets(language: str) -> dict[str, _Asset]:
    """Read the page from the package (no CDN: the desk may have no internet)."""
    folder = resources.files("gateway") / "static"
    assets = {name: _Asset.of(folder.joinpath(name).read_bytes(), name) for name in STATIC}
    page = folder.joinpath("index.html").read_text(encoding="utf-8")
    # The configured language, until the desk picks another (remembered by the browser).
    page = page.replace('data-default-lang="vi"', f'data-default-lang="{language}"')
    assets["index.html"] = _Asset.of(page.encode(), "index.html")
    return assets


@dataclass(eq=False, slots=True)  # hashed by identity: a set of pages
class _Client:
    queue: asyncio.Queue[tuple[str, str] | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=CLIENT_QUEUE_MAX)
    )

    def close(self) -> None:
        """Empty the queue and leave the end marker: the stream ends after what it is sending."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


@dataclass(slots=True)
class _Histogram:
    """Cumulative buckets, as Prometheus histograms are exposed."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS_S) if value <= bound),
            len(LATENCY_BUCKETS_S),
        )
        self.counts[index] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


def _bad_request(parameter: str, problem: str) -> web.Response:
    return _json({"error": f"{parameter}: {problem}", "parameter": parameter}, status=400)


def _json(data: Any, *, status: int = 200) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


class WebView:
    """The desk's page and the JSON API over a running daemon's store and pipeline."""

    def __init__(
        self,
        config: Config,
        store: EventStore,
        feeds: Feeds,
        *,
        token: str | None,
        reads_ids: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare the view; `start` binds it.

        Args:
            config: The gateway's configuration (``[web]``, the gateway's name, thresholds).
            store: The open event store (queries only).
            feeds: What the view reads from the daemon.
            token: The access token (``[web] token_file``, read); None on loopback.
            reads_ids: Whether iPhones' IDs are read over GATT (the panel waits for them).
            clock: The wall clock.
        """
        self.settings = config.web
        self._config = config
        self._store = store
        self._feeds = feeds
        self._token = None if config.web.loopback else token
        self._clock = clock
        self.desk = Desk(
            hold_s=config.web.checkin_hold_s,
            # One read may wait behind another in the reader's queue.
            reading_timeout_s=2 * config.scanner.gatt_timeout_s,
            reads_ids=reads_ids,
        )
        self._assets = _load_assets(config.web.language)
        self._clients: set[_Client] = set()
        self.dropped_clients = 0
        self._commits = _Histogram()
        self._committed_rows = 0
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        """The port bound (``[web] listen`` may ask for 0: any free port)."""

    # Lifecycle

    def app(self) -> web.Application:
        """Return the aiohttp application (routes, access middleware, security headers)."""
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/present", self._present)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/stream", self._stream)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.on_response_prepare.append(_secure_headers)
        app.on_shutdown.append(self._end_streams)
        return app

    async def start(self) -> None:
        """Count what the store holds for today, then listen.

        Raises:
            WebError: the address cannot be bound (in use, not an address of this host).
        """
        now = self._clock()
        self.desk.load(self._store.events(since=self.desk.window_start(now)), now)
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            msg = f"cannot listen on {self.settings.listen}: {e.strerror or e}"
            raise WebError(msg) from None
        self._runner = runner
        self.port = runner.addresses[0][1]
        _LOGGER.info(
            "Desk view on http://%s:%d/%s",
            self.settings.host,
            self.port,
            "" if self._token is None else " (token required)",
        )

    def recount(self) -> None:
        """Count again from the store (after the store restamped events: a late NTP sync).

        Pages get a fresh snapshot. Events not committed yet are missing until the next ones.
        """
        now = self._clock()
        self.desk.load(self._store.events(since=self.desk.window_start(now)), now)
        if self._clients:
            self._broadcast("snapshot", self.snapshot())

    async def stop(self) -> None:
        """End the streams and stop listening (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def run(self) -> None:
        """Push what changes with time alone: an iPhone read given up, counts, health."""
        next_status = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            try:
                now = self._clock()
                panel = self.desk.expire(now)
                if panel is not None:
                    self._broadcast("panel", panel)
                if self._clients and time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_EVERY_S
                    self._broadcast("status", self._status_message(now))
            except Exception:  # a task boundary: the page must not stop the gateway
                _LOGGER.exception("Desk view: could not update the pages")

    # Hooks from the daemon; each catches its own errors (they run inside the pipeline)

    def on_events(self, stored: list[dict[str, Any]]) -> None:
        """Show events just stored."""
        try:
            now = self._clock()
            items = self.desk.add_events(stored, now)
            self._broadcast("events", {"events": items, "counts": self._counts(now)})
        except Exception:
            _LOGGER.exception("Desk view: could not show %d events", len(stored))

    def on_checkin(self, checkin: CheckIn) -> None:
        """Show a phone held close."""
        try:
            self._broadcast("panel", self.desk.checkin(checkin, self._feeds.wall(checkin.at)))
        except Exception:
            _LOGGER.exception("Desk view: could not show a check-in")

    def on_read(self, address: str, rolling_id: str | None) -> None:
        """An iPhone's GATT read ended (the ``GattReader.on_read`` hook)."""
        try:
            panel = self.desk.id_read(address, rolling_id, self._clock())
            if panel is not None:
                self._broadcast("panel", panel)
        except Exception:
            _LOGGER.exception("Desk view: could not show an iPhone's ID")

    def on_commit(self, seconds: float, rows: int) -> None:
        """Time one store commit (the ``EventStore.on_commit`` hook), for ``/metrics``."""
        self._commits.observe(seconds)
        self._committed_rows += rows

    # Pushing to the pages

    def _broadcast(self, event: str, data: dict[str, Any]) -> None:
        if not self._clients:
            return
        message = (event, orjson.dumps(data).decode())
        for client in list(self._clients):
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                # It stopped reading: cut it off rather than queue without bound. Its
                # EventSource reconnects and starts again from a snapshot.
                self.dropped_clients += 1
                self._clients.discard(client)
                client.close()
                _LOGGER.warning("Desk view: a page fell behind and was disconnected")

    def _inside(self) -> tuple[Counter[str], Counter[str]]:
        """Return app → phones inside (distinct visits) and app → keys inside."""
        occupants = self._feeds.occupants()
        people = Counter(app for app, _ in {(o.app.value, o.visit) for o in occupants})
        return people, Counter(o.app.value for o in occupants)

    def _counts(self, now: float) -> dict[str, Any]:
        return self.desk.counts(now, *self._inside())

    def _status_message(self, now: float) -> dict[str, Any]:
        return {"counts": self._counts(now), "health": self._health_strip()}

    def _health_strip(self) -> dict[str, Any]:
        """Return the page's health strip: a level and a value for each concern."""
        health = self._feeds.health()
        scanners = health["scanners"]
        states = {s["state"] for s in scanners}
        scanner = "ok" if states and states <= {"scanning", "simulated"} else "warn"
        connected = self._feeds.broker()
        depth = health["outbox"]["depth"]
        free_mb = health["disk_free_mb"]
        min_free_mb = self._config.store.min_free_mb
        disk = "ok"
        if free_mb is not None and free_mb < 4 * min_free_mb:
            disk = "bad" if free_mb < min_free_mb else "warn"
        return {
            "scanner": {
                "level": scanner,
                "state": sorted(states - {"scanning"} or states or {"starting"})[0],
                "adapters": [s["name"] or s["adapter"] for s in scanners],
                "adverts_per_s": health["adverts_per_s"],
            },
            "sync": {
                "level": "off" if connected is None else "ok" if connected else "warn",
                "outbox": depth,
            },
            "clock": {"level": "ok" if health["clock_synced"] else "warn"},
            "disk": {"level": disk, "free_mb": free_mb},
        }

    def snapshot(self) -> dict[str, Any]:
        """Return what a page shows when it connects."""
        now = self._clock()
        return {
            "gateway": self._config.gateway.id,
            "site": self._config.gateway.site,
            "version": __version__,
            "language": self.settings.language,
            **self.desk.snapshot(now, *self._inside()),
            "health": self._health_strip(),
        }

    # Access and headers

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Require the token off loopback; move a ``?token=`` into a cookie for the page."""
        token = self._token
        if token is None or request.path == "/healthz":
            return await handler(request)
        scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
        offered = {
            "header": bearer.strip() if scheme.lower() == "bearer" else "",
            "cookie": request.cookies.get(COOKIE, ""),
            "query": request.query.get("token", ""),
        }
        expected = token.encode()
        # compare_digest: the time taken does not tell how much of a guess was right.
        valid = {k for k, v in offered.items() if v and hmac.compare_digest(v.encode(), expected)}
        if not valid:
            return web.Response(
                status=401,
                body=UNAUTHORISED,
                content_type="application/json",
                headers={"WWW-Authenticate": 'Bearer realm="bluezone-gateway"'},
            )
        if valid == {"query"} and request.path == "/":
            # Out of the address bar (and history, and screenshots), into an HttpOnly cookie
            # that EventSource sends as well.
            location = str(request.rel_url.without_query_params("token"))
            response = web.Response(status=303, headers={"Location": location})
            response.set_cookie(
                COOKIE,
                token,
                max_age=COOKIE_MAX_AGE_S,
                httponly=True,
                samesite="Strict",
                secure=request.secure,
                path="/",
            )
            return response
        return await handler(request)

    # Handlers

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._asset(request, "index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound
        return self._asset(request, name)

    def _asset(self, request: web.Request, name: str) -> web.StreamResponse:
        """Serve from memory: gzip'd when the browser takes it, 304 when it has it already."""
        asset = self._assets[name]
        headers = {"ETag": asset.etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if request.headers.get("If-None-Match") == asset.etag:
            return web.Response(status=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        headers["Content-Type"] = asset.content_type
        return web.Response(body=body, headers=headers)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        now = self._clock()
        return _json(
            {
                **self._feeds.health(),
                "desk": {
                    "counts": self._counts(now),
                    "panel": self.desk.panel(now),
                    "pages": self.pages,
                    "pages_dropped": self.dropped_clients,
                },
            }
        )

    async def _present(self, request: web.Request) -> web.StreamResponse:
        wall = self._feeds.wall
        devices = [
            {
                "key": o.key,
                "app": o.app.value,
                "platform": None if o.platform is None else o.platform.value,
                "rolling_id": o.rolling_id,
                "first_seen": iso_utc(wall(o.first_seen)),
                "last_seen": iso_utc(wall(o.last_seen)),
                "rssi_max": o.rssi_max,
                "visit": o.visit,
            }
            for o in self._feeds.occupants()
        ]
        by_app = Counter(d["app"] for d in devices)
        # Keys of one phone (its old and new rolling ID for a moment) share a visit.
        people = len({d["visit"] for d in devices})
        return _json(
            {"count": len(devices), "people": people, "by_app": dict(by_app), "devices": devices}
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Committed events from ``since`` (default: local midnight), oldest first."""
        query = request.query
        unknown = sorted(set(query) - {"since", "limit", "type", "token"})
        if unknown:
            return _bad_request(unknown[0], "unknown parameter (known: since, limit, type)")
        now = self._clock()
        since = self.desk.day_start(now)
        if "since" in query:
            try:
                since = _parse_since(query["since"])
            except ValueError:
                return _bad_request("since", "must be an ISO 8601 time or Unix seconds")
        limit = EVENTS_LIMIT_DEFAULT
        if "limit" in query:
            text = query["limit"]
            if not text.isdigit() or not 1 <= int(text) <= EVENTS_LIMIT_MAX:
                return _bad_request("limit", f"must be an integer from 1 to {EVENTS_LIMIT_MAX}")
            limit = int(text)
        kind = None
        if "type" in query:
            if query["type"] not in ("entry", "exit"):
                return _bad_request("type", "must be entry or exit")
            kind = EventType(query["type"])
        events = list(self._store.events(since=since, type=kind, limit=limit + 1))
        return _json(
            {
                "since": iso_utc(since),
                "limit": limit,
                "more": len(events) > limit,
                "events": events[:limit],
            }
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: a snapshot, then deltas, until the page or the daemon leaves."""
        if len(self._clients) >= MAX_CLIENTS:
            return _json({"error": "too many pages streaming"}, status=503)
        client = _Client()
        async with sse_response(
            request, ping_interval=HEARTBEAT_S, send_timeout=SEND_TIMEOUT_S
        ) as stream:
            self._clients.add(client)
            try:
                data = orjson.dumps(self.snapshot()).decode()
                await stream.send(data, event="snapshot", retry=RETRY_MS)
                while stream.is_connected():
                    message = await client.queue.get()
                    if message is None:
                        break
                    await stream.send(message[1], event=message[0])
            except (ConnectionResetError, TimeoutError):
                pass  # the page left, or stopped reading (aiohttp-sse aborted the connection)
            finally:
                self._clients.discard(client)
        return stream

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=generate_latest(self))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        response.enable_compression()
        return response

    def collect(self) -> Iterator[Metric]:
        """Yield the Prometheus metrics, read from the daemon's own counters at each scrape.

        A collector rather than prometheus_client's global metric objects: the daemon counts
        everything once already, and a second set of counters could drift from its health.
        """
        health = self._feeds.health()
        yield from _pipeline_metrics(self._feeds.counters, health)
        yield from _store_metrics(health, self._commits, self._committed_rows)
        yield from _scanner_metrics(health)
        yield from _view_metrics(self, health)

    @property
    def pages(self) -> int:
        """Return how many pages are streaming now."""
        return len(self._clients)

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        if self._feeds.alive():
            return _json({"status": "ok"})
        return _json({"status": "failing"}, status=503)

    async def _end_streams(self, _app: web.Application) -> None:
        """On shutdown: end every stream, so that stopping does not wait for the pages."""
        for client in list(self._clients):
            client.close()


def _parse_since(text: str) -> float:
    """Return Unix seconds from an ISO 8601 time or a number of Unix seconds.

    Raises:
        ValueError: neither, or not a finite time.
    """
    try:
        value = float(text)
    except ValueError:
        value = parse_iso_utc(text)
    if not math.isfinite(value) or not 0 <= value < MAX_UNIX_S:
        msg = f"not a time: {text!r}"
        raise ValueError(msg)
    return value


async def _secure_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _view_metrics(view: WebView, health: dict[str, Any]) -> Iterator[Metric]:
    info = InfoMetricFamily("bluezone_gateway", "The gateway's identity")
    info.add_metric([], {"gateway": health["gateway"], "site": health["site"],
                         "version": health["version"]})  # fmt: skip
    yield info
    yield GaugeMetricFamily(
        "bluezone_gateway_clock_synced", "1 when the clock is NTP-synchronised",
        value=int(health["clock_synced"]),
    )  # fmt: skip
    yield GaugeMetricFamily(
        "bluezone_gateway_uptime_seconds", "Seconds since the daemon started",
        value=health["uptime_s"],
    )  # fmt: skip
    yield GaugeMetricFamily(
        "bluezone_gateway_desk_pages", "Desk pages streaming now", value=view.pages
    )
    yield CounterMetricFamily(
        "bluezone_gateway_desk_pages_dropped", "Desk pages cut off for falling behind",
        value=view.dropped_clients,
    )  # fmt: skip


def _pipeline_metrics(counters: Counters, health: dict[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily("bluezone_gateway_adverts", "Adverts heard", value=counters.adverts)
    yield GaugeMetricFamily(
        "bluezone_gateway_adverts_per_second", "Adverts heard per second, over the last 10 s",
        value=health["adverts_per_s"],
    )  # fmt: skip
    sightings = CounterMetricFamily(
        "bluezone_gateway_sightings", "Adverts of tracing apps, by app", labels=["app"]
    )
    for app, count in sorted(counters.sightings.items()):
        sightings.add_metric([app], count)
    yield sightings
    yield CounterMetricFamily(
        "bluezone_gateway_rejected_adverts", "Adverts of no tracing app, or malformed",
        value=sum(counters.rejected.values()),
    )  # fmt: skip
    yield CounterMetricFamily(
        "bluezone_gateway_malformed_adverts", "Adverts claiming a tracing app, payload wrong",
        value=counters.malformed,
    )  # fmt: skip
    events = CounterMetricFamily(
        "bluezone_gateway_events", "Entry and exit events decided", labels=["type"]
    )
    for kind in ("entry", "exit"):
        events.add_metric([kind], counters.events[kind])
    yield events
    yield CounterMetricFamily(
        "bluezone_gateway_checkins", "Phones held to the gateway", value=counters.checkins
    )
    yield GaugeMetricFamily(
        "bluezone_gateway_present", "Phones inside the zone now (linked keys count once)",
        value=health["present"],
    )  # fmt: skip
    yield GaugeMetricFamily(
        "bluezone_gateway_present_ids", "Device keys (rolling IDs, addresses) inside the zone now",
        value=health["present_ids"],
    )  # fmt: skip
    yield CounterMetricFamily(
        "bluezone_gateway_dropped_adverts", "Adverts dropped: the queue was full",
        value=health["counters"]["dropped_adverts"],
    )  # fmt: skip


def _store_metrics(
    health: dict[str, Any], commits: _Histogram, committed_rows: int
) -> Iterator[Metric]:
    outbox = health["outbox"]
    yield GaugeMetricFamily(
        "bluezone_gateway_outbox_depth", "Events not yet acknowledged by the broker",
        value=outbox["depth"],
    )  # fmt: skip
    age = outbox["oldest_unsynced_age_s"]
    yield GaugeMetricFamily(
        "bluezone_gateway_outbox_oldest_age_seconds", "Age of the oldest unacknowledged event",
        value=0.0 if age is None else age,
    )  # fmt: skip
    counters = health["counters"]
    yield CounterMetricFamily(
        "bluezone_gateway_dropped_unsynced_events", "Unsynced events dropped: disk nearly full",
        value=counters["dropped_unsynced_events"],
    )  # fmt: skip
    yield CounterMetricFamily(
        "bluezone_gateway_publish_failures", "Publishes the broker refused",
        value=counters["publish_failures"],
    )  # fmt: skip
    yield CounterMetricFamily(
        "bluezone_gateway_broker_reconnects", "Connections to the broker made again",
        value=counters["reconnects"],
    )  # fmt: skip
    if health["disk_free_mb"] is not None:
        yield GaugeMetricFamily(
            "bluezone_gateway_disk_free_bytes", "Free space beside the store",
            value=health["disk_free_mb"] * 2**20,
        )  # fmt: skip
    histogram = HistogramMetricFamily(
        "bluezone_gateway_store_commit_seconds", "Time of one grouped commit to SQLite"
    )
    histogram.add_metric([], commits.buckets(), commits.total)
    yield histogram
    yield CounterMetricFamily(
        "bluezone_gateway_store_committed_events", "Events committed", value=committed_rows
    )


def _scanner_metrics(health: dict[str, Any]) -> Iterator[Metric]:
    recoveries = CounterMetricFamily(
        "bluezone_gateway_scanner_recoveries",
        "Recovery steps taken by the scanner, by adapter and step",
        labels=["adapter", "step"],
    )
    age = GaugeMetricFamily(
        "bluezone_gateway_scanner_last_advert_age_seconds",
        "Seconds since the adapter last heard an advert",
        labels=["adapter"],
    )
    for scanner in health["scanners"]:
        for step, count in sorted(scanner["recoveries"].items()):
            recoveries.add_metric([scanner["adapter"], step], count)
        age.add_metric([scanner["adapter"]], scanner["last_advert_age_s"])
    yield recoveries
    yield age
