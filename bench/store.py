"""Store: events/s with the configured commit grouping, and fsyncs per second under load.

``python bench/store.py [--events N] [--seconds S] [--people P] [--runs K]
[--write docs/benchmarks.md]`` from the repository root.

- **burst**: ``--events`` events appended one at a time (as the pipeline appends what one
  advert decided) to an `EventStore` with its defaults (WAL, ``synchronous = full``,
  ``commit_interval_s = 1.0``, at most 500 rows buffered): events/s and commits.
- **live**: the real `Daemon` for ``--seconds``, fed in real time by a busy simulated entrance
  (``--people`` an hour, from its 10th minute on, stamped on the monotonic clock as the
  scanner stamps adverts), store defaults, no broker, no web page.

fsyncs are counted by the kernel's view, not the code's: each measured process runs under
``strace -f -ttt -e trace=fsync,fdatasync`` (seccomp filtered: only those calls stop it), and
only the calls inside the measured window are counted, so opening (migrations) and closing
are left out. SQLite in WAL mode with ``synchronous = full`` fsyncs the WAL at every commit;
checkpoints add fsyncs of the WAL and of the database. Commits are counted by wrapping
`EventStore.flush` in the measured process. Without strace the section says fsyncs were not
counted. Prints JSON; numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import config
from gateway.bench import goal, load_average, load_note, machine, verdict, write_section
from gateway.daemon import Daemon, Emit
from gateway.model import Advert, App, EventType, Platform, PresenceEvent
from gateway.simulate import Scenario, Simulation
from gateway.store import MAX_BUFFERED_ROWS, EventStore

FSYNC_GOAL_PER_S: Final = 2.0
SKIP_S: Final = 600.0
"""Start the live feed 10 minutes into the simulated hour, when the entrance is busy."""
STRACE_CALLS: Final = ("fsync", "fdatasync")


def _count_flushes() -> list[tuple[float, int]]:
    """Wrap `EventStore.flush` to record (time, rows) of every commit; return the record."""
    commits: list[tuple[float, int]] = []
    flush = EventStore.flush

    def counted(self: EventStore) -> int:
        rows = flush(self)
        if rows:
            commits.append((time.time(), rows))
        return rows

    EventStore.flush = counted  # type: ignore[method-assign]
    return commits


def _events(count: int) -> list[PresenceEvent]:
    """Return ``count`` events: entries and exits of distinct phones, as the engine makes them."""
    out = []
    for n in range(0, count, 2):
        rid = f"{n:024x}"
        for kind, at in ((EventType.ENTRY, float(n)), (EventType.EXIT, n + 30.0)):
            out.append(
                PresenceEvent(
                    kind, rid, n, at, App.BLUEZONE, Platform.ANDROID, rid, -60, 12, float(n), at
                )
            )
    return out[:count]


def burst(events: int, work: Path) -> dict[str, Any]:
    """Append ``events`` events one at a time with the defaults; return rates and the window."""
    commits = _count_flushes()
    batch = _events(events)
    with EventStore.open(work / "burst.db", gateway="bench", site="bench") as store:
        start = time.time()
        started = time.perf_counter()
        for event in batch:
            store.append([event], wall=lambda at: at + 1_596_870_000, clock_synced=True)
        store.flush()
        elapsed = time.perf_counter() - started
        end = time.time()
    return {
        "events": events,
        "events_per_s": round(events / elapsed),
        "commits": len(commits),
        "window": [start, end],
    }


def live(seconds: float, people: int, work: Path) -> dict[str, Any]:
    """Run the daemon on a real-time busy entrance for ``seconds``; return what it stored."""
    commits = _count_flushes()
    cfg = config.parse(
        f'[gateway]\nid = "gw-bench"\nsite = "bench"\ndata_dir = "{work}"\n[web]\nenabled = false\n'
    )
    window: list[float] = []
    fed = 0

    async def source(emit: Emit) -> None:
        nonlocal fed
        begin = time.time() - SKIP_S
        scenario = Scenario(people=people, minutes=60, seed=1, start=begin)
        adverts = (a for a in Simulation(scenario).adverts() if a.t >= begin + SKIP_S)
        first = next(adverts)
        mono0, t0 = time.monotonic(), first.t
        window.append(time.time())
        for advert in itertools.chain((first,), _until(adverts, t0 + seconds)):
            delay = mono0 + (advert.t - t0) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            emit(advert._replace(t=time.monotonic()))
            fed += 1
        await asyncio.sleep(max(0.0, mono0 + seconds - time.monotonic()))
        window.append(time.time())

    daemon = Daemon(cfg, source)
    code = asyncio.run(daemon.run())
    if code != 0:
        msg = f"the daemon exited {code}"
        raise RuntimeError(msg)
    inside = [(at, rows) for at, rows in commits if window[0] <= at <= window[1]]
    return {
        "seconds": seconds,
        "people_per_hour": people,
        "adverts": fed,
        "events": sum(rows for _, rows in inside),
        "commits": len(inside),
        "window": window,
    }


def _until(adverts: Iterator[Advert], end: float) -> Iterator[Advert]:
    """Yield adverts up to time ``end`` (lazily: generated while the daemon runs)."""
    for advert in adverts:
        if advert.t > end:
            return
        yield advert


def _spawn(kind: str, *args: str, work: Path) -> dict[str, Any]:
    """Run a measurement in a fresh process, under strace when there is one."""
    cmd = [sys.executable, __file__, "--child", kind, *args, str(work)]
    trace = work / f"{kind}.strace"
    strace = shutil.which("strace")
    if strace is not None:
        calls = ",".join(STRACE_CALLS)
        cmd = [strace, "-f", "-ttt", "--seccomp-bpf", "-e", f"trace={calls}", "-o", str(trace)]
        cmd += [sys.executable, __file__, "--child", kind, *args, str(work)]
    out = subprocess.run(cmd, capture_output=True, check=True).stdout  # noqa: S603 - fixed
    result: dict[str, Any] = json.loads(out)
    result["fsyncs"] = _fsyncs(trace, result["window"]) if strace is not None else None
    span = result["window"][1] - result["window"][0]
    result["window_s"] = round(span, 2)
    if result["fsyncs"] is not None:
        result["fsyncs_per_s"] = round(result["fsyncs"] / span, 2) if span > 0 else None
    return result


def _fsyncs(trace: Path, window: list[float]) -> int:
    """Count the fsync/fdatasync calls strace saw inside ``window`` (Unix seconds)."""
    count = 0
    for line in trace.read_text().splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) < 3 or not parts[2].startswith(STRACE_CALLS):
            continue
        if "resumed>" in parts[2]:
            continue  # the second half of a call interrupted by another thread's line
        if window[0] <= float(parts[1]) <= window[1]:
            count += 1
    return count


def measure(events: int, seconds: float, people: int, runs: int) -> dict[str, Any]:
    """Run the burst ``runs`` times and the live run once; return medians."""
    with tempfile.TemporaryDirectory(prefix="bluezone-store-bench-") as tmp:
        bursts = []
        for i in range(runs):
            work = Path(tmp) / f"burst{i}"
            work.mkdir()
            bursts.append(_spawn("burst", str(events), work=work))
        work = Path(tmp) / "live"
        work.mkdir()
        live_run = _spawn("live", str(seconds), str(people), work=work)
        filesystem = _filesystem(Path(tmp))
    rate = statistics.median(b["events_per_s"] for b in bursts)
    counted = [b["fsyncs"] for b in bursts if b["fsyncs"] is not None]
    return {
        "strace": shutil.which("strace") is not None,
        "filesystem": filesystem,
        "burst": {
            "events": events,
            "runs": runs,
            "events_per_s": round(rate),
            "all_events_per_s": [b["events_per_s"] for b in bursts],
            "commits": bursts[0]["commits"],
            "fsyncs": round(statistics.median(counted)) if counted else None,
        },
        "live": live_run,
    }


def _filesystem(path: Path) -> str:
    """Return the filesystem type and device the store was on (``df -T``)."""
    df = shutil.which("df")
    if df is None:
        return "unknown"
    out = subprocess.run([df, "-T", str(path)], capture_output=True, text=True, check=False)  # noqa: S603
    fields = out.stdout.splitlines()[-1].split() if out.returncode == 0 else []
    return f"{fields[1]} on {fields[0]}" if len(fields) > 1 else "unknown"


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Return this section's goals and verdicts."""
    lv = result["live"]
    rate = lv.get("fsyncs_per_s")
    if rate is None:
        return [
            goal(
                f"fsyncs ≤ {FSYNC_GOAL_PER_S:.0f}/s under load",
                f"{lv['commits'] / lv['window_s']:.2f} commits/s",
                False,
                "strace is not installed, so fsyncs were not counted (apt-get install strace)",
            )
        ]
    return [
        goal(
            f"fsyncs ≤ {FSYNC_GOAL_PER_S:.0f}/s under load",
            f"{rate}/s ({lv['fsyncs']} in {lv['window_s']} s, {lv['commits']} commits)",
            rate <= FSYNC_GOAL_PER_S,
            "more commits or checkpoints than the commit interval allows",
        )
    ]


