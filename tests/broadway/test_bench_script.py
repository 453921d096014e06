"""``benchmarks/bench_broadway_vstar.py`` runs end to end (CPU, tiny pipeline); no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_broadway_vstar.py"


@pytest.mark.slow
def test_benchmark_times_every_variant_and_counts_active_steps(tmp_path, capsys):
    bench = load_script(BENCH, "bench_broadway_vstar")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "4", "--size", "32", "--steps", "5",
                       "--rounds", "1", "--warmup", "0", "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    summary = data["summary"]
    # BroadWay: floor(0.2 * 5) = 1 step; VSTAR: steps 0 .. round(0.56 * 5) - 1 = 2
    assert [summary[v]["active_steps"] for v in ("stock", "broadway", "vstar", "both")] == [0, 1, 3, 3]
    for variant in bench.VARIANTS:
        (run,) = data["runs"][variant]
        assert len(run["calls_ms"]) == 5 and run["seconds"] > 0
    table = capsys.readouterr().out
    assert "| both |" in table and "BroadWay 0..0, VSTAR 0..2 of 5" in table
