"""Helpers of the CTGM tests: one UNet call of the tiny motion UNet, and CTGMs whose
zero-initialised outputs are given random values (an "as if trained" CTGM)."""

from __future__ import annotations

import torch

from attncraft.attention_processors import apply_techniques
from attncraft.attention_processors.ctgm import CTGM


def trained_like(ctgm: CTGM, seed: int = 0, std: float = 0.05) -> CTGM:
    """``ctgm`` with every zero-initialised ``proj_out`` drawn at random (so each part acts)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in ctgm.named_parameters():
            if ".proj_out." in name or name.startswith("proj_out."):
                param.copy_(torch.randn(param.shape, generator=g) * std)
    return ctgm


FRAMES, HW = 3, (4, 4)
"""Clips of the UNet-call tests: 3 frames of 4x4 latents (8x8 pixels), 2 clips, no guidance."""


def unet_inputs(frames: int = FRAMES, hw: tuple[int, int] = HW, batch: int = 2, seed: int = 0, text_dim: int = 32):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, frames, *hw, generator=g)
    text = torch.randn(batch, 1, 77, text_dim, generator=g).expand(batch, frames, 77, text_dim).reshape(-1, 77, text_dim)
    return sample, text.contiguous()


@torch.no_grad()
def call_unet(unet, *techniques, frames: int = FRAMES, hw: tuple[int, int] = HW, seed: int = 0, timestep: int = 500):
    sample, text = unet_inputs(frames, hw, seed=seed)
    with apply_techniques(unet, *techniques):
        return unet(sample, timestep, encoder_hidden_states=text).sample


def write_tiny_video_model(root) -> tuple[str, str]:
    """A tiny random SD folder (cross-attention with 2 heads at one 8x8 level for 32 px frames) and a
    tiny random motion adapter for it, under ``root``; returns their paths (as the scripts take them)."""
    from pathlib import Path

    from diffusers import MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    import tiny_models as tm
    from attncraft.tokenizer import load_clip_tokenizer

    root = Path(root)
    sd, adapter = root / "sd", root / "adapter"
    if not (sd / "model_index.json").is_file():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, norm_num_groups=8, attention_head_dim=2,  # diffusers: 2 heads
        )  # fmt: skip
        StableDiffusionPipeline(
            vae=tm.vae(0), text_encoder=CLIPTextModel(tm.text_config()), tokenizer=load_clip_tokenizer(), unet=unet,
            scheduler=tm.scheduler("v_prediction"), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        ).save_pretrained(sd)  # fmt: skip
        MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=2,
                      motion_num_attention_heads=2).save_pretrained(adapter)  # fmt: skip
    return str(sd), str(adapter)
