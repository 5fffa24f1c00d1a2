"""The desk page: its weight, and how fast a check-in reaches the page and the screen.

``python bench/web.py [--checkins N] [--runs K] [--write docs/benchmarks.md]`` from the
repository root.

A real daemon (tests/deskrun.py: the real pipeline, SQLite and aiohttp server; scripted
phones) serves the page. Measured:

- page weight: the bytes of the page and its assets as sent (gzip) and as written;
- update latency, per check-in, from the moment the phone's adverts are emitted into the
  daemon (as the scanner's callback does) to (a) the "panel" Server-Sent Event arriving at an
  HTTP client, (b) the panel's ``data-state`` turning "bluezone" in headless Chromium (a
  MutationObserver), (c) the next animation frame after it (when the screen can show it).
  Python's and Chromium's wall clocks are the same system clock.

Prints JSON; numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from playwright.async_api import Page, async_playwright

from gateway.bench import machine, write_section
from tests import deskshot
from tests.deskrun import Running, desk_config, next_event, running, sse_events

ASSETS = ("/", "/static/desk.css", "/static/desk.js", "/static/icon.svg")
HOLD_S = 0.3
"""Short, so that the panel is neutral again before the next check-in."""
OBSERVER = """() => {
  window.__marks = [];
  const panel = document.getElementById("panel");
  new MutationObserver(() => {
    if (panel.dataset.state !== "bluezone") return;
    const dom = performance.timeOrigin + performance.now();
    requestAnimationFrame(() => {
      window.__marks.push([dom, performance.timeOrigin + performance.now()]);
      document.body.dataset.marks = String(window.__marks.length);
    });
  }).observe(panel, { attributes: true, attributeFilter: ["data-state"] });
}"""


def _phone(n: int) -> dict[str, Any]:
    """A distinct phone per check-in: one phone checks in once until it moves away."""
    return {"rolling_id": f"{n:024x}", "address": f"5A:00:00:00:{n // 256:02X}:{n % 256:02X}"}


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 1),
        "p95": round(p95, 1),
        "max": round(ordered[-1], 1),
    }


async def _weight(url: str) -> dict[str, Any]:
    sizes: dict[str, Any] = {}
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for path in ASSETS:
            async with http.get(url + path, headers={"Accept-Encoding": "gzip"}) as response:
                sent = len(await response.read())
            async with http.get(url + path, headers={"Accept-Encoding": "identity"}) as response:
                plain = len(await response.read())
            sizes[path] = {"gzip": sent, "plain": plain}
        async with http.get(f"{url}/api/stream") as response:
            snapshot = await anext(sse_events(response))
            sizes["snapshot"] = len(json.dumps(snapshot[1]).encode())
    return sizes


async def _sse_latency(gw: Running, checkins: int, first: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/api/stream") as response:
        stream = sse_events(response)
        await anext(stream)
        for n in range(first, first + checkins):
            started = time.perf_counter()
            gw.phones.hold_close(count=3, **_phone(n))
            await next_event(stream, lambda e, d: e == "panel" and d["state"] == "bluezone")
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _browser_latency(page: Page, gw: Running, checkins: int, first: int) -> dict[str, Any]:
    await page.evaluate(OBSERVER)
    dom, frame = [], []
    for i, n in enumerate(range(first, first + checkins)):
        await page.wait_for_selector('#panel[data-state="idle"]')
        started_ms = time.time() * 1000
        gw.phones.hold_close(count=3, **_phone(n))
        # A selector, not wait_for_function: the page's CSP forbids the eval that needs.
        await page.wait_for_selector(f'body[data-marks="{i + 1}"]')
        marks = await page.evaluate("window.__marks")
        dom.append(marks[i][0] - started_ms)
        frame.append(marks[i][1] - started_ms)
    return {"dom": dom, "frame": frame}


async def _run(checkins: int) -> tuple[dict[str, Any], list[float], dict[str, Any]]:
    """One daemon and one browser: the weights, the SSE and the browser latencies."""
    with tempfile.TemporaryDirectory(prefix="bluezone-web-bench-") as work:
        cfg = desk_config(Path(work), web=f"checkin_hold_s = {HOLD_S}")
        async with running(cfg) as gw, async_playwright() as playwright:
            weight = await _weight(gw.url)
            sse = await _sse_latency(gw, checkins, first=0)
            browser = await deskshot.launch(playwright)
            try:
                page = await deskshot.open_desk(browser, gw.url)
                screen = await _browser_latency(page, gw, checkins, first=checkins)
            finally:
                await browser.close()
    return weight, sse, screen


async def measure(checkins: int, runs: int) -> dict[str, Any]:
    """Run a daemon and a browser ``runs`` times; return the weights and pooled latencies."""
    sse: list[float] = []
    screen: dict[str, list[float]] = {"dom": [], "frame": []}
    for _ in range(runs):
        weight, more_sse, more_screen = await _run(checkins)
        sse += more_sse
        for key in screen:
            screen[key] += more_screen[key]
    assets = {k: v for k, v in weight.items() if k != "snapshot"}
    return {
        "checkins": checkins * runs,
        "runs": runs,
        "page_gzip_bytes": sum(v["gzip"] for v in assets.values()),
        "page_plain_bytes": sum(v["plain"] for v in assets.values()),
        "assets": assets,
        "snapshot_bytes": weight["snapshot"],
        "sse_ms": _percentiles(sse),
        "dom_ms": _percentiles(screen["dom"]),
        "frame_ms": _percentiles(screen["frame"]),
    }


def render(result: dict[str, Any]) -> str:
    """Return the web section of docs/benchmarks.md."""
    rows = "\n".join(
        f"| `{path}` | {sizes['gzip']:,} | {sizes['plain']:,} |"
        for path, sizes in result["assets"].items()
    )
    sse, dom, frame = result["sse_ms"], result["dom_ms"], result["frame_ms"]
    return f"""## Desk page: weight and update latency

