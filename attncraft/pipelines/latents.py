"""User-given initial latents in any float dtype, for every attncraft pipeline class.

diffusers' ``prepare_latents`` (Stable Diffusion, SDXL, AnimateDiff) moves given ``latents`` to the
device but keeps their dtype, so float32 noise handed to a float16 pipeline reaches the UNet's
``conv_in`` as float32 and fails (``Input type (float) and bias type (c10::Half) should be the
same``). Shared noise is usually made once in float32 (to be the same on every device and dtype),
so :class:`UserLatentsMixin` casts given latents to the UNet's dtype and the execution device
*before* diffusers scales them, which makes a call with float32 latents identical to a call with the
same latents already cast. Non-float latents are refused with a clear message.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from attncraft.errors import InputError


def cast_latents(latents: torch.Tensor, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """``latents`` on ``device`` in ``dtype``; refuses anything that is not a floating-point tensor."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        kind = latents.dtype if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise InputError(f"initial latents must be a floating-point tensor, not {kind}",
                         "pass noise such as torch.randn(...) (any float dtype; it is cast to the model's)")
    return latents.to(device=device if device is not None else latents.device, dtype=dtype)


class UserLatentsMixin:
    """``prepare_latents`` that accepts given latents of any float dtype (cast to the UNet's dtype and
    the device the pipeline passes); put it before the diffusers pipeline class in the bases."""

    def prepare_latents(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        stock = super().prepare_latents  # type: ignore[misc]
        bound = inspect.signature(stock).bind(*args, **kwargs)
        latents = bound.arguments.get("latents")
        if latents is not None:
            unet = getattr(self, "unet", None)
            dtype = unet.dtype if unet is not None else bound.arguments["dtype"]
            bound.arguments["latents"] = cast_latents(latents, dtype, bound.arguments.get("device"))
        return stock(*bound.args, **bound.kwargs)
