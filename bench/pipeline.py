"""Pipeline breakdown: where a replay's time goes, stage by stage, and the hot path's profile.

``python bench/pipeline.py [--adverts N | --capture FILE] [--runs K] [--write docs/benchmarks.md]``
from the repository root.

The simulated capture of ``gateway.bench`` (a busy entrance: ``simulate --people N/370
--minutes 60 --seed 1``) goes through four cumulative stages, each a fresh process per run:

1. **parse**: capture lines → `Advert` (what replay adds; live, bleak's callback builds them);
2. **decode**: + `decode_advert`;
3. **presence**: + the presence engine, through `Pipeline` with the store disabled (a stand-in
   that keeps nothing);
4. **store**: + SQLite, the real `EventStore` with its defaults (WAL, ``synchronous = full``,
   commits grouped by ``commit_interval_s`` and 500 rows).

Each stage reports its CPU seconds (``process_time``), wall time and peak RSS, and how many
devices the engine tracked (sampled every second of capture time). The differences between
stages are the cost of each step. Then one more run of the store stage under cProfile gives
the top functions by own time. Prints JSON; numbers, not assertions.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import capture as capture_format
from gateway.bench import (
    goal,
    load_average,
    load_note,
    machine,
    peak_rss_mib,
    simulate_capture,
    verdict,
    write_section,
)
from gateway.decode import decode_advert
from gateway.model import PresenceEvent, PresencePolicy
from gateway.pipeline import TICK_S, Pipeline
from gateway.presence import PresenceTracker
from gateway.store import EventStore

ROOT: Final = Path(__file__).resolve().parent.parent
STAGES: Final = ("parse", "decode", "presence", "store")
PROFILE_TOP: Final = 15
PROFILE_CHUNK: Final = 50_000
"""Adverts parsed (profiler off) before they are fed (profiler on)."""
GOAL_PER_S: Final = 100_000
HEADER: Final = (
    "| stage | adverts/s (wall) | CPU s per 100k adverts | CPU µs per advert | step's own µs"
    " | peak RSS (MiB) |\n| --- | --- | --- | --- | --- | --- |"
)


class _NoStore:
    """Stands in for `EventStore` with the store disabled: takes events, keeps nothing."""

    def append(self, events: list[PresenceEvent], **_kw: Any) -> list[dict[str, Any]]:
        """Drop the events."""
        del events
        return []

    def maybe_flush(self) -> int:
        """Commit nothing."""
        return 0

    def flush(self) -> int:
        """Commit nothing."""
        return 0


def _adverts(path: Path) -> Iterator[Any]:
    """Yield the capture's adverts, parsed as replay parses them."""
    parse = capture_format.parse_line
    with path.open("rb") as lines:
        for lineno, line in enumerate(lines, 1):
            yield parse(line, lineno)


def _feed(pipeline: Pipeline, path: Path) -> tuple[int, list[int]]:
    """Feed a capture through ``pipeline`` as replay does; return adverts and tracked counts."""
    tracked: list[int] = []
    next_tick = -math.inf
    n = 0
    feed = pipeline.feed
    tracker = pipeline.tracker
    for advert in _adverts(path):
        if advert.t >= next_tick:
            pipeline.tick(advert.t)
            tracked.append(len(tracker))
            next_tick = advert.t + TICK_S
        feed(advert)
        n += 1
    pipeline.close()
    return n, tracked


def run_stage(stage: str, path: Path, work: Path) -> dict[str, Any]:
    """Run one stage over the capture in this process; return its measurements."""
    tracked: list[int] = []
    events = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if stage == "parse":
        n = sum(1 for _ in _adverts(path))
    elif stage == "decode":
        n = 0
        for n, advert in enumerate(_adverts(path), 1):  # noqa: B007 - n is the count after
            decode_advert(advert)
    else:
        store: EventStore | _NoStore
        if stage == "store":
            store = EventStore.open(work / "pipeline.db", gateway="bench", site="bench")
        else:
            store = _NoStore()
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy()),
            cast("EventStore", store),
            wall=float,
            clock_synced=lambda: True,
        )
        n, tracked = _feed(pipeline, path)
        events = sum(pipeline.counters.events.values())
        if isinstance(store, EventStore):
            store.close()
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "stage": stage,
        "adverts": n,
        "cpu_s": round(cpu_s, 3),
        "wall_s": round(wall_s, 3),
        "events": events,
        "peak_rss_mib": peak_rss_mib(),
        "tracked_mean": round(statistics.fmean(tracked)) if tracked else None,
        "tracked_max": max(tracked) if tracked else None,
    }


