"""The Shapes vocabulary: shapes SD's tokenizer and text encoder cut to the world's tokens give the same
ids (remapped) and bit-identical text states and images on the world's prompts, every other text still
tokenizes, and the training stages feed a pruned encoder through the remap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny_models as tm
from test_training import _run_args

from attncraft.shapes import vocab


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny random SD folder (CLIP's full vocabulary) and its pruned copy."""
    import shutil

    root = tmp_path_factory.mktemp("vocab")
    tm.sd_pipeline(seed=3).save_pretrained(root / "full")
    shutil.copytree(root / "full", root / "pruned")
    info = vocab.prune_sd_vocabulary(root / "pruned", check_captions=100)
    return root, info


def test_bpe_walk_gives_the_tokenizers_tokens():
    from attncraft.tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    ranks = {pair: i for i, pair in enumerate(vocab._read_merges(vocab.Path(tok.name_or_path)))}
    for word in ("circle", "checkered", "beneath", "shrinks", "cylinder", "a", "zzyzx", "counterclockwise", ","):
        final, formed = vocab.bpe_tokens(word, ranks)
        assert final == tok.tokenize(word), word
        assert set(final) <= formed


def test_pruning_keeps_ids_states_and_images(pruned):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    root, info = pruned
    assert info["pruned"] and info["tokens"] < 2000 and info["bytes_after"] < info["bytes_before"] / 5
    tok = CLIPTokenizer.from_pretrained(str(root / "pruned" / "tokenizer"))
    assert len(tok) == info["tokens"]
    remap = vocab.VocabRemap.for_folder(root / "pruned")
    assert remap is not None and vocab.VocabRemap.for_folder(root / "full") is None
    full_tok = CLIPTokenizer.from_pretrained(str(root / "full" / "tokenizer"))
    caps = vocab.sample_captions(50, seed=4321)  # held out from the construction (seed 0) and its check (900)
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(remap(full_tok(caps, **kw).input_ids), tok(caps, **kw).input_ids)
    pipes = [StableDiffusionPipeline.from_pretrained(str(root / name), safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False) for name in ("full", "pruned")]
    prompts = ["a red circle above a blue square on a gray background", "a big green star moves up, then turns red"]
    images = []
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe(prompts, num_inference_steps=2, height=32, width=32, output_type="np",
                           generator=torch.Generator().manual_seed(0)).images)
    assert np.array_equal(images[0], images[1])
    enc = pipes[1].text_encoder
    assert enc.config.vocab_size == info["tokens"] and enc.config.eos_token_id == tok.eos_token_id
    # a word outside the world still tokenizes, into kept pieces
    ids = tok("a photograph of an aardvark").input_ids
    assert max(ids) < info["tokens"] and len(ids) > 6


def test_pruning_twice_is_a_no_op_and_a_failed_check_changes_nothing(pruned, monkeypatch, tmp_path):
    import shutil

    root, _ = pruned
    before = {p.name: p.read_bytes() for p in (root / "pruned" / "text_encoder").iterdir()}
    assert vocab.prune_sd_vocabulary(root / "pruned")["pruned"] is False
    assert {p.name: p.read_bytes() for p in (root / "pruned" / "text_encoder").iterdir()} == before
    shutil.copytree(root / "full", tmp_path / "sd")
    original = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in (tmp_path / "sd").rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("the pruned text encoder's states differ")

    monkeypatch.setattr(vocab, "check_pruned", broken)
    with pytest.raises(RuntimeError, match="differ"):
        vocab.prune_sd_vocabulary(tmp_path / "sd")
    after = {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in (tmp_path / "sd").rglob("*") if p.is_file()}
    assert after == original


def test_remap_names_tokens_the_vocabulary_lacks(pruned):
    root, _ = pruned
    remap = vocab.VocabRemap.for_folder(root / "pruned")
    from attncraft.tokenizer import load_clip_tokenizer

    cat = load_clip_tokenizer()("a cat", add_special_tokens=False).input_ids  # 'cat</w>' is not a world token
    with pytest.raises(ValueError, match="not in the model's pruned vocabulary"):
        remap(torch.tensor([cat]))


def test_the_shipped_shapes_sd_is_pruned_and_exact_on_every_grammar():
    from transformers import CLIPTokenizer

    from attncraft.shapes.models import SHAPES_SD_DIR
    from attncraft.shapes.training.data import tokenize_fast

    remap = vocab.VocabRemap.for_folder(SHAPES_SD_DIR)
    assert remap is not None and remap.size < 2000
    tok = CLIPTokenizer.from_pretrained(str(SHAPES_SD_DIR / "tokenizer"))
    caps = vocab.sample_captions(200, seed=777)
    ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(remap(torch.from_numpy(tokenize_fast(caps, check=0)).long()), ids)
    config = json.loads((SHAPES_SD_DIR / "text_encoder" / "config.json").read_text())
    assert config["vocab_size"] == remap.size and config["eos_token_id"] == tok.eos_token_id


def test_motion_training_feeds_a_pruned_encoder_through_the_remap(pruned):
    from attncraft.shapes.training.motion import train_motion

    root, _ = pruned
    info = train_motion(_run_args(root / "motion", sd_dir=str(root / "pruned")), quiet=True)
    assert info["steps"] > 0 and np.isfinite(info["heldout_v_loss"]["after"]["true"])


def test_the_command_refuses_a_folder_that_is_no_sd(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        vocab.main([str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and "is not a shapes SD folder (tokenizer/tokenizer_config.json is missing)" in err
