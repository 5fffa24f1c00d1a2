"""The desk page in a real browser: a lobby staged through a real daemon, shot by Chromium.

tests/test_browser.py calls `capture` into its temp dir; the same code refreshes README's
picture: ``.venv/bin/python -m tests.deskshot docs/desk.png``. Chromium is Debian's
(``apt install chromium``), driven by Playwright's Python package: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from playwright.async_api import Browser, Page, Playwright, ViewportSize, async_playwright

from gateway.config import Config
from gateway.model import App, EventType, Platform, PresenceEvent
from gateway.store import EventStore
from tests.deskrun import Running, desk_config, running
from tests.factories import android_advert, gaen_advert

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",  # as the kiosk: the check-in beep may play
]
VIEWPORT: Final = ViewportSize(width=1280, height=720)
TIMEZONE: Final = "Asia/Ho_Chi_Minh"


async def launch(playwright: Playwright) -> Browser:
    """Start the system's Chromium, headless (``apt-get install chromium``; .ci/run does)."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


async def open_desk(browser: Browser, url: str, *, viewport: ViewportSize = VIEWPORT) -> Page:
    """Open the desk page in a fresh context (its own storage) and wait for the stream."""
    context = await browser.new_context(viewport=viewport, timezone_id=TIMEZONE)
    page = await context.new_page()
    await page.goto(f"{url}/")
    await page.wait_for_selector('#conn[data-state="live"]')
    return page


def rolling_id(n: int) -> str:
    """A made-up rolling ID, the same for the same ``n``."""
    return hashlib.sha256(f"phone {n}".encode()).hexdigest()[:24]


def seed_history(cfg: Config, now: float, visits: int = 9) -> None:
    """Store the visits of the last hour before the daemon starts (it counts them at start)."""
    events = []
    for n in range(visits):
        entered = now - 3300 + n * 340
        left = entered + 40 + 23 * n
        rid = rolling_id(100 + n)
        platform = Platform.IOS if n % 3 == 1 else Platform.ANDROID
        for kind, at in ((EventType.ENTRY, entered), (EventType.EXIT, left)):
            checked_in = n % 2 == 0 and kind is EventType.EXIT
            event = PresenceEvent(kind, rid, n + 1, at, App.BLUEZONE, platform, rid, -58, 40,
                                  entered, at, checked_in=checked_in)  # fmt: skip
            events.append(event)
    events.sort(key=lambda e: e.at)
    with EventStore.open(cfg.db_path, gateway=cfg.gateway.id, site=cfg.gateway.site) as store:
        store.append(events, wall=lambda at: at, clock_synced=True)


async def stage_lobby(gw: Running, page: Page, walk_ins: int = 5) -> None:
    """People walk in (one with a GAEN phone), then one holds a Bluezone phone to the desk."""
    for n in range(walk_ins):
        address = f"5A:00:00:00:00:{n:02X}"
        for _ in range(3):
            gw.phones.send(android_advert(rssi=-60, rolling_id=rolling_id(n), address=address))
        await page.locator("#events li").nth(n).wait_for()
    gw.phones.send(gaen_advert(rssi=-62))
    gw.phones.hold_close(rolling_id=rolling_id(0), address="5A:00:00:00:00:00")
    await page.wait_for_selector('#panel[data-state="bluezone"]')


async def capture(browser: Browser, workdir: Path, out: Path) -> dict[str, Any]:
    """Stage the lobby for a daemon in ``workdir``; save the page to ``out``; return its counts."""
    cfg = desk_config(workdir, gateway='clock_check = "trust"')  # as an NTP-synced gateway
    seed_history(cfg, time.time())
    async with running(cfg) as gw:
        page = await open_desk(browser, gw.url)
        try:
            await stage_lobby(gw, page)
            await page.evaluate("document.getAnimations().forEach((a) => a.finish())")
            await page.screenshot(path=out)
            return {
                "present": await page.text_content("#n-present"),
                "today_in": await page.text_content("#n-in-today"),
                "rows": await page.locator("#events li").count(),
            }
        finally:
            await page.context.close()


async def _main(out: Path) -> None:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            with tempfile.TemporaryDirectory(prefix="bluezone-deskshot-") as work:
                shown = await capture(browser, Path(work), out)
        finally:
            await browser.close()
    sys.stdout.write(f"{out}: {shown}\n")


def main(argv: list[str] | None = None) -> int:
    """Write the README's screenshot."""
    parser = argparse.ArgumentParser(prog="python -m tests.deskshot", description=__doc__)
    parser.add_argument("out", type=Path, help="the PNG to write (docs/desk.png)")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
