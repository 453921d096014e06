"""Tiny FancyVideo parts for the tests: a synthetic checkpoint converted, a tiny CV-VAE, and the
pipeline built from ``tiny_models.sd_pipeline`` (32x32 frames, 2 steps)."""

from __future__ import annotations

import torch

import tiny_models as tm
from attncraft.fancyvideo.conditioning import first_frame_scheduler, video_scheduler
from attncraft.fancyvideo.convert import convert_state_dict
from attncraft.fancyvideo.synthetic import fancyvideo_tensors
from attncraft.fancyvideo.vae import CVVAEModel

CALL = dict(prompt="a red circle", num_frames=5, height=32, width=32, num_inference_steps=2)
"""5 frames = 2 latent frames with the tiny CV-VAE (4x temporal compression)."""

TINY_VAE = dict(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, tile_spatial_size=32, tile_overlap_ratio=0.25,
                en_de_n_frames_a_time=4)
"""Four levels (8x space, 4x time) at width 32; tiles of 32 px (4 latent) overlapping by a quarter,
pieces of 4 frames: small enough for CPU tests, with every path of the full model."""


def tiny_cv_vae(seed: int = 0, **overrides) -> CVVAEModel:
    torch.manual_seed(seed)
    return CVVAEModel(**(TINY_VAE | overrides)).eval()


def tiny_sd_vae(seed: int = 0):
    """An SD-architecture VAE with SD's 8x spatial compression (four levels) at width 32."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=[32] * 4, in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         layers_per_block=1, norm_num_groups=8, sample_size=32).eval()


def tiny_parts(seed: int = 0, zero_embeddings: bool = False):
    return convert_state_dict(fancyvideo_tensors("tiny", seed=seed, zero_embeddings=zero_embeddings), "synthetic")


def tiny_fancyvideo_pipeline(seed: int = 0, zero_embeddings: bool = False, sd_vae: bool = False):
    from attncraft.pipelines.fancyvideo import FancyVideoPipeline

    sd = tm.sd_pipeline(seed=seed)
    parts = tiny_parts(seed, zero_embeddings)
    image_vae = tiny_sd_vae(seed)
    pipe = FancyVideoPipeline(
        vae=image_vae if sd_vae else tiny_cv_vae(seed), text_encoder=sd.text_encoder, tokenizer=sd.tokenizer,
        unet=sd.unet, motion_adapter=parts.adapter, scheduler=video_scheduler(), conditioning=parts.conditioning,
        image_vae=image_vae, image_scheduler=first_frame_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
