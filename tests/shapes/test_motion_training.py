"""Shapes motion adapter: the smoke training run on CPU (held-out loss decreases, the folder loads as a
MotionAdapter), identity at initialisation, the clip sampling, and the evaluation run alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import tiny_models as tm
from test_training import _run_args


@pytest.fixture(scope="module")
def motion_run(tmp_path_factory):
    """A tiny random SD folder as the frozen base and the smoke-trained adapter on it."""
    from attncraft.shapes.training.motion import train_motion

    root = tmp_path_factory.mktemp("shapes_motion")
    tm.sd_pipeline(seed=1).save_pretrained(root / "sd")
    info = train_motion(_run_args(root / "shapes-motion", sd_dir=str(root / "sd")), quiet=True)
    return root, info


def test_smoke_training_decreases_the_heldout_loss(motion_run):
    _, info = motion_run
    history = info["loss_history"]
    assert len(history) == info["steps"] == 12 and all(np.isfinite(history))
    before, after = info["heldout_v_loss"]["before"]["true"], info["heldout_v_loss"]["after"]["true"]
    assert after < 0.95 * before, f"held-out v-loss {before:.4f} -> {after:.4f}"
    assert info["long_steps"] > 0  # some steps trained the longer clips


def test_the_folder_is_an_fp16_motion_adapter_for_its_base(motion_run):
    from diffusers import MotionAdapter

    from attncraft.loading import load_text_to_video
    from attncraft.pipelines.text_to_video import TextToVideoPipeline

    root, info = motion_run
    folder = root / "shapes-motion"
    dtypes = set()
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16"}
    adapter = MotionAdapter.from_pretrained(folder)
    assert tuple(adapter.config.block_out_channels) == (32, 64) and adapter.config.motion_max_seq_length == 32
    log = json.loads((folder / "training_log.json").read_text())
    assert log["stage"] == "motion" and log["sd_unet_sha256_16"] and log["adapter_params"] == info["adapter_params"]
    assert json.loads((folder / "attncraft_defaults.json").read_text())["num_frames"] == 16
    loaded = load_text_to_video(str(root / "sd"), str(folder))
    assert isinstance(loaded.pipeline, TextToVideoPipeline)


def test_a_fresh_adapter_is_the_identity():
    """Zeroed output projections: the motion UNet denoises each frame exactly as the image UNet does."""
    from diffusers import UNetMotionModel

    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.motion import build_adapter

    unet = tm.sd_unet(seed=0)
    adapter = build_adapter(dict(unet.config), get_configs("smoke").motion, seed=0)
    motion = UNetMotionModel.from_unet2d(unet, adapter).eval()
    x = torch.randn(2, 4, 3, 16, 16)
    text = torch.randn(2, 77, 32)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        video = motion(x, t, encoder_hidden_states=text.repeat_interleave(3, dim=0)).sample
        frames = unet(x.permute(0, 2, 1, 3, 4).reshape(6, 4, 16, 16), t.repeat_interleave(3),
                      encoder_hidden_states=text.repeat_interleave(3, dim=0)).sample
    assert torch.allclose(video.permute(0, 2, 1, 3, 4).reshape(6, 4, 16, 16), frames, atol=1e-5)


def test_frame_subset_takes_every_second_frame_of_a_long_clip():
    import random

    from attncraft.shapes.training.motion import frame_subset

    clips = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(2, 1, 32, 1, 1)
    starts = set()
    for seed in range(12):
        sub = frame_subset(clips, 16, random.Random(seed))
        idx = sub[0, 0, :, 0, 0].long().tolist()
        assert len(idx) == 16 and all(b - a == 2 for a, b in zip(idx, idx[1:]))
        starts.add(idx[0])
    assert starts == {0, 1}
    assert frame_subset(clips, 32, random.Random(0)) is clips


def test_frame_colour_and_shape_is_exact_on_world_renders_and_sees_a_wrong_colour():
    from attncraft.shapes.reader import read_video
    from attncraft.shapes.training.motion_eval import frame_color_shape, motion_prompts, world_renders

    scenes, prompts = motion_prompts(3, seed=5, segments=1)
    videos = world_renders(scenes, 8)
    for video, prompt in zip(videos, prompts):
        assert frame_color_shape(read_video(list(video)), prompt) == 1.0
    from attncraft.shapes.world import COLORS

    obj = scenes[0].objects[0]
    other = next(c for c in COLORS if c != obj.color and all(m.to_color != c for m in obj.motions))
    assert frame_color_shape(read_video(list(videos[0])), f"a {other} {obj.shape}") == 0.0


def test_evaluation_runs_alone_and_records_the_default(motion_run, tmp_path):
    from attncraft.shapes.training.__main__ import main

    root, _ = motion_run
    code = main(["evaluate", "--what", "motion", "--config", "smoke", "--device", "cpu", "--sd", str(root / "sd"),
                 "--adapter", str(root / "shapes-motion"), "--out", str(tmp_path), "--prompts", "1"])
    assert code == 0
    result = json.loads((tmp_path / "motion_eval.json").read_text())["motion"]
    assert result["one_motion"]["n"] == 1 and result["sequential"]["n"] == 1  # --prompts caps the sets
    assert result["one_motion"]["ceiling_renders"]["motion"] == 1.0
    assert set(result["targets"]) == {"motion>=0.80", "frame_color_shape>=0.90", "identity>=0.90"}
    assert "shapes motion" in (tmp_path / "motion_eval.md").read_text()
    defaults = json.loads((root / "shapes-motion" / "attncraft_defaults.json").read_text())
    assert defaults["guidance_scale"] == result["default"]["guidance_scale"]


def test_swapped_motions_turn_every_change_the_other_way():
    from attncraft.shapes.captions import caption_scene, parse_caption
    from attncraft.shapes.training.motion import swap_motions
    from attncraft.shapes.world import sample_scenes

    for scene in sample_scenes(40, seed=3, motion=True):
        swapped = swap_motions(scene)
        for a, b in zip(scene.objects, swapped.objects):
            assert (a.shape, a.color, a.position) == (b.shape, b.color, b.position)
            for m, n in zip(a.motions, b.motions):
                if m.kind == "move":
                    assert {m.direction, n.direction} in ({"left", "right"}, {"up", "down"})
                elif m.kind == "rotate":
                    assert n.amount == -m.amount
                elif m.kind == "recolor":
                    assert n.to_color not in (m.to_color, a.color)
                elif m.kind in ("grow", "shrink"):
                    assert {m.kind, n.kind} == {"grow", "shrink"}
        if any(m.kind == "move" for o in scene.objects for m in o.motions):
            assert caption_scene(swapped, seed=0) != caption_scene(scene, seed=0)
            parse_caption(caption_scene(swapped, seed=0))


def test_a_sweep_cut_short_keeps_the_folders_guidance_and_leaves_the_folder_alone(motion_run, tmp_path):
    """Out of time after the first guidance, the evaluation has compared nothing: it evaluates at the adapter
    folder's own guidance and does not overwrite it (a job beside it may read the folder)."""
    import shutil
    import time
    from dataclasses import replace

    from attncraft.shapes.training import common
    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.evaluate import Scorer
    from attncraft.shapes.training.motion_eval import eval_motion, motion_markdown

    root, _ = motion_run
    adapter = tmp_path / "adapter"
    shutil.copytree(root / "shapes-motion", adapter)
    (adapter / "attncraft_defaults.json").write_text(json.dumps({"guidance_scale": 7.5, "num_inference_steps": 25}))
    before = (adapter / "attncraft_defaults.json").read_bytes()
    cfg = replace(get_configs("smoke").eval, motion_sweep_guidance=(3.0, 5.0), motion_one=1, motion_seq=1,
                  motion_sweep_prompts=1, motion_baseline=1)
    spent = common.Budget(0.01, 0.0, t0=time.time() - 60.0)  # already over
    scorer = Scorer(0)
    try:
        res = eval_motion(root / "sd", adapter, cfg, torch.device("cpu"), scorer, tmp_path, spent, say=lambda m: None)
    finally:
        scorer.close()
    assert [r["guidance"] for r in res["sweep"]["results"]] == [3.0] and res["sweep"]["complete"] is False
    assert res["default"]["guidance_scale"] == 7.5 and res["default"]["from"] == "folder (sweep cut short)"
    assert (adapter / "attncraft_defaults.json").read_bytes() == before
    assert "guidance 7.5 (the adapter folder's: the sweep was cut short)" in "\n".join(motion_markdown(res))


