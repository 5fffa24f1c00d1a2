"""The benchmark runs on a tiny input, so that it cannot rot (its numbers are not judged)."""

from __future__ import annotations

from gateway import bench


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    assert bench.main(["--adverts", "4000", "--runs", "1", "--write", str(out)]) == 0
    text = out.read_text()
    assert "adverts/s (median)" in text
    assert '"replay_adverts_per_s"' in capsys.readouterr().out
