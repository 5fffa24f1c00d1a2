"""The benchmark runs on a tiny input, so that it cannot rot (its numbers are not judged)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import bench


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    assert bench.main(["--adverts", "4000", "--runs", "1", "--write", str(out)]) == 0
    text = out.read_text()
    assert "adverts/s (median)" in text
    assert '"replay_adverts_per_s"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("script", "size", "key"),
    [("scanner.py", ["--adverts", "300"], "into_callback_per_s"),
     ("sync.py", ["--events", "400"], "gateway_drain_per_s"),
     ("web.py", ["--checkins", "2"], "page_gzip_bytes")],
)  # fmt: skip
def test_bench_script_smoke(tmp_path, script, size, key):
    out = tmp_path / "benchmarks.md"
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "bench" / script), *size, "--runs", "1", "--write", str(out)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert json.loads(result.stdout)[key] > 0
    assert f"<!-- bench:{script.removesuffix('.py')} -->" in out.read_text()


ROOT = Path(__file__).resolve().parent.parent


def _script(name, tmp_path, *extra):
    """Run bench/<name>.py on its tiny input; return its JSON and the Markdown it wrote."""
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), *bench.SMOKE_ARGS[name],
         "--runs", "1", "--write", str(out), *extra],
        capture_output=True, text=True, check=True, timeout=180,
    )  # fmt: skip
    text = out.read_text()
    assert text.count(f"<!-- bench:{name} -->") == 1
    assert text.count(f"<!-- /bench:{name} -->") == 1
    return json.loads(result.stdout), text


def _check_goals(result, text):
    assert result["goals"]
    for goal in result["goals"]:
        assert set(goal) == {"goal", "measured", "met", "why"}
        assert goal["met"] in (True, False, None)
    assert "Load average (1/5/15 min)" in text


@pytest.mark.parametrize(
    ("name", "check"),
    [("pipeline", lambda r: r["stages"]["store"]["cpu_us_per_advert"] > 0 and r["profile"]),
     # 20 and 60 phones, then 4 newcomers twice (away from and after a quarter hour)
     ("scaling", lambda r: [s["tracked"] for s in r["sizes"]] == [28, 68]
      and all(s["rotation_key_ms_p50"] > 0 for s in r["sizes"]) and r["memory"]["top"]),
     ("store", lambda r: r["burst"]["events_per_s"] > 0 and r["burst"]["commits"] >= 2
      and r["live"]["adverts"] > 0),
     ("latency", lambda r: all(v["puback_ms"]["p50"] > 0 for v in r["variants"]))],
)  # fmt: skip
def test_new_bench_script_smoke(tmp_path, name, check):
    result, text = _script(name, tmp_path)
    assert check(result)
    _check_goals(result, text)


def test_theengs_bench_says_not_run_without_theengs(tmp_path):
    result, text = _script("theengs", tmp_path, "--theengs-python", str(tmp_path / "nothing"))
    assert result["theengs"] is None
    assert "does not exist" in result["not_run_reason"]
    assert [g["met"] for g in result["goals"]] == [None, None]
    assert "**Theengs Gateway: not run.**" in text
    assert result["ours"]["messages"] > 0  # this gateway's side ran all the same
    _check_goals(result, text)


def test_theengs_bench_side_by_side(tmp_path):
    """With Theengs in its venv both sides run; without it, the section says why not."""
    result, text = _script("theengs", tmp_path)
    _check_goals(result, text)
    if result["not_run_reason"] is None:
        theirs = result["theengs"]
        assert theirs["messages"] > 0
        assert theirs["cpu_us_per_advert"] > 0
        assert theirs["queue_empty"]
        assert result["cpu_ratio"] > 0
        assert "| CPU µs |" in text
    else:
        assert result["theengs"] is None
        assert "not run" in text


def test_every_bench_script_runs_with_all():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(bench.SCRIPTS)
    assert set(bench.SMOKE_ARGS) == set(bench.SCRIPTS)


def test_bench_all_writes_the_summary_first(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\n<!-- bench:other -->\nkept\n<!-- /bench:other -->\n")
    argv = ["--all", "--smoke", "--only", "replay,store", "--write", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert text.index("<!-- bench:summary -->") < text.index("<!-- bench:other -->")
    assert "python -m gateway.bench --all --write docs/benchmarks.md" in text
    assert "`uptime` before:" in text
    assert "Measured code: " in text or "The code changed during the run" in text
    assert "| replay ≥ 100,000 adverts/s on one core |" in text
    assert "fsyncs ≤ 2/s under load" in text
    assert "<!-- bench:replay -->" in text
    assert "<!-- bench:store -->" in text
    assert "kept" in text
    results = json.loads(capsys.readouterr().out)
    assert set(results) == {"replay", "store"}
    # Another run of some benchmarks keeps the other rows of the summary.
    assert bench.main(["--all", "--smoke", "--only", "store", "--write", str(out)]) == 0
    text = out.read_text()
    assert "| replay ≥ 100,000 adverts/s on one core |" in text
    assert text.count("| fsyncs ≤ 2/s under load |") == 1  # replaced, not added again
    assert "This run measured store; the other rows are from an earlier run." in text


def test_the_measured_code_is_the_commit_and_the_markdown_it_rewrites_does_not_count(
    tmp_path, monkeypatch
):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "bench").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "benchmarks.md").write_text("# Benchmarks\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "bench")
    assert bench.code_version().startswith("commit ")
    (tmp_path / "docs" / "benchmarks.md").write_text("# Benchmarks, rewritten by the run\n")
    assert not bench.code_version().endswith("with uncommitted changes")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert bench.code_version().endswith("with uncommitted changes")
