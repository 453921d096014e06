"""Single-file (original LDM layout) checkpoints load offline with a local --config folder, exactly.

No LDM-format checkpoint exists offline, so a tiny random pipeline is exported with
:func:`ldm_format.diffusers_sd_to_ldm_state_dict` and loaded back through diffusers' ``from_single_file``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_models as tm
from attncraft.cli.app import main
from attncraft.loading import load_text_to_image
from attncraft.pipelines import generate
from ldm_format import diffusers_sd_to_ldm_state_dict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(original pipeline, config folder, LDM-format model.safetensors)."""
    root = tmp_path_factory.mktemp("single-file")
    pipe = tm.sd_pipeline(seed=3)
    folder = root / "config"
    pipe.save_pretrained(folder)
    path = root / "model.safetensors"
    state = diffusers_sd_to_ldm_state_dict(pipe)
    assert "model.diffusion_model.input_blocks.1.0.in_layers.0.weight" in state
    assert "first_stage_model.encoder.down.0.block.0.norm1.weight" in state
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in state
    save_file(state, str(path))
    return pipe, folder, path


def test_single_file_loads_exactly_and_generates_the_same_images(checkpoint):
    original, folder, path = checkpoint
    loaded = load_text_to_image(str(path), device="cpu", config=str(folder))
    assert loaded.family == "sd" and loaded.source == "file"
    assert type(loaded.pipeline).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        want = dict(getattr(original, name).named_parameters())
        got = dict(getattr(loaded.pipeline, name).named_parameters())
        assert want.keys() == got.keys(), name
        differing = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differing, f"{name}: {differing[:5]}"
    reference = dataclasses.replace(loaded, pipeline=original.to(device="cpu", dtype=loaded.pipeline.dtype))
    from_file = generate(loaded, tm.quick_settings(loaded, seed=4)).images[0]
    from_original = generate(reference, tm.quick_settings(reference, seed=4)).images[0]
    assert from_file.size == (32, 32)
    assert np.array_equal(np.asarray(from_file), np.asarray(from_original))


def test_cli_image_from_single_file(checkpoint, tmp_path, capsys):
    _, folder, path = checkpoint
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        main(["image", "a red circle", "--model", str(path), "--config", str(folder), "--steps", "1",
              "--width", "32", "--height", "32", "--out", str(out)])
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert info.value.code == 0, captured.err
    assert "model: model.safetensors (single file)" in captured.err  # the console reports on stderr
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1 and captured.out.split() == [str(pngs[0])]
