"""Fixtures of the FancyVideo tests: tiny model folders on disk (built once per session)."""

from __future__ import annotations

import pytest

import tiny_models as tm
from fancyvideo_models import tiny_cv_vae, tiny_sd_vae


@pytest.fixture(scope="session")
def fancyvideo_folders(tmp_path_factory):
    """{"sd", "checkpoint" (DeepSpeed pickle), "single" (safetensors), "adapter" (converted), "vae"
    (CV-VAE)}: tiny random models that fit each other; the SD folder has an 8x VAE as SD 1.5 does."""
    from attncraft.fancyvideo.convert import convert_fancyvideo
    from attncraft.fancyvideo.synthetic import build_synthetic_checkpoint

    root = tmp_path_factory.mktemp("fancyvideo-models")
    sd = tm.sd_pipeline(seed=1)
    sd.vae = tiny_sd_vae(1)
    sd.register_modules(vae=sd.vae)
    sd.save_pretrained(root / "sd")
    build_synthetic_checkpoint(root / "ckpt" / "mp_rank_00_model_states.pt", spatial_unet=sd.unet, seed=3)
    build_synthetic_checkpoint(root / "FancyVideo_v1.safetensors", layout="single-file", seed=3)
    convert_fancyvideo(root / "FancyVideo_v1.safetensors", root / "adapter")
    tiny_cv_vae(4).save_pretrained(root / "cv-vae" / "vae3d")
    return {"sd": root / "sd", "checkpoint": root / "ckpt" / "mp_rank_00_model_states.pt",
            "single": root / "FancyVideo_v1.safetensors", "adapter": root / "adapter", "vae": root / "cv-vae"}
