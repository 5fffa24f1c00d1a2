"""Benchmarks: ``python -m gateway.bench [--all] [--write docs/benchmarks.md]``.

Without ``--all``: replay (parse → decode → presence → SQLite) of a simulated capture of about
``--adverts`` adverts, as a separate process per run, the way an operator runs it; prints
medians. With ``--all``: that, then every script in ``bench/`` (pipeline breakdown and profile,
scaling, store, sync, latency, Theengs side by side, scanner, desk page, central), each
rewriting its own section of the Markdown file, and a summary of the goals at its top with the
machine's load before and after. Numbers, not assertions: the test suite only runs these on
tiny inputs so that they cannot rot.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from gateway import __version__

ADVERTS_PER_PERSON_HOUR: Final = 370
"""About what one simulated person contributes in a 60-minute run (measured: 110k / 300)."""

BUSY_MINUTES: Final = 18
"""The replay's capture packs its people into this many minutes: a busy entrance, where the
engine tracks about 300 devices at once (measured: 273 on average for 2,702 people)."""

ADVERTS_PER_PERSON_BUSY: Final = 340
"""What one person contributes in that run (measured: 916,654 / 2,702; the last arrivals are
cut short)."""

BENCH_DIR: Final = Path(__file__).resolve().parent.parent / "bench"
"""The benchmark scripts of a checkout (not installed with the package)."""

SCRIPTS: Final = (
    "pipeline",
    "scaling",
    "store",
    "sync",
    "latency",
    "theengs",
    "scanner",
    "web",
    "central",
)
"""``bench/<name>.py`` in the order ``--all`` runs them; each owns the section ``name``."""

SMOKE_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "pipeline": ("--adverts", "3000"),
    "scaling": ("--sizes", "20,60", "--adverts", "3000", "--newcomers", "4"),
    "store": ("--events", "600", "--seconds", "3", "--people", "600"),
    "sync": ("--events", "400"),
    "latency": ("--phones", "3"),
    "theengs": ("--adverts", "1500", "--minutes", "3", "--warmup", "100"),
    "scanner": ("--adverts", "300"),
    "web": ("--checkins", "2"),
    "central": ("--gateways", "2", "--events", "200"),
}
"""Tiny inputs for each script (``--smoke``, and the smoke tests): seconds, not minutes."""

GOAL_ADVERTS_PER_S: Final = 100_000
"""Issue 9: the pipeline takes at least this many adverts a second on one core here."""

BUSY_LOAD: Final = 0.5
"""A 1-minute load average above this before a run means other work was using the CPUs."""


def _run(*args: str) -> tuple[dict[str, Any], float]:
    """Run the CLI; return its JSON output and that child's own peak RSS in MiB.

    The child is reaped with ``os.wait4``, whose usage is the child's alone: RUSAGE_CHILDREN
    would report the largest of every child so far (the simulation before the replays).
    """
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI, fixed arguments
            [sys.executable, "-m", "gateway", *args], stdout=subprocess.PIPE, stderr=errors
        )
        stdout = process.stdout
        if stdout is None:  # cannot happen with stdout=PIPE; says so to the type checker
            msg = "no pipe from the child"
            raise RuntimeError(msg)
        with stdout:
            out = stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            tail = errors.read()[-2000:].decode(errors="replace")
            msg = f"bluezone-gateway {args[0]} failed (exit {process.returncode}): {tail}"
            raise RuntimeError(msg)
    return (orjson.loads(out) if out.strip() else {}), usage.ru_maxrss / 1024


def simulate_capture(
    adverts: int,
    work: Path,
    *,
    minutes: int = BUSY_MINUTES,
    seed: int = 1,
    name: str = "capture",
    per_person: int = ADVERTS_PER_PERSON_BUSY,
) -> tuple[Path, int, float]:
    """Write a simulated capture of about ``adverts`` adverts; return it, its people, seconds.

    A person contributes about ``per_person`` adverts, whatever the length of the run, so
    ``minutes`` sets how busy the entrance is, not the size.
    """
    people = max(10, adverts // per_person)
    capture = work / f"{name}.jsonl"
    started = time.perf_counter()
    _run(
        "simulate",
        "--people",
        str(people),
        "--minutes",
        str(minutes),
        "--seed",
        str(seed),
        "--out",
        str(capture),
        "--truth",
        str(work / f"{name}-truth.jsonl"),
    )
    return capture, people, time.perf_counter() - started


def bench(adverts: int, runs: int, work: Path, capture: Path | None = None) -> dict[str, Any]:
    """Replay a simulated capture of about ``adverts`` adverts ``runs`` times.

    ``capture`` is one `simulate_capture` wrote already; by default a new one is simulated.
    """
    if capture is None:
        capture, people, simulate_s = simulate_capture(adverts, work)
    else:
        people, simulate_s = max(10, adverts // ADVERTS_PER_PERSON_BUSY), 0.0
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
        "replay_adverts_per_cpu_s": round(n / statistics.median(s["cpu_s"] for s in summaries)),
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


def write_section(path: Path, name: str, body: str, *, first: bool = False) -> None:
    """Replace the ``name`` section of a Markdown file (between its markers), or add it.

    Each benchmark script owns one section, so that running one leaves the others' numbers.
    A new section goes at the end, or with ``first`` right after the file's title.
    """
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    elif first:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{block}\n{rest.lstrip(chr(10))}"
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text, encoding="utf-8")


def machine() -> str:
    """Return a one-line description of this machine."""
    return f"{_machine()}; {time.strftime('%Y-%m-%d', time.gmtime())}"


def load_average() -> tuple[float, float, float]:
    """Return the 1, 5 and 15-minute load averages (what ``uptime`` shows)."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def load_note(before: Sequence[float], after: Sequence[float]) -> str:
    """Say how busy the machine was around a run, for the text next to its numbers."""
    cpus = os.cpu_count() or 1
    text = (
        f"Load average (1/5/15 min) before the run {before[0]} / {before[1]} / {before[2]}, "
        f"after it {after[0]} / {after[1]} / {after[2]}, on {cpus} CPUs"
    )
    if before[0] > BUSY_LOAD:
        return (
            text + ": **the machine was busy with other work** when the run started, so these "
            "numbers are lower (times longer) than on an idle machine."
        )
    return text + ": the machine was otherwise idle."


