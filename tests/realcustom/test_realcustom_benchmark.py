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
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "3", "--rounds", "1",
                       "--anchor-calls", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    # rows per run: plain 2 per step; RealCustom: step 0 one text-only call (1 row: the first mask and
    # eps_T) and one of 2 rows; then 3 rows per call while the call reads the next step's mask
    # (release: 2 rows once it does not: the last step, or from the middle step on; paper keeps
    # its text-only rows for the guidance)
    expected = {"plain": (3, 6), "release": (4, 1 + 2 + 3 + 2), "release_reuse": (4, 1 + 2 + 2 + 2),
                "paper": (4, 1 + 2 + 3 + 3), "paper_reuse": (4, 1 + 2 + 3 + 3)}
    for name, (calls, rows) in expected.items():
        assert (results[name]["unet_calls"], results[name]["unet_rows"]) == (calls, rows), name
        assert results[name]["ms_per_run"] > 0
    assert "| release_reuse |" in capsys.readouterr().out
