"""The desk page in headless Chromium against a running daemon (one browser per session).

Debian's chromium driven by Playwright's Python package; `.ci/run` installs both and nothing
is downloaded. The daemon runs on the same event loop as the browser driver.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from tests import deskshot
from tests.deskrun import desk_config, running
from tests.factories import ROLLING_ID

pytestmark = pytest.mark.asyncio(loop_scope="session")

GREEN = "rgb(16, 161, 79)"  # --green in desk.css
CHECKIN_DEADLINE_MS = 2000  # the acceptance: green within 2 s of the phone coming close


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await deskshot.launch(playwright)
        yield browser
        await browser.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


async def shoot(page: Page, path: Path) -> None:
    await page.evaluate("document.getAnimations().forEach((a) => a.finish())")
    png = await page.screenshot(path=path)
    assert len(png) > 10_000


async def test_a_phone_held_close_turns_the_panel_green_within_two_seconds(browser, tmp_path):
    cfg = desk_config(tmp_path, web="checkin_hold_s = 1.5")
    async with running(cfg) as gw:
        page = await deskshot.open_desk(browser, gw.url)
        panel = page.locator("#panel")
        # Vietnamese by default.
        await expect(panel).to_have_attribute("data-state", "idle")
        await expect(page.locator("#panel-title")).to_have_text(
            "Mời đưa điện thoại lại gần thiết bị"
        )
        await expect(page.locator("#conn-text")).to_have_text("Trực tiếp")
        await expect(page.locator("html")).to_have_attribute("lang", "vi")
        for text in ("Trong khu vực", "1 giờ qua", "Hôm nay", "Sự kiện gần đây", "Máy quét"):
            await expect(page.get_by_text(text, exact=True)).to_be_visible()
        await expect(page.locator("#n-present")).to_have_text("0")

        gw.phones.hold_close()
        await expect(panel).to_have_attribute("data-state", "bluezone", timeout=CHECKIN_DEADLINE_MS)
        await expect(page.locator("#panel-title")).to_have_text("Đã bật Bluezone")
        await expect(page.locator("#panel-detail")).to_contain_text("Android")
        await expect(page.locator("#panel-detail")).to_contain_text("mã b9a665…")
        await expect(panel).to_have_css("background-color", GREEN)  # after its 0.15 s fade
        await expect(page.locator("body")).to_have_attribute("data-beeps", "1")
        await expect(page.locator("#n-present")).to_have_text("1")
        await expect(page.locator("#n-in-today")).to_have_text("1")
        rows = page.locator("#events li")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("Vào")
        await expect(rows.first).to_contain_text("b9a665…")
        assert ROLLING_ID not in await page.content()
        await shoot(page, tmp_path / "desk-checkin.png")
        # It returns to neutral once the hold is over.
        await expect(panel).to_have_attribute("data-state", "idle", timeout=5000)
        await page.context.close()


async def test_english_on_request_and_remembered(browser, tmp_path):
    async with running(desk_config(tmp_path)) as gw:
        page = await deskshot.open_desk(browser, gw.url)
        await page.click('button[data-lang="en"]')
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(page.locator("#panel-title")).to_have_text(
            "Hold the phone close to the gateway"
        )
        for text in ("Inside the zone", "Last hour", "Today", "Recent events", "Scanner"):
            await expect(page.get_by_text(text, exact=True)).to_be_visible()
        gw.phones.hold_close()
        await expect(page.locator("#panel-title")).to_have_text("Bluezone is on")
        await expect(page.locator("#events li").first).to_contain_text("In")
        await page.reload()
        await expect(page.locator("#conn-text")).to_have_text("Live")
        await expect(page.locator('button[data-lang="en"]')).to_have_attribute(
            "aria-pressed", "true"
        )
        await shoot(page, tmp_path / "desk-en.png")
        await page.context.close()


async def test_the_page_says_when_the_link_is_lost_and_comes_back_by_itself(browser, tmp_path):
    first = desk_config(tmp_path / "a")
    async with running(first) as gw:
        page = await deskshot.open_desk(browser, gw.url)
        port = gw.url.rpartition(":")[2]
    await expect(page.locator("#conn")).to_have_attribute("data-state", "lost")
    await expect(page.locator("#conn-text")).to_have_text("Mất kết nối, đang kết nối lại…")
    again = desk_config(tmp_path / "b", web=f'listen = "127.0.0.1:{port}"')
    async with running(again) as gw:
        await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=15_000)
        gw.phones.hold_close()
        await expect(page.locator("#panel")).to_have_attribute("data-state", "bluezone")
    await page.context.close()


@pytest.mark.parametrize(("width", "height"), [(800, 480), (1280, 720), (1920, 1080), (1080, 1920)])
async def test_everything_fits_the_screen(browser, tmp_path, width, height):
    async with running(desk_config(tmp_path)) as gw:
        page = await deskshot.open_desk(
            browser, gw.url, viewport={"width": width, "height": height}
        )
        gw.phones.hold_close()
        await expect(page.locator("#panel")).to_have_attribute("data-state", "bluezone")
        # No scrolling, and every part inside the window.
        overflow = await page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        assert overflow == [width, height]
        for selector in ("#panel-title", "#panel-detail", "#n-present", "#n-out-today",
                         "#n-bluetrace", "#events li", "#h-disk"):  # fmt: skip
            box = await page.locator(selector).first.bounding_box()
            assert box is not None, selector
            assert box["x"] >= 0, selector
            assert box["y"] >= 0, selector
            assert box["x"] + box["width"] <= width + 1, selector
            assert box["y"] + box["height"] <= height + 1, selector
        await shoot(page, tmp_path / f"desk-{width}x{height}.png")
        await page.context.close()


async def test_the_readme_screenshot_renders(browser, tmp_path):
    out = tmp_path / "desk.png"
    shown = await deskshot.capture(browser, tmp_path / "gw", out)
    assert png_size(out) == (1280, 720)
    assert shown["present"] == "5"  # five walked in; the GAEN phone counts apart
    assert shown["today_in"] is not None
    assert int(shown["today_in"]) >= 5
    assert shown["rows"] >= 6
