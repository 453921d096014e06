"""Fused attention backends for layers where no technique needs the attention map.

``sdpa`` (default) is ``torch.nn.functional.scaled_dot_product_attention``, the same call diffusers'
``AttnProcessor2_0`` makes, so outputs are identical. ``xformers`` uses
``xformers.ops.memory_efficient_attention``; it is available only when the optional ``xformers``
extra is installed *and* the tensors are on CUDA (xformers has no CPU kernels), and it is checked
when the backend is chosen so a bad choice fails early with a clear message.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from attncraft.errors import InputError

BACKENDS = ("sdpa", "xformers")


@lru_cache(maxsize=1)
def xformers_available() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return torch.cuda.is_available()


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise InputError(f"unknown attention backend {name!r}", f"pass one of {', '.join(BACKENDS)}")
    if name == "xformers" and not xformers_available():
        raise InputError(
            "the xformers attention backend needs the xformers package and a CUDA device",
            "install attncraft[xformers] on a CUDA machine, or use --attention-backend sdpa",
        )
    return name


def fused_attention(
    backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention on (batch, heads, tokens, head_dim) tensors, without materialising the map."""
    if backend == "xformers" and query.is_cuda:
        import xformers.ops as xops

        # xformers expects (batch, tokens, heads, head_dim)
        out = xops.memory_efficient_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=mask
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
