"""A daemon with its desk view, in-process, fed by phones the test (or benchmark) moves.

Shared by tests/test_web.py, tests/test_browser.py and bench/web.py: the real Daemon, the real
aiohttp server on a free port and a real SQLite file; only the radio is scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from gateway import config
from gateway.config import ScannerSection
from gateway.daemon import Daemon, wall_time
from gateway.model import Advert
from gateway.scan import GattReader
from tests.factories import android_advert

CLOSE_RSSI = -40
"""Held to the gateway: above ``checkin_rssi`` (-50 dBm)."""
START_TIMEOUT_S = 10.0


class Phones:
    """An advert source the caller drives: each call emits adverts stamped now."""

    def __init__(self) -> None:
        self._emit: Callable[[Advert], None] | None = None

    async def __call__(self, emit: Callable[[Advert], None]) -> None:
        self._emit = emit
        await asyncio.Event().wait()  # a scanner that stays up

    @property
    def started(self) -> bool:
        """Return whether the daemon runs this source."""
        return self._emit is not None

    def send(self, advert: Advert) -> None:
        """Emit one advert now (``t`` replaced by the monotonic clock, as scanners stamp)."""
        if self._emit is None:
            msg = "the daemon has not started its source yet"
            raise RuntimeError(msg)
        self._emit(advert._replace(t=time.monotonic()))

    def hold_close(
        self, make: Callable[..., Advert] = android_advert, count: int = 4, **kw: Any
    ) -> None:
        """Hold a phone to the gateway: ``count`` adverts at check-in strength in a row."""
        for _ in range(count):
            self.send(make(rssi=CLOSE_RSSI, **kw))


class InstantGatt(GattReader):
    """A GATT reader whose iPhones answer from a table (address → ID; missing: the read fails)."""

    def __init__(self, answers: dict[str, str]) -> None:
        super().__init__(ScannerSection(), [], wall_time)
        self.answers = answers

    async def _read(self, address: str) -> None:
        await asyncio.sleep(0.05)  # a connection takes a moment
        rolling_id = self.answers.get(address)
        if rolling_id is None:
            self._failed(address, "no answer (test)")
        else:
            self.ids.learn(address, rolling_id, wall_time(time.monotonic()))


@dataclass
class Running:
    """A daemon serving its desk view."""

    daemon: Daemon
    phones: Phones
    url: str
    """``http://127.0.0.1:PORT`` (no trailing slash)."""


def desk_config(
    tmp_path: Path, web: str = "", presence: str = "", gateway: str = ""
) -> config.Config:
    """A configuration for a test daemon: its data in ``tmp_path``, its page on a free port.

    ``web``, ``presence`` and ``gateway`` are more lines for those sections.
    """
    if "listen" not in web:
        web = 'listen = "127.0.0.1:0"\n' + web
    text = (
        f'[gateway]\nid = "gw-desk"\nsite = "hanoi-hq"\ndata_dir = "{tmp_path}"\n{gateway}\n'
        f"[store]\ncommit_interval_s = 0.1\n[presence]\n{presence}\n[web]\n{web}"
    )
    return config.parse(text)


@contextlib.asynccontextmanager
async def running(
    cfg: config.Config, gatt: GattReader | None = None, wall_clock: Callable[[], float] = time.time
) -> AsyncIterator[Running]:
    """Run a daemon until the block ends; stop it and check that it stopped cleanly."""
    phones = Phones()
    daemon = Daemon(cfg, phones, gatt=gatt, wall_clock=wall_clock)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while daemon.web is None or daemon.web.port is None or not phones.started:
                if task.done():
                    msg = f"the daemon ended before serving: exit {task.result()}"
                    raise RuntimeError(msg)
                await asyncio.sleep(0.01)
        yield Running(daemon, phones, f"http://127.0.0.1:{daemon.web.port}")
    finally:
        daemon.stop()
        code = await task
    assert code == 0


async def sse_events(
    response: aiohttp.ClientResponse,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yield (event, data) from a Server-Sent Events response until it ends."""
    event = "message"
    data: list[str] = []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield event, orjson.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def next_event(
    events: AsyncIterator[tuple[str, dict[str, Any]]],
    want: Callable[[str, dict[str, Any]], bool],
    timeout_s: float = 10.0,
) -> tuple[str, dict[str, Any]]:
    """Return the first (event, data) for which ``want`` holds (a bounded wait, not a check)."""
    async with asyncio.timeout(timeout_s):
        async for event, data in events:
            if want(event, data):
                return event, data
    msg = "the stream ended"
    raise AssertionError(msg)
