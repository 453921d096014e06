"""Tiny video models and call settings shared by the video tests (32x32 frames, 8 frames, 2 steps)."""

from __future__ import annotations

import torch
from diffusers import MotionAdapter

KW = dict(num_frames=8, height=32, width=32, num_inference_steps=2)


def tiny_adapter(seed: int = 0, **overrides) -> MotionAdapter:
    """A MotionAdapter that fits ``tiny_models.sd_unet`` (widths 32/64, one layer per block)."""
    torch.manual_seed(seed)
    cfg = dict(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
               motion_num_attention_heads=4) | overrides
    return MotionAdapter(**cfg).eval()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


_TO_ORIGINAL = ((".attn1.", ".attention_blocks.0."), (".attn2.", ".attention_blocks.1."), (".norm1.", ".norms.0."),
                (".norm2.", ".norms.1."), (".norm3.", ".ff_norm."))


def to_original_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``MotionAdapter`` state dict in the original AnimateDiff file layout
    (``motion_modules.N.temporal_transformer...attention_blocks.0...``, one sinusoidal table per
    attention block): the inverse of diffusers' converter, for building motion-module files offline."""
    out = {}
    for key, value in state.items():
        head, sep, rest = key.partition(".motion_modules.")
        index, _, rest = rest.partition(".")
        rest = "." + rest
        if rest.endswith(".pos_embed.pe"):
            base = rest[: -len(".pos_embed.pe")]
            for k in (0, 1):
                out[f"{head}{sep}{index}.temporal_transformer{base}.attention_blocks.{k}.pos_encoder.pe"] = value.clone()
            continue
        for new, old in _TO_ORIGINAL:
            rest = rest.replace(new, old)
        out[f"{head}{sep}{index}.temporal_transformer{rest}"] = value
    return out
