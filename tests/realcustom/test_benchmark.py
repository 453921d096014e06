"""``benchmarks/bench_realcustom.py`` runs end to end on tiny SDXL-shaped models (CPU); no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_realcustom.py"


def test_benchmark_runs_every_variant_with_the_expected_unet_rows(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_realcustom", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--rounds", "1",
                       "--anchor-calls", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    # rows per run: plain 2 per step; RealCustom one text-only call (1 row) for the first mask, then
    # 3 rows per call while the mask is read for the next step; release: 2 rows once it is not (the
    # last step, or from the middle step on); paper with the mask reused from step 1: step 0 takes
    # eps_T from the text-only call (2 rows), step 1 computes it (3 rows)
    expected = {"plain": (2, 4), "release": (3, 1 + 3 + 2), "release_reuse": (3, 1 + 2 + 2),
                "paper": (3, 1 + 3 + 3), "paper_reuse": (3, 1 + 2 + 3)}
    for name, (calls, rows) in expected.items():
        assert (results[name]["unet_calls"], results[name]["unet_rows"]) == (calls, rows), name
        assert results[name]["ms_per_run"] > 0
    assert "| release_reuse |" in capsys.readouterr().out
