"""The relation-contrast term of the UNet stage (``--contrast``): the scene stream gives each caption's
relation-flipped twin, and a 2-step fine-tune of the shipped Shapes SD with the term on (text encoder
trained too) runs and records it."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from attncraft.shapes.models import SHAPES_SD_DIR
from attncraft.shapes.training import common

needs_shipped = pytest.mark.skipif(not (SHAPES_SD_DIR / "text_encoder" / "config.json").exists(),
                                   reason="shipped Shapes SD missing")


def test_scene_stream_gives_the_relation_flipped_captions():
    from attncraft.shapes.captions import flip_relations
    from attncraft.shapes.training.data import SceneChunks, tokenize_fast

    chunks = SceneChunks(16, caption_omits=(0.0,), num_objects=2, relation=1.0, keep_text=True, contrast="relation")
    chunk = chunks.chunk(0)
    texts = [row[0] for row in chunk.captions]
    assert np.array_equal(chunk.swapped[:, 0], tokenize_fast([flip_relations(t) for t in texts]))
    flipped = [i for i, t in enumerate(texts) if flip_relations(t) != t]
    assert flipped and all(not np.array_equal(chunk.swapped[i, 0], chunk.tokens[i, 0]) for i in flipped)
    with pytest.raises(ValueError, match="unknown contrast"):
        SceneChunks(4, contrast="colour")


@pytest.fixture(scope="module")
def contrast_run(tmp_path_factory):
    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.unet import train_unet

    out = tmp_path_factory.mktemp("relation_contrast") / "shapes-sd"
    args = common.RunArgs(config="smoke", out=str(out), minutes=5.0, device="cpu", seed=0, max_steps=2, contrast=0.5,
                          init_dir=str(SHAPES_SD_DIR), vae_dir=str(SHAPES_SD_DIR / "vae"), argv=["python", "smoke"])
    cfg = replace(get_configs("smoke").unet, overrides=None, pool=16, chunk=16, batch=4, probe_examples=8,
                  caption_relation=1.0, train_text=True, text_last_layers=1, text_lr=1e-3, text_warmup=1,
                  refresh_every=1000)  # fmt: skip
    return out, train_unet(args, cfg, quiet=True)


@needs_shipped
@pytest.mark.slow
def test_fine_tune_with_the_relation_contrast_records_it(contrast_run):
    out, info = contrast_run
    record = info["relation_contrast"]
    assert record["weight"] == 0.5 and record["margin"] == 0.1
    assert len(record["term_every_50_steps"]) == 1 and record["rows_share_mean"] > 0  # relation captions were contrasted
    assert np.isfinite(info["final_loss"]) and info["steps"] == 2
    assert json.loads((out / "training_log.json").read_text())["relation_contrast"]["weight"] == 0.5


def test_a_negative_weight_is_refused(tmp_path):
    from attncraft.errors import InputError
    from attncraft.shapes.training.unet import train_unet

    args = common.RunArgs(config="smoke", out=str(tmp_path / "sd"), minutes=5.0, device="cpu", seed=0, contrast=-0.5,
                          argv=["python", "smoke"])
    with pytest.raises(InputError, match="--contrast must be >= 0"):
        train_unet(args, quiet=True)
    assert not (tmp_path / "sd").exists()