`python bench/web.py --write docs/benchmarks.md`, {machine()}.

The page is served from memory, gzip'd once at start; a browser that has it revalidates
with its ETag (304, no body). No framework, no font or image files beyond a 0.3 kB icon.

| asset | bytes sent (gzip) | bytes |
| --- | --- | --- |
{rows}
| **the whole page** | **{result["page_gzip_bytes"]:,}** | {result["page_plain_bytes"]:,} |

On connect the stream sends a snapshot of {result["snapshot_bytes"]:,} bytes (an empty day;
it grows with the list, at most 50 events); then each change is one small message.

Latency of a check-in, {result["checkins"]} check-ins per row ({result["runs"]} runs, each a fresh
daemon and browser), from the phone's adverts entering the daemon (the scanner callback's
queue) to:

| reaching | p50 (ms) | p95 (ms) | max (ms) |
| --- | --- | --- | --- |
| the "panel" Server-Sent Event at an HTTP client | {sse["p50"]} | {sse["p95"]} | {sse["max"]} |
| the panel turning green in headless Chromium (DOM) | {dom["p50"]} | {dom["p95"]} | {dom["max"]} |
| the next animation frame (on screen) | {frame["p50"]} | {frame["p95"]} | {frame["max"]} |

The issue asks for green within 2 s; `tests/test_browser.py` checks that bound on every run.
Nothing on the path polls: the advert queue, the pipeline's check-in hook and the page's
stream all push. The gateway's share is the first row; the rest is Chromium taking the
message from its network thread to the page's script and style (headless, on the same two
cores as the daemon and the driver). Not measured on a Pi: expect its slower cores to
multiply the first two rows, not the wait for the frame.
"""


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkins", type=int, default=50, help="check-ins per run")
    parser.add_argument("--runs", type=int, default=2, help="daemons and browsers started")
    parser.add_argument("--write", type=Path, help="rewrite this file's web section")
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.checkins, args.runs))
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.write:
        write_section(args.write, "web", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
