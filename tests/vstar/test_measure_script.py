"""``benchmarks/measure_broadway_vstar.py``: its sequential prompts, and one end-to-end run on a tiny
random SD folder with a tiny random motion adapter. Its per-frame text is the text-to-video
pipeline's prompt schedule (anchors, interpolation and the UNet's layout: ``tests/video``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter

import tiny_models as tm
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "measure_broadway_vstar.py"


@pytest.fixture(scope="module")
def measure():
    module = load_script(SCRIPT, "measure_broadway_vstar")
    return module


def test_sequential_prompts_have_an_object_doing_two_things(measure):
    from attncraft.shapes.captions import parse_caption

    prompts = measure.sequential_prompts(5)
    assert len(prompts) == 5 and measure.sequential_prompts(3) == prompts[:3]
    assert all(any(len(o.motions) == 2 for o in parse_caption(p).objects) for p in prompts)


@pytest.mark.slow
def test_measurement_runs_end_to_end_on_a_tiny_random_adapter(measure, tmp_path, capsys):
    tm.sd_pipeline().save_pretrained(tmp_path / "sd")
    torch.manual_seed(0)
    MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=2,
                  motion_num_attention_heads=4).save_pretrained(tmp_path / "adapter")  # fmt: skip
    out = tmp_path / "out"
    assert measure.main(["--adapter", str(tmp_path / "adapter"), "--model", str(tmp_path / "sd"), "--out", str(out),
                         "--count", "2", "--frames", "4", "--size", "32", "--steps", "2", "--batch", "2",
                         "--device", "cpu", "--guidance", "5", "--broadway-steps", "1"]) == 0  # fmt: skip
    results = json.loads((out / "measure_broadway_vstar.json").read_text())
    assert list(results["broadway"]) == ["plain", "broadway"]
    assert list(results["vstar"]) == ["plain", "synopsis", "tar", "synopsis+tar"]
    for table in ("broadway", "vstar"):
        for row in results[table].values():
            assert row["means"]["n"] == 2 and len(row["scores"]) == 2 and "motion_amount" in row["scores"][0]
    plain, edited = results["broadway"]["plain"], results["broadway"]["broadway"]
    assert plain["energy_before"] == plain["energy_after"] and edited["energy_after"] >= edited["energy_before"] * (1 - 1e-6)
    assert plain["energy_before"] == pytest.approx(edited["energy_before"], rel=0.05)  # unedited maps: close
    assert results["settings"]["broadway"]["num_active_steps"] == 1
    assert results["settings"]["broadway"]["reference_block"] == 0  # two up blocks: the model's default
    assert all(len(states) >= 2 for states in results["vstar_states"])
    assert (out / "examples.png").is_file()
    table = (out / "measure_broadway_vstar.md").read_text()
    assert "| synopsis+tar | 2 |" in table and "| broadway | 2 |" in table
    assert table.strip() in capsys.readouterr().out
