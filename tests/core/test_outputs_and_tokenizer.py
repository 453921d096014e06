"""Atomic writes, settings stored in outputs, and the shipped CLIP tokenizer."""

from __future__ import annotations

import hashlib
import json

import pytest
from PIL import Image

from attncraft.outputs import atomic_path, read_png_settings, read_sidecar, save_png_with_settings, write_sidecar
from attncraft.tokenizer import load_clip_tokenizer


def test_png_settings_round_trip(tmp_path):
    settings = {"prompt": "a red circle", "seed": 3, "guidance_scale": 7.5}
    path = save_png_with_settings(Image.new("RGB", (8, 8), "red"), tmp_path / "x.png", settings)
    assert read_png_settings(path) == settings
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temporary left behind


def test_sidecar_round_trip(tmp_path):
    target = tmp_path / "video.mp4"
    side = write_sidecar(target, {"frames": 16}, kind="video")
    assert side.name == "video.mp4.json"
    assert read_sidecar(target) == {"frames": 16}
    assert json.loads(side.read_text())["kind"] == "video"


def test_atomic_path_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.txt"]
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".txt" and tmp != target
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_tokenizer_matches_clip():
    tok = load_clip_tokenizer()
    assert len(tok) == 49408
    assert tok.model_max_length == 77
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tok("a photo", padding="max_length").input_ids) == 77
    assert tok.pad_token_id == 49407 and tok.bos_token_id == 49406


def test_tokenizer_assets_are_the_mit_bpe_conversion():
    from attncraft.assets import tokenizer_dir

    folder = tokenizer_dir()
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = (folder / "merges.txt").read_text().splitlines()
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert len(merges) == 1 + 48894
    assert (folder / "vocab.json").stat().st_size == 961143
    # golden digest of tools/build_clip_tokenizer.py's output for the pinned BPE file
    assert hashlib.sha256((folder / "merges.txt").read_bytes()).hexdigest() == "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"
    assert "MIT License" in (folder / "LICENSE").read_text()
