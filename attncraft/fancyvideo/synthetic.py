"""Synthetic FancyVideo checkpoints: the released key names and shapes, filled with random tensors.

No real FancyVideo checkpoint can be reached where this project is built, so the converter, the
strict loading and the pipelines are tested on files laid out as the release is (see
``attncraft.fancyvideo.convert``):

* motion modules in the original AnimateDiff v2 layout, for every block of the UNet:
  ``{down_blocks.i | mid_block | up_blocks.i}.motion_modules.j.temporal_transformer.`` followed by
  ``norm``, ``proj_in``, ``transformer_blocks.0.attention_blocks.{0,1}.{to_q,to_k,to_v}`` (no bias),
  ``...to_out.0``, ``...pos_encoder.pe`` ``(1, 32, C)``, ``transformer_blocks.0.norms.{0,1}``,
  ``ff.net.0.proj`` ``(8C, C)`` (GEGLU), ``ff.net.2`` ``(C, 4C)``, ``ff_norm``, ``proj_out``; ``C``
  is the block width (320/640/1280/1280 on SD 1.5), 2 modules per down block, 3 per up block, one in
  the mid block;
* ``conv_in.weight`` ``(320, 9, 3, 3)`` and ``conv_in.bias`` ``(320,)``;
* ``fps_embedding.linear.{weight (1280, 320), bias}`` and ``motion_embedding.linear.*`` likewise;
* the DeepSpeed file (``mp_rank_00_model_states.pt``): all of it under ``module``, optionally with
  the spatial UNet's tensors, beside DeepSpeed-style metadata; the third-party single file
  (``FancyVideo_v1.safetensors``): the tensors above and a ``FancyVideo`` marker tensor.

``size="tiny"`` (widths 32/64, one layer per block) fits ``tests/tiny_models.sd_unet``;
``size="full"`` is the SD 1.5 layout (453.2 M motion parameters).
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["SIZES", "build_synthetic_checkpoint", "build_synthetic_res_adapter", "fancyvideo_tensors",
           "motion_module_shapes", "sinusoidal_table"]

SIZES = {
    "tiny": dict(widths=(32, 64), layers_per_block=1, max_len=32),
    "full": dict(widths=(320, 640, 1280, 1280), layers_per_block=2, max_len=32),
}


def sinusoidal_table(max_len: int, width: int) -> torch.Tensor:
    """AnimateDiff's fixed frame-position table ``(1, max_len, width)``: sin on even, cos on odd channels."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(1, max_len, width)
    table[0, :, 0::2] = torch.sin(position * frequency)
    table[0, :, 1::2] = torch.cos(position * frequency)
    return table


def _module_shapes(prefix: str, c: int, max_len: int) -> dict[str, tuple[int, ...]]:
    t = f"{prefix}.temporal_transformer"
    b = f"{t}.transformer_blocks.0"
    shapes: dict[str, tuple[int, ...]] = {f"{t}.norm.weight": (c,), f"{t}.norm.bias": (c,),
                                          f"{t}.proj_in.weight": (c, c), f"{t}.proj_in.bias": (c,)}
    for k in (0, 1):
        a = f"{b}.attention_blocks.{k}"
        shapes.update({f"{a}.to_q.weight": (c, c), f"{a}.to_k.weight": (c, c), f"{a}.to_v.weight": (c, c),
                       f"{a}.to_out.0.weight": (c, c), f"{a}.to_out.0.bias": (c,), f"{a}.pos_encoder.pe": (1, max_len, c),
                       f"{b}.norms.{k}.weight": (c,), f"{b}.norms.{k}.bias": (c,)})
    shapes.update({f"{b}.ff.net.0.proj.weight": (8 * c, c), f"{b}.ff.net.0.proj.bias": (8 * c,),
                   f"{b}.ff.net.2.weight": (c, 4 * c), f"{b}.ff.net.2.bias": (c,),
                   f"{b}.ff_norm.weight": (c,), f"{b}.ff_norm.bias": (c,),
                   f"{t}.proj_out.weight": (c, c), f"{t}.proj_out.bias": (c,)})
    return shapes


def motion_module_shapes(widths=(320, 640, 1280, 1280), layers_per_block: int = 2, max_len: int = 32,
                         mid_block: bool = True) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an AnimateDiff v2 motion module set in the original layout."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(widths):
        for j in range(layers_per_block):
            shapes.update(_module_shapes(f"down_blocks.{i}.motion_modules.{j}", c, max_len))
    if mid_block:
        shapes.update(_module_shapes("mid_block.motion_modules.0", widths[-1], max_len))
    for i, c in enumerate(reversed(widths)):
        for j in range(layers_per_block + 1):
            shapes.update(_module_shapes(f"up_blocks.{i}.motion_modules.{j}", c, max_len))
    return shapes