def test_the_probe_of_several_bands_equals_one_call_per_band(motion_run):
    """``motion_probes`` renders and encodes the clips once for all the bands; each band's reading is
    exactly what its own ``motion_probe`` call gives (same noise, timesteps and shuffles)."""
    from diffusers import MotionAdapter, UNetMotionModel

    from attncraft.shapes.training.data import tokenize
    from attncraft.shapes.training.motion import (ClipEncoder, load_frozen_sd, motion_probe, motion_probes,
                                                  training_alphas_cumprod)
    from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids

    root, _ = motion_run
    device = torch.device("cpu")
    sd = load_frozen_sd(root / "sd", device)
    text_encoder = pipeline_encoder_for_clip_ids(sd)
    adapter = MotionAdapter.from_pretrained(str(root / "shapes-motion"), dtype=torch.float32)
    unet = UNetMotionModel.from_unet2d(sd.unet, adapter).eval()
    encoder = ClipEncoder(sd.vae, device, 32, 64)
    with torch.no_grad():
        empty = text_encoder(torch.from_numpy(tokenize([""])).long()).last_hidden_state.float()
    args = (unet, text_encoder, encoder, empty, training_alphas_cumprod(device), device)
    bands = ((200, 800), (800, 1000))
    together = motion_probes(*args, n=6, frames=4, batch=4, t_ranges=bands)
    alone = [motion_probe(*args, n=6, frames=4, batch=4, t_range=band) for band in bands]
    assert together == alone
    assert together[0] != together[1]  # the bands differ: each drew its own timesteps
