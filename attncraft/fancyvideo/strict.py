"""Strict ``from_pretrained`` for the FancyVideo parts: every tensor present, none extra, all shapes right."""

from __future__ import annotations

import os
from typing import Any

import torch

from attncraft.checkpoints import check_pickle_trust
from attncraft.errors import ModelLoadError, short_reason

REBUILT_BUFFERS = ("pos_embed.pe",)
"""Buffers a model rebuilds from its config (motion modules' sinusoidal tables): never missing."""


def strict_from_pretrained(cls, folder: str | os.PathLike, what: str, fix: str, dtype: torch.dtype | None = None,
                           trust_pickle: bool = False) -> Any:
    """``cls.from_pretrained(folder)`` in eval mode, or a one-line :class:`ModelLoadError` naming the
    first missing, unexpected or mis-shaped tensor (``fix`` says what to do). Pickled weights need
    ``trust_pickle``."""
    check_pickle_trust(folder, what, trust_pickle)
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                          use_safetensors=None if trust_pickle else True,
                                          **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot load the {what} in {str(folder)!r}: {short_reason(exc, 200)}", fix) from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(REBUILT_BUFFERS)]
    unexpected = list(info.get("unexpected_keys", []))
    mismatched = [k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise ModelLoadError(f"the {what} in {str(folder)!r} does not match its config ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped tensors, e.g. {first})", fix)
    return model.eval()
