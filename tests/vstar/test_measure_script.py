"""``benchmarks/measure_broadway_vstar.py``: per-frame text (anchors, interpolation, the UNet's
layout) and one end-to-end run on a tiny random SD folder with a tiny random motion adapter."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from diffusers import MotionAdapter

import tiny_models as tm

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "measure_broadway_vstar.py"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("measure_broadway_vstar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_states_sit_on_their_anchor_frames_and_are_linear_in_between(measure):
    states = torch.randn(3, 77, 8, dtype=torch.float64)
    frames = measure.per_frame_embeddings(states, 32)
    assert frames.shape == (32, 77, 8)
    for k, anchor in enumerate((0, 15, 31)):  # int(linspace(0, 31, 3)) truncates 15.5 to 15
        assert torch.equal(frames[anchor], states[k])
    second = frames[2:] - 2 * frames[1:-1] + frames[:-2]
    for f in range(1, 31):
        if f not in (15,):
            assert second[f - 1].abs().max() < 1e-12
    one = measure.per_frame_embeddings(states[:1], 16)
    assert torch.equal(one, states[:1].expand(16, -1, -1))


def test_per_frame_text_replaces_the_pipelines_copy_in_its_layout(measure):
    uncond, frames = torch.zeros(2, 3, 4), torch.arange(2 * 5 * 3 * 4, dtype=torch.float32).reshape(2, 5, 3, 4)
    swap = measure.PerFrameText(torch.nn.Identity(), uncond, frames, guided=True)
    _, kwargs = swap._swap(None, (), {"encoder_hidden_states": torch.ones(20, 3, 4)})
    states = kwargs["encoder_hidden_states"]
    assert torch.equal(states[:10], torch.zeros(10, 3, 4))  # uncond, every frame
    assert torch.equal(states[10 + 5 * 1 + 2], frames[1, 2])  # cond: video 1, frame 2
    with pytest.raises(RuntimeError, match="does not match"):
        swap._swap(None, (), {"encoder_hidden_states": torch.ones(10, 3, 4)})
    swap.handle.remove()


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
    assert all(len(states) >= 2 for states in results["vstar_states"])
    assert (out / "examples.png").is_file()
    table = (out / "measure_broadway_vstar.md").read_text()
    assert "| synopsis+tar | 2 |" in table and "| broadway | 2 |" in table
    assert table.strip() in capsys.readouterr().out
