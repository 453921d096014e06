"""``benchmarks/bench_realcustom.py`` runs end to end on tiny SDXL-shaped models (CPU); no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_realcustom.py"


def test_benchmark_runs_every_variant_with_the_expected_unet_rows(tmp_path, capsys):
    bench = load_script(BENCH, "bench_realcustom")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "3", "--rounds", "1",
                       "--anchor-calls", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    # rows per run: plain 2 per step; RealCustom: step 0 one text-only call (1 row: the first mask and
    # eps_T) and one of 2 rows; then 3 rows per call while the call reads the next step's mask
    # (release: 2 rows once it does not: the last step, or from the middle step on; paper keeps
    # its text-only rows for the guidance; the conditional mask read needs no text-only rows)
    expected = {"plain": (3, 6), "release": (4, 1 + 2 + 3 + 2), "release_reuse": (4, 1 + 2 + 2 + 2),
                "release_condmask": (4, 1 + 2 + 2 + 2), "release_condmask_reuse": (4, 1 + 2 + 2 + 2),
                "paper": (4, 1 + 2 + 3 + 3), "paper_reuse": (4, 1 + 2 + 3 + 3)}
    layers = 8  # cross-attention layers of the tiny SDXL-shaped UNet
    for name, (calls, rows) in expected.items():
        r = results[name]
        assert (r["unet_calls"], r["unet_rows"]) == (calls, rows), name
        assert r["ms_per_run"] > 0
        reads = 0 if name == "plain" else (1 if name.endswith("_reuse") else 2)  # step 0's call, step 1's
        # word maps of one row per layer and read (not of every row of the call)
        assert r["word_maps"] == reads * layers, name
        # one visual attention call per layer and call with image rows (the release's two blocks as one)
        assert r["visual_attention"] == (0 if name == "plain" else 3 * layers), name
        assert r["encoder_calls"] == {"plain": 0, "paper": 1, "paper_reuse": 1}.get(name, 2), name
    # the visual branch runs on the zero-image and subject rows in release mode (all image tokens), on
    # the subject rows in paper mode (the scoring module's top gamma_num = 0.8 of the tokens)
    tokens = 16  # the tiny SigLIP: 32 px / patch 8
    kept = int(0.8 * tokens)
    assert results["release"]["visual_flops"] == results["release_condmask"]["visual_flops"] > 0
    assert results["release"]["visual_flops"] * kept == 2 * tokens * results["paper"]["visual_flops"]
    assert results["plain"]["flop_ratio"] == 1.0
    assert results["release_condmask"]["flop_ratio"] < results["release"]["flop_ratio"] < results["paper"]["flop_ratio"]
    assert results["unet_tflop_per_row"] > 0
    # one profiled step per variant: RealCustom's step issues more operators than plain CFG's, the
    # step that reads the next mask more than the one that reuses it
    ops = {name: (results[name]["aten_ops_per_step"], results[name]["top_level_ops_per_step"]) for name in expected}
    assert all(0 < top < total for total, top in ops.values()), ops
    assert ops["plain"][1] < ops["release_reuse"][1] < ops["release"][1], ops
    assert "| release_reuse |" in capsys.readouterr().out


def test_benchmark_profile_option_profiles_each_variant_once(tmp_path, capsys):
    bench = load_script(BENCH, "bench_realcustom")
    out, prof = tmp_path / "bench.json", tmp_path / "prof"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--rounds", "1",
                       "--anchor-calls", "1", "--variants", "release_reuse", "--json", str(out),
                       "--profile", str(prof)]) == 0
    results = json.loads(out.read_text())
    for name in ("plain", "release_reuse"):
        p = results[name]["profile"]
        assert 0 < p["host_ms"] <= p["wall_ms"], name
        assert p["kernel_ms"] is None and p["kernel_launches"] is None, name  # no CUDA on this machine
    text = (prof / "realcustom_profile.md").read_text()
    assert "### plain" in text and "### release_reuse" in text and "no CUDA kernels recorded" in text
    assert "| release_reuse |" in capsys.readouterr().out.split("Profiled runs")[1]


def test_benchmark_variant_subset_and_unknown_variant(tmp_path):
    bench = load_script(BENCH, "bench_realcustom")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--rounds", "1",
                       "--anchor-calls", "1", "--variants", "release_condmask", "--json", str(out)]) == 0
    assert set(json.loads(out.read_text())) == {"plain", "release_condmask", "anchors_ms", "unet_tflop_per_row"}
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--device", "cpu", "--variants", "nope"])


def test_kernel_accounting_sums_cuda_kernels_per_unit_and_ranks_them():
    """``benchmarks/profiling.py`` (shared with bench_dpl): only CUDA events count, divided by ``per``."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCH.parent))
    from profiling import kernel_table, kernel_times

    def event(name, device, us):
        return SimpleNamespace(name=name, device_type=f"DeviceType.{device}",
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event("gemm", "CUDA", 3000), event("gemm", "CUDA", 1000), event("softmax", "CUDA", 1000),
              event("aten::mm", "CPU", 9000)]
    kernels = kernel_times(events, per=2)
    assert kernels == {"gemm": [2.0, 1.0], "softmax": [0.5, 0.5]}
    rows = kernel_table(kernels, "run")
    assert rows[2] == "| `gemm` | 2.00 | 1 | 80.0% |" and rows[3] == "| `softmax` | 0.50 | 0 | 20.0% |"
