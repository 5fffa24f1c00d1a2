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
