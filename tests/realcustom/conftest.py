"""Fixtures of the RealCustom tests: tiny random Shapes-architecture folders and adapters."""

from __future__ import annotations

import pytest
import torch


def tiny_shapes_folders(root):
    """A tiny Shapes SD folder (16x16 latents, v-prediction, Shapes scheduler) and a tiny Shapes
    CLIP folder (64 px ViT), random weights, saved as the training and CLI paths load them."""
    from attncraft.shapes.models import build_shapes_vae, shapes_unet_config
    from attncraft.shapes.training.clip import build_clip_model
    from attncraft.shapes.training.configs import SMOKE_UNET, SMOKE_VAE, get_configs
    from attncraft.shapes.training.unet import save_sd_folder
    from attncraft.shapes.models import text_encoder_from_clip
    from diffusers import AutoencoderKL, UNet2DConditionModel

    clip = build_clip_model(get_configs("smoke").clip, seed=0)
    clip_dir = root / "clip"
    clip.save_pretrained(str(clip_dir), safe_serialization=True)
    torch.manual_seed(1)
    vae = AutoencoderKL(**({**build_shapes_vae().config} | SMOKE_VAE))
    unet = UNet2DConditionModel(**(shapes_unet_config() | SMOKE_UNET | {"cross_attention_dim": clip.config.text_config.hidden_size}))
    sd_dir = root / "sd"
    save_sd_folder(sd_dir, text_encoder_from_clip(clip), vae, unet)
    return sd_dir, clip_dir


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    return tiny_shapes_folders(tmp_path_factory.mktemp("realcustom_tiny"))
