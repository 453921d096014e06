"""``benchmarks/bench_text_to_video.py`` runs both variants on tiny models (CPU); no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path
from bench_scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_text_to_video.py"


def test_text_to_video_benchmark_runs_on_tiny_models(tmp_path, capsys):
    bench = load_script(BENCH, "bench_text_to_video")
    out = tmp_path / "bench.json"
    # main() asserts that the schedule reached the UNet as (2 * frames, 77, width)
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--rounds", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for variant in ("stock", "schedule"):
        assert len(results[variant]) == 1 and results[variant][0]["ms_per_step"] > 0
    table = capsys.readouterr().out
    assert "| schedule |" in table and "frames [0, 2, 4, 7]" in table


def test_both_variants_keep_the_dtype_asked_for():
    """The benchmark's pipelines share their modules; building the second must not cast them (diffusers'
    from_pipe does, to float32, without a dtype): both run in the dtype the table reports."""
    import torch

    bench = load_script(BENCH, "bench_text_to_video")
    stock, ours = bench.build(tiny=True, device=torch.device("cpu"), dtype=torch.float16)
    for pipe in (stock, ours):
        assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float16}
    assert ours.unet is stock.unet