def fancyvideo_tensors(size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
                       zero_embeddings: bool = False, in_channels: int = 9) -> dict[str, torch.Tensor]:
    """Random tensors with the released names and shapes (see the module doc); ``zero_embeddings``
    zeroes the fps/motion layers (FancyVideo's initialisation)."""
    spec = SIZES[size]
    widths, max_len = spec["widths"], spec["max_len"]
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in motion_module_shapes(widths, spec["layers_per_block"], max_len).items():
        if key.endswith("pos_encoder.pe"):
            out[key] = sinusoidal_table(max_len, shape[-1]).to(dtype)
        elif key.endswith(".weight") and len(shape) == 1:  # norms
            out[key] = (1 + 0.1 * torch.randn(shape, generator=g)).to(dtype)
        else:
            fan_in = shape[-1] if len(shape) > 1 else 1
            out[key] = (torch.randn(shape, generator=g) * (0.5 / math.sqrt(fan_in) if len(shape) > 1 else 0.02)).to(dtype)
    c0, temb = widths[0], 4 * widths[0]
    out["conv_in.weight"] = (torch.randn(c0, in_channels, 3, 3, generator=g) * 0.1).to(dtype)
    out["conv_in.bias"] = (torch.randn(c0, generator=g) * 0.02).to(dtype)
    for name in ("fps_embedding", "motion_embedding"):
        weight = torch.randn(temb, c0, generator=g) / math.sqrt(c0)
        bias = torch.randn(temb, generator=g) * 0.02
        out[f"{name}.linear.weight"] = (weight * (0 if zero_embeddings else 1)).to(dtype)
        out[f"{name}.linear.bias"] = (bias * (0 if zero_embeddings else 1)).to(dtype)
    return out


def _deepspeed_metadata(module: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "buffer_names": [k for k in module if k.endswith(".pe")],
        "optimizer": None,
        "param_shapes": [OrderedDict((k, v.shape) for k, v in module.items() if not k.endswith(".pe"))],
        "frozen_param_shapes": None,
        "shared_params": {},
        "frozen_param_fragments": None,
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 1000,
        "global_samples": 8000,
        "dp_world_size": 8,
        "mp_world_size": 1,
        "ds_config": {"train_micro_batch_size_per_gpu": 1, "fp16": {"enabled": True}},
        "ds_version": "0.14.0",
    }


def build_synthetic_checkpoint(path: str | os.PathLike, size: str = "tiny", layout: str = "deepspeed", seed: int = 0,
                               dtype: torch.dtype = torch.float32, spatial_unet: Any = None,
                               zero_embeddings: bool = False, extra: dict[str, Any] | None = None
                               ) -> dict[str, torch.Tensor]:
    """Write a synthetic FancyVideo checkpoint to ``path`` and return its tensors.

    ``layout``: ``deepspeed`` (a ``torch.save`` pickle, tensors under ``module``) or ``single-file``
    (safetensors with the ``FancyVideo`` marker). ``spatial_unet`` (a ``UNet2DConditionModel``): its
    tensors are added as the spatial UNet part of the DeepSpeed ``module`` (the release stores the
    whole UNet there; its own ``conv_in`` is replaced by the 9-channel one). ``extra``: more
    top-level entries of the DeepSpeed dict (e.g. a non-tensor object)."""
    tensors = fancyvideo_tensors(size, seed, dtype, zero_embeddings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "single-file":
        from safetensors.torch import save_file

        save_file({**tensors, "FancyVideo": torch.zeros(1)}, str(path))
        return tensors
    if layout != "deepspeed":
        raise ValueError(f"unknown layout {layout!r} (deepspeed or single-file)")
    module: dict[str, torch.Tensor] = OrderedDict()
    if spatial_unet is not None:
        for key, value in spatial_unet.state_dict().items():
            if not key.startswith("conv_in."):
                module[key] = value.detach().to(dtype).clone()
    module.update(tensors)
    torch.save({"module": module, **_deepspeed_metadata(module), **(extra or {})}, str(path))
    return tensors


def build_synthetic_res_adapter(folder: str | os.PathLike, unet: Any, rank: int = 16, seed: int = 0,
                                alpha: float | None = None) -> Path:
    """A ResAdapter folder for ``unet`` (a ``UNet2DConditionModel``) with random tensors and the
    released names: a rank-``rank`` LoRA on every down/up sampler convolution (kohya naming,
    ``lora_down`` ``(r, in, 3, 3)``, ``lora_up`` ``(out, r, 1, 1)``, ``alpha`` when given) and new
    weights for every normalisation layer."""
    from safetensors.torch import save_file

    from attncraft.fancyvideo.res_adapter import LORA_FILE, NORM_FILE

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    lora: dict[str, torch.Tensor] = {}
    for part in ("down", "up"):
        for i, block in enumerate(getattr(unet, f"{part}_blocks")):
            samplers = getattr(block, "downsamplers" if part == "down" else "upsamplers", None) or ()
            for j, sampler in enumerate(samplers):
                out_c, in_c = sampler.conv.weight.shape[:2]
                name = f"lora_unet_{part}_blocks_{i}_{'downsamplers' if part == 'down' else 'upsamplers'}_{j}_conv"
                lora[f"{name}.lora_down.weight"] = torch.randn(rank, in_c, 3, 3, generator=g) * 0.05
                lora[f"{name}.lora_up.weight"] = torch.randn(out_c, rank, 1, 1, generator=g) * 0.05
                if alpha is not None:
                    lora[f"{name}.alpha"] = torch.tensor(float(alpha))
    norms = {}
    for name, module in unet.named_modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and getattr(module, "weight", None) is not None:
            norms[f"{name}.weight"] = 1 + 0.1 * torch.randn(module.weight.shape, generator=g)
            norms[f"{name}.bias"] = 0.1 * torch.randn(module.bias.shape, generator=g)
    save_file(lora, str(folder / LORA_FILE))
    save_file(norms, str(folder / NORM_FILE))
    return folder
