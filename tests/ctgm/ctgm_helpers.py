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
