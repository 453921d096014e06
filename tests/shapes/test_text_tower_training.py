"""Joint fine-tune of shapes SD's text encoder with its UNet (config ``finetune-text``, ``--train-text``).

A 2-step run from the shipped Shapes SD on CPU: the chosen parameters of the text encoder are trained and
only those (everything else bit for bit the shipped weights), the folder keeps its format and loads with
diffusers / transformers, and the relation-word probe runs on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from attncraft.shapes.models import SHAPES_SD_DIR
from attncraft.shapes.training import common
from bench_scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
needs_shipped = pytest.mark.skipif(not (SHAPES_SD_DIR / "text_encoder" / "config.json").exists(),
                                   reason="shipped Shapes SD missing")
POOL = 16  # one chunk: the training captions are exactly chunk 0's


def _tiny_cfg():
    from attncraft.shapes.training.configs import get_configs

    # a learning rate high enough that two steps survive the fp16 rounding of the saved weights
    return replace(get_configs("smoke").unet, overrides=None, pool=POOL, chunk=POOL, batch=4, probe_examples=8,
                   train_text=True, text_last_layers=2, text_lr=1e-2, text_warmup=1, refresh_every=1000)


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    from attncraft.shapes.training.unet import train_unet

    out = tmp_path_factory.mktemp("joint") / "shapes-sd"
    args = common.RunArgs(config="smoke", out=str(out), minutes=5.0, device="cpu", seed=0, max_steps=2,
                          init_dir=str(SHAPES_SD_DIR), vae_dir=str(SHAPES_SD_DIR / "vae"), argv=["python", "smoke"])
    cfg = _tiny_cfg()
    info = train_unet(args, cfg, quiet=True)
    return out, cfg, info


def _state(folder: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@needs_shipped
@pytest.mark.slow
def test_only_the_chosen_text_parameters_move(joint):
    from attncraft.shapes.training.data import SceneChunks

    out, cfg, info = joint
    assert info["steps"] == 2 and all(np.isfinite(info["loss_history"]))
    before, after = _state(SHAPES_SD_DIR / "text_encoder"), _state(out / "text_encoder")
    assert before.keys() == after.keys()
    emb = "text_model.embeddings.token_embedding.weight"
    trained = {k for k in before if k.startswith(("text_model.encoder.layers.2.", "text_model.encoder.layers.3.",
                                                   "text_model.final_layer_norm."))}
    assert len(trained) == 2 * 16 + 2
    for k in before.keys() - trained - {emb}:  # position embeddings, layers 0-1: the shipped bits
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in trained)
    # token embeddings: only rows of words the training captions (or the empty prompt) use have moved
    moved = set(torch.nonzero((before[emb] != after[emb]).any(dim=1)).flatten().tolist())
    chunk = SceneChunks(POOL, caption_omits=cfg.caption_omits, relation=cfg.caption_relation,
                        vertical=cfg.caption_vertical).chunk(0)
    from attncraft.shapes.vocab import VocabRemap

    remap = VocabRemap.for_folder(SHAPES_SD_DIR)  # the chunk holds CLIP ids, the shipped encoder its own
    ids = torch.from_numpy(chunk.tokens).long()
    used = set(torch.unique(remap(ids) if remap is not None else ids).tolist())
    assert moved and moved <= used
    # the UNet trained too
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(str(SHAPES_SD_DIR / "unet")).state_dict()
    b = UNet2DConditionModel.from_pretrained(str(out / "unet")).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@needs_shipped
@pytest.mark.slow
def test_training_log_says_what_was_trained(joint):
    out, cfg, _ = joint
    log = json.loads((out / "training_log.json").read_text())["text_encoder_training"]
    assert log["summary"].startswith("text encoder trained: transformer layers 2-3 of 0-3, final layer norm, token")
    assert "frozen: position embeddings, layers 0-1" in log["summary"]
    assert log["frozen_unchanged"] is True and log["trained_tensors_changed"] == len(log["trained"]) == 35
    assert {n for n in log["frozen"] if ".layers." in n} == {n for n in log["frozen"] if ".layers.0." in n
                                                            or ".layers.1." in n}
    assert any("position_embedding" in n for n in log["frozen"])
    rows = json.loads((SHAPES_SD_DIR / "text_encoder" / "config.json").read_text())["vocab_size"]
    assert 0 < log["embedding_rows_changed"][0] < log["embedding_rows_changed"][1] == rows
    assert (log["lr"], log["warmup"], log["last_layers"]) == (cfg.text_lr, cfg.text_warmup, 2)
    for part in ("one_object", "relations"):
        assert log["drift"][part]["captions"] > 0 and 0 < log["drift"][part]["tokens"] < 10


@needs_shipped
@pytest.mark.slow
def test_saved_folder_keeps_its_format_and_loads(joint):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    out, _, _ = joint
    old = json.loads((SHAPES_SD_DIR / "text_encoder" / "config.json").read_text())
    new = json.loads((out / "text_encoder" / "config.json").read_text())
    old.pop("transformers_version"), new.pop("transformers_version")
    assert old == new
    with safe_open(str(out / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # the tokenizer untouched
        assert (out / "tokenizer" / name).read_bytes() == (SHAPES_SD_DIR / "tokenizer" / name).read_bytes()
    enc = CLIPTextModel.from_pretrained(str(out / "text_encoder"))
    assert enc.dtype == torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(str(out), local_files_only=True)
    img = pipe("a red star above a blue heart", num_inference_steps=1, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 32, 32, 3) and np.isfinite(img).all()
    ids = pipe.tokenizer(["a red star above a blue heart"], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():  # the pipeline's text encoder is the trained one
        torch.testing.assert_close(pipe.text_encoder(ids).last_hidden_state, enc(ids).last_hidden_state)


@needs_shipped
@pytest.mark.slow
def test_relation_probe_runs_on_the_new_encoder(joint):
    mod = load_script(ROOT / "benchmarks/probe_text_relations.py", "probe_text_relations")
    out, _, _ = joint
    pairs = [("above", "above"), ("above", "below")]
    (same, new), (_, old) = mod.probe(str(out), pairs=pairs, max_captions=3), mod.probe(str(SHAPES_SD_DIR), pairs, 3)
    assert same["tokens"] == 0.0 and new["captions"] == 3 and new["tokens"] > 0.0
    assert new["tokens"] != old["tokens"]  # the states the probe reads are the trained encoder's


def test_finetune_text_is_finetune_with_the_text_encoder_trained():
    from attncraft.shapes.training.configs import get_configs

    fine, text = asdict(get_configs("finetune").unet), asdict(get_configs("finetune-text").unet)
    assert {k for k in fine if fine[k] != text[k]} == {"train_text"} and text["train_text"] is True
    assert text["text_lr"] < text["lr"] and text["text_warmup"] > text["warmup"] and text["text_last_layers"] is None
    assert not get_configs("full").unet.train_text and not get_configs("smoke").unet.train_text


def test_command_line_switches_text_training_on():
    from attncraft.shapes.training.__main__ import parse

    ns = parse(["unet", "--out", "x", "--config", "finetune-text"])
    assert ns.config == "finetune-text" and not ns.train_text and ns.text_lr is None
    ns = parse(["unet", "--out", "x", "--config", "smoke", "--train-text", "--text-lr", "3e-5"])
    assert ns.train_text and ns.text_lr == 3e-5


def test_select_text_parameters_freezes_the_rest():
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.shapes.training.unet import select_text_parameters

    enc = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=3,
                                       num_attention_heads=2, vocab_size=50, max_position_embeddings=10))
    groups = select_text_parameters(enc, last_layers=1, embeddings=False)
    trained = {n for g in ("layers", "embeddings") for n, _ in groups[g]}
    assert {n for n, p in enc.named_parameters() if p.requires_grad} == trained
    assert all(".layers.2." in n or "final_layer_norm" in n for n in trained) and not groups["embeddings"]
    groups = select_text_parameters(enc)  # all layers and the token embeddings, never the positions
    frozen = {n for n, p in enc.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in groups["frozen"]} and all("position_embedding" in n for n in frozen) and frozen


def test_param_groups_follow_their_own_peak_and_warm_up():
    from attncraft.shapes.training.configs import get_configs

    cfg = replace(get_configs("full").unet, lr=1e-3, warmup=10, text_lr=1e-4, text_warmup=40)
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "peak_lr": cfg.text_lr, "warmup": cfg.text_warmup}])
    budget = common.Budget(60.0, 0.0)
    steps = common.TrainingSteps(budget, 3, cfg, opt)
    for step, lr in steps:
        frac = common.progress_fraction(step, 3, budget)
        assert lr == opt.param_groups[0]["lr"]
        assert opt.param_groups[1]["lr"] == pytest.approx(common.lr_at(step, frac, 1e-4, 40, cfg.final_lr_ratio),
                                                          rel=1e-3)
        assert opt.param_groups[1]["lr"] == pytest.approx(lr * (1e-4 / 1e-3) * (10 / 40), rel=1e-3)  # both warming
