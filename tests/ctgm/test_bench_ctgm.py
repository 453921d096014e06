"""``benchmarks/bench_ctgm.py`` runs end to end (CPU, tiny pipeline); no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ctgm.py"


@pytest.mark.slow
def test_benchmark_times_every_variant(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_ctgm", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "3", "--size", "16", "--steps", "2",
                       "--rounds", "1", "--warmup", "0", "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert list(data["summary"]) == ["stock", "tar", "tar_part", "all"]
    assert data["parameters"]["all"] > data["parameters"]["tar"] > data["parameters"]["tar_part"] > 0
    for variant in bench.VARIANTS:
        (run,) = data["runs"][variant]
        assert len(run["calls_ms"]) == 2 and run["seconds"] > 0
    assert data["summary"]["stock"]["ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| all |" in table and "| tar_part |" in table and "on all 4 cross-attention sites (" in table