def peak_rss_mib() -> float:
    """Return this process's peak resident set size in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def goal(what: str, measured: str, met: bool | None, why: str = "") -> dict[str, Any]:
    """Return one goal's verdict as the scripts print it (``goals`` in their JSON).

    ``met`` is None when the benchmark could not run; ``why`` says why a goal was not met.
    """
    return {"goal": what, "measured": measured, "met": met, "why": why}


def verdict(met: bool | None) -> str:
    """Return the Markdown for a goal's verdict (None: the benchmark could not run)."""
    if met is None:
        return "**not run**"
    return "**met**" if met else "**not met**"


def render(result: dict[str, Any], runs: int) -> str:
    """Return the replay section of docs/benchmarks.md."""
    ok = result["replay_adverts_per_cpu_s"] >= GOAL_ADVERTS_PER_S
    saturation = (
        "A Pi's controller delivers at most a few thousand advert reports a second, so this leaves "
        "a weak Pi far from saturation."
        if ok
        else "Below the goal here; but see the pipeline section for the gateway's own path "
        "(live, nothing is parsed) and the load note."
    )
    return f"""## Replay: parse → decode → presence → SQLite, one core

`python -m gateway.bench --write docs/benchmarks.md` (bluezone-gateway {__version__}),
{machine()}. A Raspberry Pi Zero 2 W is roughly 8-10× slower per core.

A simulated busy entrance
(`simulate --people {result["people"]} --minutes {BUSY_MINUTES} --seed 1`):
{result["adverts"]:,} adverts, {result["capture_mib"]} MiB of capture,
{result["events"].get("entry", 0):,} entries and {result["events"].get("exit", 0):,} exits (the
pipeline section says how many devices the engine tracks at once).
Each run is a fresh `bluezone-gateway replay CAPTURE --db NEW.db --json` process; {runs} runs.

| measure | value |
| --- | --- |
| adverts/s (median) of wall time | {result["replay_adverts_per_s"]:,} |
| adverts per CPU second (median): one core's rate | **{result["replay_adverts_per_cpu_s"]:,}** |
| wall time per run (s) | {", ".join(f"{w:.2f}" for w in result["replay_wall_s"])} |
| CPU seconds per 100k adverts (median) | {result["cpu_s_per_100k"]} |
| peak RSS of a replay process (MiB) | {result["peak_rss_mib"]} |

Goal ≥ 100,000 adverts/s on one core: {verdict(ok)}, judged on CPU time (what one core does,
whatever else the machine runs; the wall rate equals it on an idle machine). {saturation}
{load_note(result["load_before"], result["load_after"])}
"""


