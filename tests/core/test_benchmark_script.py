"""``benchmarks/bench_attention_core.py`` still runs, and its capture paths agree (CPU, tiny UNet).

No timing is asserted: the numbers only mean something on the GPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from bench_scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention_core.py"


def test_core_benchmark_runs_every_variant_on_a_tiny_unet(tmp_path, capsys):
    bench = load_script(BENCH, "bench_attention_core")
    out = tmp_path / "bench.json"
    # main() asserts that the store recorded every selected layer and that the deferred and the
    # per-layer capture paths recorded the same maps
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--rounds", "2",
                       "--warmup", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for variant in ("stock", "core", "capture", "capture_per_layer"):
        assert len(results[variant]["rounds"]) == 2 and results[variant]["ms_per_call"] > 0
    table = capsys.readouterr().out
    assert "| capture_per_layer |" in table and "Captured layers (3)" in table


def test_profile_table_counts_host_syncs(tmp_path):
    """``--profile``'s helper: a value read on the host per call shows up as one sync per call."""
    bench = load_script(BENCH, "bench_attention_core")

    class ReadsItsInput(torch.nn.Module):
        def forward(self, sample, t, encoder_hidden_states=None):
            return sample * float(sample.sum())  # one aten::_local_scalar_dense per call

    inputs = {"sample": torch.ones(2, 3), "ehs": None}
    path = tmp_path / "profile.txt"
    stats = bench.write_profile(ReadsItsInput(), inputs, torch.arange(4), 4, torch.device("cpu"), str(path), "probe")
    assert stats["syncs_per_call"] == 1.0
    assert path.read_text().startswith("probe: 4 calls;") and "aten::_local_scalar_dense" in path.read_text()
    assert bench.host_ms_per_call(ReadsItsInput(), inputs, torch.arange(4), 4, torch.device("cpu")) > 0


def test_backend_benchmark_runs_on_tiny_unets(tmp_path, capsys):
    """``benchmarks/bench_attention_backends.py`` on CPU: only SDPA runs, and the table says why."""
    path = BENCH.with_name("bench_attention_backends.py")
    bench = load_script(path, "bench_attention_backends")
    out = tmp_path / "b.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "1", "--rounds", "1",
                       "--warmup", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["xformers_problem"] == "xformers has no CPU kernels"
    assert set(data["results"]) == {"sd15", "animatediff"}
    assert all(list(r["variants"]) == ["sdpa"] for r in data["results"].values())
    assert "| animatediff | sdpa |" in capsys.readouterr().out


def test_backend_benchmark_reports_a_variant_that_cannot_run(tmp_path):
    """A reference variant that fails (diffusers' xformers processor past the grid limit, or here: no
    xformers at all) is recorded with its reason; SDPA still runs and is timed."""
    import argparse

    path = BENCH.with_name("bench_attention_backends.py")
    bench = load_script(path, "bench_attention_backends")
    args = argparse.Namespace(tiny=True, steps=1, rounds=1, warmup=1)
    res = bench.bench_model("animatediff", args, torch.device("cpu"), torch.float32, ["sdpa", "diffusers-xformers"])
    assert list(res["variants"]) == ["sdpa"] and list(res["failed"]) == ["diffusers-xformers"]
    assert res["failed"]["diffusers-xformers"] and "\n" not in res["failed"]["diffusers-xformers"]