def render(result: dict[str, Any]) -> str:
    """Return the store section of docs/benchmarks.md."""
    b, lv = result["burst"], result["live"]
    fs_b = "not counted (no strace)" if b["fsyncs"] is None else f"{b['fsyncs']:,}"
    fs_l = "not counted (no strace)" if lv["fsyncs"] is None else f"{lv['fsyncs']:,}"
    per_commit = f"{b['events'] / b['commits']:.0f}" if b["commits"] else "n/a"
    g = result["goals"][0]
    why = "" if g["met"] else f" ({g['why']})"
    return f"""## Store: events/s and fsyncs

`python bench/store.py --write docs/benchmarks.md`, {machine()}. The store's file on
{result["filesystem"]}.

**Burst**: {b["events"]:,} events appended one at a time (as the pipeline appends what one
advert decided) with the defaults: WAL, `synchronous = full`, `commit_interval_s = 1.0`, at most
{MAX_BUFFERED_ROWS} rows buffered; {b["runs"]} runs, medians.

| measure | value |
| --- | --- |
| events/s, append → committed | **{b["events_per_s"]:,}** |
| commits | {b["commits"]:,} (about {per_commit} events each) |
| fsync + fdatasync calls | {fs_b} |

**Under load**: the real daemon for {lv["window_s"]} s, fed in real time by a busy simulated
entrance ({lv["people_per_hour"]:,} people an hour, from the 10th minute of the hour:
{lv["adverts"]:,} adverts, {lv["events"]:,} events committed), store defaults, no broker.

| measure | value |
| --- | --- |
| commits | {lv["commits"]:,} ({lv["commits"] / lv["window_s"]:.2f}/s) |
| fsync + fdatasync calls | {fs_l} |
| **fsyncs per second** | **{lv.get("fsyncs_per_s", "not counted")}** |

Goal ≤ {FSYNC_GOAL_PER_S:.0f} fsyncs/s under load: {verdict(g["met"])}{why}. Counted by
`strace -f -ttt --seccomp-bpf -e trace=fsync,fdatasync` on the measuring process, only the calls
inside the measured window (opening with its migrations, and closing, left out); commits by
wrapping `EventStore.flush`. With WAL and `synchronous = full`, SQLite fsyncs the WAL once per
commit; a checkpoint (every 1,000 pages of WAL) adds fsyncs of the WAL and of the database.
Commits are grouped: at most one a `commit_interval_s` (the daemon's ticker checks every second)
unless {MAX_BUFFERED_ROWS} rows are waiting, so the SD card sees about one fsync a second
however busy the entrance.
{load_note(result["load_before"], result["load_after"])}
"""


def main(argv: list[str] | None = None) -> int:
    """Measure and print JSON (or, with ``--child``, one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events in the burst")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the live run")
    parser.add_argument("--people", type=int, default=2700, help="simulated people an hour")
    parser.add_argument("--runs", type=int, default=3, help="bursts to take the median of")
    parser.add_argument("--write", type=Path, help="rewrite this file's store section")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "burst":
            out = burst(int(rest[0]), Path(rest[1]))
        else:
            out = live(float(rest[0]), int(rest[1]), Path(rest[2]))
        sys.stdout.write(json.dumps(out) + "\n")
        return 0
    before = load_average()
    result = measure(args.events, args.seconds, args.people, args.runs)
    result.update(load_before=before, load_after=load_average())
    result["goals"] = goals(result)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    if args.write:
        write_section(args.write, "store", render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