def _replay_goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rate = result["replay_adverts_per_cpu_s"]
    return [
        goal(
            "replay ≥ 100,000 adverts/s on one core",
            f"{rate:,} per CPU second ({result['replay_adverts_per_s']:,}/s of wall time)",
            rate >= GOAL_ADVERTS_PER_S,
            "replay also parses every capture line (JSON), which the live gateway never does:"
            " see the pipeline section for its own path",
        )
    ]


def _sync_goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = result["ratio"]
    return [
        goal(
            "outbox drain ≥ 0.8× raw paho QoS 1",
            f"{ratio}× ({result['gateway_drain_per_s']:,} vs {result['raw_paho_per_s']:,}/s)",
            ratio >= 0.8,
        )
    ]


def _uptime() -> str:
    """Return what ``uptime`` prints (the load averages if it is missing)."""
    binary = shutil.which("uptime")
    if binary is not None:
        done = subprocess.run([binary], capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode == 0:
            return done.stdout.strip()
    return "load average: " + ", ".join(str(x) for x in load_average())


def code_version() -> str:
    """Return the checkout's commit (and whether code differs from it), or the version.

    Markdown is left out of the comparison: the run itself rewrites docs/benchmarks.md.
    """
    git = shutil.which("git")
    root = str(BENCH_DIR.parent)
    if git is None:
        return f"bluezone-gateway {__version__}"
    head = subprocess.run(  # noqa: S603 - git, read-only
        [git, "-C", root, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return f"bluezone-gateway {__version__}"
    changed = subprocess.run(  # noqa: S603 - git, read-only
        [git, "-C", root, "status", "--porcelain", "--untracked-files=no", "--", ":!*.md"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if changed else "")


def _script(name: str, args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """Run ``bench/<name>.py``; return its JSON result (stderr passes through)."""
    path = BENCH_DIR / f"{name}.py"
    if not path.exists():
        msg = f"{path} is missing: --all runs the scripts of a checkout"
        raise SystemExit(msg)
    cmd = [sys.executable, str(path), *extra]
    if args.smoke:
        cmd += [*SMOKE_ARGS.get(name, ()), "--runs", "1"]
    elif args.runs is not None:
        cmd += ["--runs", str(args.runs)]
    if args.write is not None:
        cmd += ["--write", str(args.write)]
    sys.stderr.write(f"gateway.bench: {' '.join(cmd[1:])}\n")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)  # noqa: S603 - our scripts
    if done.returncode != 0:
        msg = f"bench/{name}.py failed (exit {done.returncode})"
        raise SystemExit(msg)
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def render_summary(
    rows: list[tuple[str, dict[str, Any]]],
    uptime: tuple[str, str],
    command: str,
    kept: Sequence[str] = (),
    code: tuple[str, str] = ("", ""),
) -> str:
    """Return the summary section: the command, the load, and every goal with its verdict.

    ``kept`` are table rows of an earlier run for the benchmarks this run left out.
    """
    lines = [
        f"| {g['goal']} | {g['measured']} | {verdict(g['met'])}"
        f"{' — ' + g['why'] if g['why'] and not g['met'] else ''} | {section} |"
        for section, g in rows
    ]
    ran = list(dict.fromkeys(section for section, _ in rows))
    order = {name: i for i, name in enumerate(("replay", *SCRIPTS))}
    lines = sorted([*lines, *kept], key=lambda line: order.get(_row_section(line), len(order)))
    table = "\n".join(lines) or "| (no goals measured) | | | |"
    scope = (
        f"\nThis run measured {', '.join(ran)}; the other rows are from an earlier run.\n"
        if kept
        else ""
    )
    if code[0] == code[1]:
        measured = f"Measured code: {code[0]}."
    else:
        measured = (
            f"**The code changed during the run**: {code[0]} at its start, {code[1]} at its end."
        )
    return f"""Reproduce every number below with one command from a checkout (about 25 minutes here;
the Theengs section needs Theengs Gateway in a venv of its own, see README's Development):

```sh
{command}
```

It runs each benchmark several times, prints medians as JSON, and rewrites each section of
this file (`<!-- bench:NAME -->` markers: each script owns one, so `python bench/NAME.py
--write docs/benchmarks.md` redoes one section alone). Numbers come from the scripts, never
typed by hand. A Raspberry Pi Zero 2 W is roughly 8-10× slower per core than this machine:
{machine()}.

{measured}

`uptime` before: `{uptime[0]}`
`uptime` after: `{uptime[1]}`
{scope}
## Goals

| goal | measured | verdict | section (`bench:NAME` below) |
| --- | --- | --- | --- |
{table}
"""


def _row_section(line: str) -> str:
    """Return the section a summary table row names (its last cell)."""
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return cells[-1] if cells else ""


def _kept_rows(path: Path, ran: set[str]) -> list[str]:
    """Return the summary rows of ``path`` for benchmarks not in ``ran`` (an ``--only`` run)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    start, end = "<!-- bench:summary -->", "<!-- /bench:summary -->"
    if start not in text or end not in text:
        return []
    block = text.split(start, 1)[1].split(end, 1)[0]
    known = {"replay", *SCRIPTS}
    return [
        line
        for line in block.splitlines()
        if line.startswith("| ") and _row_section(line) in known - ran
    ]


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run the replay and the selected scripts; write the summary; return every result."""
    selected = [name for name in SCRIPTS if _wanted(name, args)]
    uptime_before, code_before = _uptime(), code_version()
    results: dict[str, Any] = {}
    rows: list[tuple[str, dict[str, Any]]] = []
    capture: Path | None = None
    if _wanted("replay", args):
        adverts = 4000 if args.smoke else args.adverts
        capture, _, _ = simulate_capture(adverts, work)
        before = load_average()
        replay = bench(adverts, 1 if args.smoke else args.runs or 3, work, capture)
        replay.update(load_before=before, load_after=load_average())
        results["replay"] = replay
        rows += [("replay", g) for g in _replay_goals(replay)]
        if args.write is not None:
            write_section(args.write, "replay", render(replay, 1 if args.smoke else args.runs or 3))
    for name in selected:
        extra: list[str] = []
        if name == "pipeline" and capture is not None and not args.smoke:
            extra = ["--capture", str(capture)]
        if name == "theengs" and args.theengs_python is not None:
            extra = ["--theengs-python", str(args.theengs_python)]
        result = _script(name, args, extra)
        results[name] = result
        goals = _sync_goals(result) if name == "sync" else result.get("goals", [])
        rows += [(name, g) for g in goals]
    command = "python -m gateway.bench --all --write docs/benchmarks.md"
    if args.write is not None:
        kept = _kept_rows(args.write, set(results))
        body = render_summary(
            rows, (uptime_before, _uptime()), command, kept, (code_before, code_version())
        )
        write_section(args.write, "summary", body, first=True)
    return results


def _wanted(name: str, args: argparse.Namespace) -> bool:
    if args.only and name not in args.only:
        return False
    return name not in (args.skip or [])


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - {"replay", *SCRIPTS})
    if unknown:
        msg = f"unknown benchmark {unknown[0]!r} (known: replay, {', '.join(SCRIPTS)})"
        raise argparse.ArgumentTypeError(msg)
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; print the results; optionally rewrite the Markdown file."""
    parser = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__)
    parser.add_argument(
        "--adverts",
        type=int,
        default=1_000_000,
        help="size of the simulated capture (default: %(default)s)",
    )
    parser.add_argument(
        "--runs", type=int, help="runs to take the median of (default: 3; each script's own)"
    )
    parser.add_argument("--write", type=Path, help="rewrite this Markdown file")
    parser.add_argument(
        "--all", action="store_true", help="also run every bench/ script and write the summary"
    )
    parser.add_argument(
        "--only", type=_names, help="with --all: only these, comma-separated (replay, pipeline…)"
    )
    parser.add_argument("--skip", type=_names, help="with --all: all but these")
    parser.add_argument(
        "--smoke", action="store_true", help="with --all: tiny inputs, one run (checks plumbing)"
    )
    parser.add_argument(
        "--theengs-python",
        type=Path,
        help="with --all: the Python of a venv with theengsgateway (bench/theengs.py's default)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bluezone-bench-") as tmp:
        if args.all:
            result = run_all(args, Path(tmp))
        else:
            before = load_average()
            result = bench(args.adverts, args.runs or 3, Path(tmp))
            result.update(load_before=before, load_after=load_average())
            if args.write:
                write_section(args.write, "replay", render(result, args.runs or 3))
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