def profile_store(path: Path, work: Path) -> list[dict[str, Any]]:
    """Profile the store stage, parsing left out; return the top functions by own time.

    Lines are parsed in chunks with the profiler off, then fed with it on: what is profiled is
    the gateway's live path (decode → presence → store, the once-a-second tick included).
    """
    profiler = cProfile.Profile()
    with EventStore.open(work / "profile.db", gateway="bench", site="bench") as store:
        pipeline = Pipeline(
            PresenceTracker(PresencePolicy()), store, wall=float, clock_synced=lambda: True
        )
        chunk: list[Any] = []
        next_tick = -math.inf
        for advert in _adverts(path):
            chunk.append(advert)
            if len(chunk) == PROFILE_CHUNK:
                next_tick = _profiled(profiler, pipeline, chunk, next_tick)
                chunk = []
        _profiled(profiler, pipeline, chunk, next_tick)
        profiler.runcall(pipeline.close)
    stats = pstats.Stats(profiler)
    raw = cast("dict[tuple[str, int, str], tuple[int, int, float, float, Any]]", stats.stats)  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in raw.values()) or 1.0
    top = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:PROFILE_TOP]
    return [
        {
            "function": _where(filename, line, name),
            "calls": calls,
            "own_s": round(own, 3),
            "own_pct": round(100 * own / total, 1),
            "cumulative_s": round(cumulative, 3),
        }
        for (filename, line, name), (_, calls, own, cumulative, _) in top
    ]


def _profiled(
    profiler: cProfile.Profile, pipeline: Pipeline, adverts: list[Any], next_tick: float
) -> float:
    """Feed parsed adverts with the profiler on, ticking as replay does; return the next tick."""
    profiler.enable()
    for advert in adverts:
        if advert.t >= next_tick:
            pipeline.tick(advert.t)
            next_tick = advert.t + TICK_S
        pipeline.feed(advert)
    profiler.disable()
    return next_tick


def _where(filename: str, line: int, name: str) -> str:
    """Return ``gateway/presence.py:301 observe``, or the built-in's name."""
    if filename == "~":
        return name
    path = Path(filename)
    try:
        shown = str(path.resolve().relative_to(ROOT))
    except ValueError:
        shown = path.name
    return f"{shown}:{line} {name}"


def _child(stage: str, path: Path, profile: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bluezone-pipeline-bench-") as tmp:
        if profile:
            return {"profile": profile_store(path, Path(tmp))}
        return run_stage(stage, path, Path(tmp))


def _spawn(stage: str, path: Path, *, profile: bool = False) -> dict[str, Any]:
    """Run one stage in a fresh process (its own peak RSS); return its JSON."""
    cmd = [sys.executable, __file__, "--child", stage, "--capture", str(path)]
    if profile:
        cmd.append("--profile")
    out = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603 - this script
    result: dict[str, Any] = json.loads(out)
    return result


def measure(path: Path, runs: int) -> dict[str, Any]:
    """Run every stage ``runs`` times (stages interleaved); return medians and the profile."""
    samples: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
    for _ in range(runs):
        for stage in STAGES:
            samples[stage].append(_spawn(stage, path))
    stages = {}
    for stage, runs_of in samples.items():
        n = runs_of[0]["adverts"]
        cpu = statistics.median(r["cpu_s"] for r in runs_of)
        wall = statistics.median(r["wall_s"] for r in runs_of)
        stages[stage] = {
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
            "adverts_per_s": round(n / wall) if wall else None,
            "cpu_us_per_advert": round(cpu / n * 1e6, 2),
            "cpu_s_per_100k": round(cpu / n * 100_000, 3),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs_of),
            "all_cpu_s": [r["cpu_s"] for r in runs_of],
        }
    store_runs = samples["store"]
    adverts = store_runs[0]["adverts"]
    parse_cpu = stages["parse"]["cpu_s"]
    no_parse = {
        name: round(adverts / (stages[name]["cpu_s"] - parse_cpu))
        if stages[name]["cpu_s"] > parse_cpu
        else None
        for name in ("presence", "store")
    }
    return {
        "adverts": adverts,
        "runs": runs,
        "events": store_runs[0]["events"],
        "tracked_mean": store_runs[0]["tracked_mean"],
        "tracked_max": store_runs[0]["tracked_max"],
        "stages": stages,
        "without_parse_per_s": no_parse,
        "profile": _spawn("store", path, profile=True)["profile"],
    }


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return this section's goals and verdicts."""
    rate = result["without_parse_per_s"]["store"] or 0
    stored = result["stages"]["store"]
    return [
        goal(
            "decode → presence → store ≥ 100,000 adverts/s on one core",
            f"{rate:,}/s (CPU, parse excluded); {stored['cpu_s_per_100k']} CPU s per 100k"
            " with parse",
            rate >= GOAL_PER_S,
            "the engine's per-advert cost on this machine",
        )
    ]


