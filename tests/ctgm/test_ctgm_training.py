"""Training CTGM with everything else frozen: the objective, the Shapes stage (smoke config on a tiny
random SD folder and motion adapter) and the script for any folder of captioned clips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from attncraft.attention_processors.ctgm import load_ctgm
from attncraft.shapes.captions import parse_caption
from attncraft.shapes.training import common
from attncraft.shapes.training.ctgm import is_sequential, reverse_order, train_ctgm
from attncraft.shapes.world import render_video, sample_scenes
from attncraft.video.ctgm_training import DiffusionObjective, VideoCaptionFolder, frozen_motion_pipeline, main
from ctgm_helpers import write_tiny_video_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return write_tiny_video_model(tmp_path_factory.mktemp("tiny-video-model"))


def test_the_objective_is_the_schedulers_v_and_epsilon_with_min_snr_weights():
    import tiny_models as tm

    for kind in ("v_prediction", "epsilon"):
        objective = DiffusionObjective(tm.scheduler(kind).config, min_snr_gamma=5.0)
        z0, noise, t = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4), torch.tensor([0, 500, 999])
        a = objective.alphas_cumprod(z0.device)[t].view(3, 1, 1, 1, 1)
        noisy, target = objective.noisy_and_target(z0, noise, t)
        torch.testing.assert_close(noisy, a.sqrt() * z0 + (1 - a).sqrt() * noise)
        torch.testing.assert_close(target, a.sqrt() * noise - (1 - a).sqrt() * z0 if kind == "v_prediction" else noise)
        snr = (a / (1 - a)).flatten()
        expected = torch.clamp(snr + 1, max=5) / (snr + 1) if kind == "v_prediction" else torch.clamp(snr, max=5) / snr
        torch.testing.assert_close(objective.weights(t), expected)
    assert float(DiffusionObjective(tm.scheduler("v_prediction").config).weights(torch.tensor([999]))) == 1.0


def test_reversed_order_swaps_the_two_segments_and_their_caption():
    from attncraft.shapes.captions import caption_scene

    scene = next(s for s in sample_scenes(50, seed=3, num_objects=1, motion=True) if is_sequential(s))
    flipped = reverse_order(scene)
    (a, b), (c, d) = scene.objects[0].motions, flipped.objects[0].motions
    assert (c.kind, d.kind) == (b.kind, a.kind) and (c.start, c.end, d.start, d.end) == (a.start, a.end, b.start, b.end)
    said = [m.kind for m in parse_caption(caption_scene(scene, seed=0)).objects[0].motions]
    told = [m.kind for m in parse_caption(caption_scene(flipped, seed=0)).objects[0].motions]
    assert told == said[::-1] and len(said) == 2
    first, last = render_video([scene, flipped], num_frames=8, size=32).images.unbind(0)
    assert torch.equal(first[0], last[0])  # same start: only the order of the changes differs
    assert reverse_order(reverse_order(scene)) == scene


def test_shapes_stage_lowers_the_held_out_loss_and_writes_a_strict_fp16_file(tiny_model, tmp_path):
    sd, adapter = tiny_model
    out = tmp_path / "ctgm"
    info = train_ctgm(common.RunArgs(config="smoke", out=str(out), device="cpu", sd_dir=sd, adapter_dir=adapter,
                                     minutes=5, argv=["python", "smoke"]), quiet=True)  # fmt: skip
    history = info["loss_history"]
    assert len(history) == info["steps"] == 8 and np.isfinite(history).all()
    before, after = info["heldout_v_loss"]["before"], info["heldout_v_loss"]["after"]
    assert before["true_ctgm"] == pytest.approx(before["true_base"], rel=1e-5)  # identity at initialisation
    assert after["true_ctgm"] < 0.95 * before["true_ctgm"]  # CTGM learned
    assert after["true_base"] == pytest.approx(before["true_base"], rel=1e-5)  # the frozen model did not change
    path = out / "ctgm.safetensors"
    with safe_open(str(path), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    pipe = frozen_motion_pipeline(sd, adapter)
    ctgm = load_ctgm(path, pipe.unet)
    assert ctgm.mode == "tii+tar" and ctgm.config.sites == "part" and ctgm.training_record["steps"] == 8
    log = json.loads((out / "training_log.json").read_text())
    assert log["stage"] == "ctgm" and log["parameters"]["total"] == ctgm.parameter_counts()["total"]


def _write_clips(folder, count=2, frames=6):
    from attncraft.shapes.captions import caption_scene
    from attncraft.video.io import write_video

    folder.mkdir()
    scenes = sample_scenes(count, seed=5, motion=True)
    rows = []
    for i, (scene, video) in enumerate(zip(scenes, render_video(scenes, num_frames=frames, size=32).images)):
        path = write_video(folder / f"clip{i}.mp4", video, fps=8)
        rows.append(json.dumps({"file_name": path.name, "text": caption_scene(scene, seed=i)}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_the_script_trains_on_any_folder_of_captioned_clips(tiny_model, tmp_path, capsys):
    sd, adapter = tiny_model
    data = _write_clips(tmp_path / "clips")
    clips = VideoCaptionFolder(data, frames=3, width=32, height=24)
    frames, caption = clips[0]
    assert frames.shape == (3, 3, 24, 32) and frames.min() >= -1 and frames.max() <= 1 and caption
    out = tmp_path / "ctgm.safetensors"
    argv = ["--model", sd, "--adapter", adapter, "--data", str(data), "--out", str(out), "--frames", "3",
            "--width", "32", "--height", "32", "--steps", "2", "--batch", "2", "--workers", "0", "--device", "cpu",
            "--mode", "tfb", "--sites", "part"]  # fmt: skip
    assert main(argv) == 0
    assert "trained CTGM 'tfb' for 2 steps" in capsys.readouterr().out
    ctgm = load_ctgm(out)
    assert ctgm.mode == "tfb" and ctgm.training_record["clips"] == 2
    assert json.loads((tmp_path / "ctgm.safetensors.json").read_text())["attncraft"]["steps"] == 2
    assert main(argv) == 2 and "exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv[:-4], "--mode", "tii+tfb", "--overwrite"]) == 2
    assert "unknown CTGM mode 'tii+tfb'" in capsys.readouterr().err
    (data / "metadata.jsonl").write_text('{"file_name": "clip0.mp4"}\n')
    assert main([*argv, "--overwrite"]) == 2 and "lacks a file_name or a text" in capsys.readouterr().err
