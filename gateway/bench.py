"""Benchmarks: ``python -m gateway.bench [--adverts N] [--runs K] [--write docs/benchmarks.md]``.

Measures replay (parse → decode → presence → SQLite) of a simulated capture of about N adverts
as a separate process per run, the way an operator runs it, and prints medians. Numbers, not
assertions: the test suite only runs this on a tiny input so it cannot rot.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import orjson

from gateway import __version__

ADVERTS_PER_PERSON_HOUR: Final = 370
"""About what one simulated person contributes in a 60-minute run (measured: 110k / 300)."""


def _run(*args: str) -> tuple[dict[str, Any], float]:
    """Run the CLI; return its JSON output and the child's peak RSS in MiB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run(  # noqa: S603 - our own interpreter and CLI, fixed arguments
        [sys.executable, "-m", "gateway", *args], capture_output=True, check=True
    ).stdout
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (orjson.loads(out) if out.strip() else {}), max(peak_kib, before) / 1024


def bench(adverts: int, runs: int, work: Path) -> dict[str, Any]:
    """Simulate a capture of about ``adverts`` adverts and replay it ``runs`` times."""
    people = max(10, adverts // ADVERTS_PER_PERSON_HOUR)
    capture = work / "capture.jsonl"
    started = time.perf_counter()
    _run(
        "simulate",
        "--people",
        str(people),
        "--minutes",
        "60",
        "--seed",
        "1",
        "--out",
        str(capture),
        "--truth",
        str(work / "truth.jsonl"),
    )
    simulate_s = time.perf_counter() - started
    results = []
    for i in range(runs):
        summary, rss = _run("replay", str(capture), "--db", str(work / f"run{i}.db"), "--json")
        results.append((summary, rss))
    summaries = [s for s, _ in results]
    n = summaries[0]["adverts"]
    return {
        "adverts": n,
        "people": people,
        "capture_mib": round(capture.stat().st_size / 2**20, 1),
        "simulate_s": round(simulate_s, 2),
        "events": summaries[0]["events"],
        "replay_adverts_per_s": round(statistics.median(s["adverts_per_s"] for s in summaries)),
        "replay_wall_s": [s["wall_s"] for s in summaries],
        "cpu_s_per_100k": round(statistics.median(s["cpu_s"] for s in summaries) / n * 100_000, 3),
        "peak_rss_mib": round(max(rss for _, rss in results), 1),
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the ``name`` section of a Markdown file (between its markers), or append it.

    Each benchmark script owns one section, so that running one leaves the others' numbers.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def machine() -> str:
    """Return a one-line description of this machine."""
    return f"{_machine()}; {time.strftime('%Y-%m-%d', time.gmtime())}"


def render(result: dict[str, Any], runs: int) -> str:
    """Return the replay section of docs/benchmarks.md."""
    ok = result["replay_adverts_per_s"] >= 100_000
    return f"""## Replay: parse → decode → presence → SQLite, one core

`python -m gateway.bench --write docs/benchmarks.md` (bluezone-gateway {__version__}),
{machine()}. A Raspberry Pi Zero 2 W is roughly 8-10× slower per core.

A simulated entrance (`simulate --people {result["people"]} --minutes 60 --seed 1`):
{result["adverts"]:,} adverts, {result["capture_mib"]} MiB of capture,
{result["events"].get("entry", 0):,} entries and {result["events"].get("exit", 0):,} exits.
Each run is a fresh `bluezone-gateway replay CAPTURE --db NEW.db --json` process; {runs} runs.

| measure | value |
| --- | --- |
| adverts/s (median) | **{result["replay_adverts_per_s"]:,}** |
| wall time per run (s) | {", ".join(f"{w:.2f}" for w in result["replay_wall_s"])} |
| CPU seconds per 100k adverts (median) | {result["cpu_s_per_100k"]} |
| peak RSS of a replay process (MiB) | {result["peak_rss_mib"]} |

Goal ≥ 100,000 adverts/s on one core: **{"met" if ok else "not met"}**. A Pi's controller
delivers at most a few thousand advert reports a second, so this leaves a weak Pi far from
saturation.
"""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the results; optionally rewrite the Markdown file."""
    parser = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__)
    parser.add_argument(
        "--adverts",
        type=int,
        default=1_000_000,
        help="size of the simulated capture (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=3, help="replays to take the median of")
    parser.add_argument("--write", type=Path, help="rewrite this Markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bluezone-bench-") as work:
        result = bench(args.adverts, args.runs, Path(work))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    if args.write:
        write_section(args.write, "replay", render(result, args.runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
