"""RealCustom on Shapes: the task's examples, the metrics on ground truth, and a CPU smoke training run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from attncraft.shapes.captions import parse_caption
from attncraft.shapes.training import common
from attncraft.shapes.training.realcustom import (
    SubjectChunks,
    is_held_out,
    sample_examples,
    score_example,
)
from attncraft.shapes.world import COLORS, SHAPES, render_scenes


def test_examples_are_seeded_and_the_prompt_names_the_subject_by_its_word_alone():
    a, b = sample_examples(20, seed=3), sample_examples(20, seed=3)
    assert a == b and a != sample_examples(20, seed=4)
    for ex in a:
        subject = ex.target.objects[0]
        alone = ex.subject.objects[0]
        assert (alone.shape, alone.color, alone.pattern) == (subject.shape, subject.color, subject.pattern)
        assert subject.pattern != "plain" and ex.word == subject.shape
        assert all(o.shape != subject.shape for o in ex.target.objects[1:])
        parsed = parse_caption(ex.caption)
        mine = next(o for o in parsed.objects if o.shape == subject.shape)
        assert mine.color is None and mine.pattern is None and mine.position == subject.position
        assert len(parsed.objects) == len(ex.target.objects)
        described = next(o for o in parse_caption(ex.described).objects if o.shape == subject.shape)
        assert described.color == subject.color and described.pattern == subject.pattern


def test_held_out_subjects_never_reach_training():
    held = [(s, c, p) for s in SHAPES for c in COLORS for p in ("striped", "dotted", "checkered") if is_held_out(s, c, p)]
    assert len(held) == 29 and {h[0] for h in held} == set(SHAPES) and {h[1] for h in held} == set(COLORS)
    chunk = SubjectChunks(64).chunk(0)
    assert chunk.tokens.shape == (64, 77)
    assert not any(is_held_out(o.shape, o.color, o.pattern) for o in (e.target.objects[0] for e in chunk.examples))
    assert all(is_held_out(*(lambda o: (o.shape, o.color, o.pattern))(e.target.objects[0]))
               for e in sample_examples(30, seed=12, held_out=True))


def test_metrics_are_one_on_the_worlds_own_renders_and_catch_a_wrong_subject():
    examples = sample_examples(12, seed=12, held_out=True)
    renders = render_scenes([e.target for e in examples]).images.permute(0, 2, 3, 1).numpy()
    truth = render_scenes([e.target for e in examples]).masks[:, 0].numpy()
    for e, image, mask in zip(examples, renders, truth):
        s = score_example((image, {"target": e.target.to_dict(), "map": mask.astype(np.float32), "truth": mask}))
        assert s["identity"] == s["text"] == s["both"] == 1.0, e.caption
        assert s["mask_iou"] == 1.0 and s["mask_recall"] == 1.0
    e = examples[0]
    subject = e.target.objects[0]
    wrong = replace(subject, color=next(c for c in COLORS if c != subject.color))
    image = render_scenes([e.target.with_objects((wrong, *e.target.objects[1:]))]).images[0].permute(1, 2, 0).numpy()
    s = score_example((image, {"target": e.target.to_dict(), "map": None, "truth": None}))
    assert s["color"] == 0.0 and s["identity"] == 0.0 and s["text"] == 1.0 and "mask_iou" not in s


@pytest.mark.slow
def test_smoke_training_lowers_the_held_out_loss_and_writes_its_files(tiny_folders, tmp_path):
    from attncraft.realcustom.modules import load_adapter
    from attncraft.shapes.models import load_shapes_sd_pipeline
    from attncraft.shapes.training.realcustom import train_realcustom

    sd_dir, clip_dir = tiny_folders
    args = common.RunArgs(config="smoke", out=str(tmp_path / "rc"), minutes=5.0, device="cpu", seed=0,
                          sd_dir=str(sd_dir), clip_dir=str(clip_dir), argv=["python", "smoke"])
    info = train_realcustom(args, quiet=True)
    loss = info["heldout_loss"]
    assert loss["before"] == pytest.approx(loss["plain_unet"], abs=1e-6)  # zero-value init adds nothing
    assert loss["after"] < 0.95 * loss["before"], loss
    assert info["steps"] == 25 and all(np.isfinite(info["loss_history"]))
    out = tmp_path / "rc"
    names = {p.name for p in out.iterdir()}
    assert {"realcustom.safetensors", "training_log.json", "realcustom_eval.json", "realcustom_eval.md"} <= names
    log = json.loads((out / "training_log.json").read_text())
    assert log["steps"] == 25 and log["evaluation"]["chosen_image_guidance_scale"] == 3.0
    adapter = load_adapter(out, unet=load_shapes_sd_pipeline(sd_dir).unet)
    assert adapter.config.defaults["image_guidance_scale"] == 3.0 and adapter.scoring is not None
    assert adapter.config.encoder == str(Path(clip_dir).resolve())  # the encoder it was trained on, not the Shapes one
    assert (out / "realcustom.safetensors").stat().st_size < 3e6
    trained = info["adapter"].state_dict()
    assert all(torch.equal(v.half().float(), adapter.state_dict()[k].float()) for k, v in trained.items())