def render(result: dict[str, Any]) -> str:
    """Return the pipeline section of docs/benchmarks.md."""
    s = result["stages"]
    rows, previous = [], 0.0
    labels = {
        "parse": "parse capture lines → `Advert`",
        "decode": "+ decode",
        "presence": "+ presence engine (store disabled)",
        "store": "+ SQLite store (the whole replay path)",
    }
    for stage in STAGES:
        us = s[stage]["cpu_us_per_advert"]
        rows.append(
            f"| {labels[stage]} | {s[stage]['adverts_per_s']:,} | {s[stage]['cpu_s_per_100k']} "
            f"| {us} | +{us - previous:.2f} | {s[stage]['peak_rss_mib']} |"
        )
        previous = us
    profile = "\n".join(
        f"| `{p['function']}` | {p['calls']:,} | {p['own_s']} | {p['own_pct']} | "
        f"{p['cumulative_s']} |"
        for p in result["profile"]
    )
    rate = result["without_parse_per_s"]
    met = (rate["store"] or 0) >= GOAL_PER_S
    rate_store = f"{rate['store']:,}" if rate["store"] else "n/a"
    rate_presence = f"{rate['presence']:,}" if rate["presence"] else "n/a"
    return f"""## Pipeline: where the time goes (store on and off), and the profile

`python bench/pipeline.py --write docs/benchmarks.md`, {machine()}.

The replay section's simulated capture ({result["adverts"]:,} adverts, {result["events"]:,}
events; the engine tracked {result["tracked_mean"]} devices on average and
{result["tracked_max"]} at most, sampled every second of capture time: the issue's busy
entrance has 300 phones in view) fed through cumulative stages, each a fresh process;
{result["runs"]} runs, medians.

{HEADER}
{chr(10).join(rows)}

Live, bleak's callback builds the `Advert` and nothing is parsed, so the gateway's own path is
the last row less the first: **{rate_store} adverts/s** of one core with the store
({rate_presence} with it disabled). Goal ≥ 100,000 adverts/s: {verdict(met)}.
{load_note(result["load_before"], result["load_after"])}

Top {PROFILE_TOP} functions by own time: the store stage under cProfile, parsing left out (lines
parsed in chunks with the profiler off), so this is the live path. cProfile adds its own
overhead to every call: compare shares, not seconds.

| function | calls | own s | own % | cumulative s |
| --- | --- | --- | --- | --- |
{profile}
"""


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON (or, with ``--child``, run one stage and print its JSON)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--adverts", type=int, default=1_000_000, help="capture size to simulate")
    parser.add_argument("--capture", type=Path, help="use this capture instead of simulating")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", type=Path, help="rewrite this file's pipeline section")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(_child(args.child, args.capture, args.profile)) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="bluezone-pipeline-bench-") as tmp:
        path = args.capture or simulate_capture(args.adverts, Path(tmp))[0]
        before = load_average()
        result = measure(path, args.runs)
        result.update(load_before=before, load_after=load_average())
    result["goals"] = goals(result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.write:
        write_section(args.write, "pipeline", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
