"""VSTAR Temporal Attention Regularization (TAR): a Gaussian band bonus on temporal attention logits.

VSTAR (Li et al., ICLR 2025) makes each frame attend more to its temporal neighbours, which keeps
longer videos from freezing into one appearance. For one temporal layer, ``S`` the pre-softmax
logits ``Q K^T / sqrt(d)`` of shape ``(B*h*w, heads, F, F)`` (queries i, keys j)::

    A = softmax_j( S + lambda * rowmax(S) * G ),   G_ij = exp(-(i - j)^2 / (2 sigma^2))

``G`` is a symmetric Toeplitz band with unit diagonal; ``rowmax(S)_i = max_k S_ik`` scales the bonus
of row ``i``; ``lambda`` is :attr:`~TemporalAttentionRegularization.strength` (1 in every published
setting). The prompt half of VSTAR (video synopsis prompting) is :mod:`attncraft.video.synopsis`.

Choices (the spec's "must decide" table), each an argument:

* **Layers by downsampling level, not by width.** The reference selects layers whose latent width is
  in a list (64 = full latent, 32 = half) through a formula that hard-codes its 320x512 aspect ratio;
  here ``sigmas`` maps a *level* (0 = full latent resolution, 1 = half, ...) to its ``sigma``, so any
  size and aspect ratio works. On AnimateDiff at 512x512, "64" is level 0 (``down_blocks.0`` and
  ``up_blocks.3``: 10 layers on SD 1.5) and "32" is level 1 (``down_blocks.1``, ``up_blocks.2``: 10).
  Every temporal layer of a level is regularised (``attn1`` and ``attn2`` of each motion module, both
  temporal self-attention; the mid block too when it sits at a chosen level, as on two-level test
  UNets).
* **Presets** (:data:`VSTAR_PRESETS`) keep the reference's names: ``64D4`` means level 0 with sigma 4;
  ``64D1_32D8`` level 0 sigma 1 and level 1 sigma 8. The default is ``64D4`` (for <= 32 frames);
  ``64D1_32D8`` is the one for longer videos.
* **Step gate, inclusive**: active while the 0-based step index ``i <= until_time``. The reference uses
  ``until_time = 13`` with 25 steps (14 steps, 56 %); ``until_fraction`` (default 0.56) converts to
  ``until_time = round(until_fraction * N) - 1`` (rounding half up) so other step counts keep the
  share; ``until_time`` may be given directly. Outside the gate, or with ``strength = 0``, the layers
  take the stock fused path (bit-equal to the pipeline without TAR).
* **CFG**: both halves (the reference runs TAR in both of its separate CFG passes).
* **Negative row maxima**: as the reference (a row whose logits are all negative gets a *penalty* on
  its near-diagonal keys); ``clamp_rowmax=True`` clamps the row max at zero instead.
* **FreeNoise** (sliding windows of frames): TAR applies within each window (the band spans the
  window's frames), and to any slice of a split batch.
* **Numerics**: float32 logits (the processor's explicit path); ``G`` is cached per frame count, sigma
  and device.

What is monotone (rows with a positive row max; ``tests/vstar/test_tar.py``): the attention mass on
``|i - j| <= 1`` grows with ``strength`` (the bonus falls with distance), and the weight of a frame on
itself grows as ``sigma`` shrinks (every off-diagonal bonus shrinks, the diagonal's stays). The
attention-weighted mean ``|i - j|`` is *not* monotone in ``sigma``: on random logits it falls from
sigma 16 to 2 and rises again below (at sigma -> 0 the bonus sits on the diagonal alone and no longer
pulls mass in from distant frames to near ones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.selection import select_layers
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import InputError, TechniqueError
from attncraft.validation import check_finite, check_int_range

__all__ = [
    "DEFAULT_VSTAR_PRESET",
    "VSTAR_PRESETS",
    "TemporalAttentionRegularization",
    "gaussian_band",
    "parse_sigmas",
    "regularize_scores",
    "until_time_for",
]

VSTAR_PRESETS: dict[str, dict[int, float]] = {
    "64D1": {0: 1.0},
    "64D4": {0: 4.0},
    "64D8": {0: 8.0},
    "64D1_32D1": {0: 1.0, 1: 1.0},
    "64D1_32D8": {0: 1.0, 1: 8.0},
    "64D1_32D12": {0: 1.0, 1: 12.0},
    "64D4_32D8": {0: 4.0, 1: 8.0},
    "64D4_32D12": {0: 4.0, 1: 12.0},
}
"""The reference's shipped settings, as {downsampling level: sigma} ("64" = level 0, "32" = level 1).
Its notes: 64D1/64D4 "good" for short videos; 64D1_32D8 "good for longer videos, e.g. 64 frames";
64D1_32D1 "too strong: bad coherency"."""
DEFAULT_VSTAR_PRESET = "64D4"
DEFAULT_UNTIL_FRACTION = 0.56
"""14 of 25 steps, the reference's ``until_time = 13`` with 25 DDIM steps."""


def gaussian_band(num_frames: int, sigma: float, device: torch.device | str | None = None) -> torch.Tensor:
    """``G_ij = exp(-(i - j)^2 / (2 sigma^2))``, ``(F, F)`` float32; the identity for ``sigma = 0``."""
    idx = torch.arange(num_frames, dtype=torch.float64)
    d2 = (idx[:, None] - idx[None, :]).square()
    if sigma == 0:
        band = (d2 == 0).double()
    else:
        band = torch.exp(-d2 / (2.0 * float(sigma) ** 2))
    return band.to(device=device, dtype=torch.float32)


def regularize_scores(scores: torch.Tensor, band: torch.Tensor, strength: float = 1.0, clamp_rowmax: bool = False) -> torch.Tensor:
    """``S + strength * rowmax(S) * G`` over the last two axes (queries, keys); a new tensor."""
    rowmax = scores.amax(-1, keepdim=True)
    if clamp_rowmax:
        rowmax = rowmax.clamp(min=0.0)
    return torch.addcmul(scores, rowmax, band.to(scores.dtype), value=float(strength))


def until_time_for(num_inference_steps: int, until_fraction: float = DEFAULT_UNTIL_FRACTION) -> int:
    """Last active 0-based step: ``round(until_fraction * N) - 1``, rounding half up (13 for N = 25)."""
    return int(math.floor(until_fraction * num_inference_steps + 0.5)) - 1


def parse_sigmas(value: Any, what: str = "VSTAR sigma") -> dict[int, float]:
    """Sigmas per level from a mapping, a number (level 0) or a sequence / comma list (levels 0, 1, ...)."""
    if isinstance(value, Mapping):
        items = [(check_int_range(f"{what} level", k, 0, example=0), v) for k, v in value.items()]
    else:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
        elif isinstance(value, Sequence):
            parts = list(value)
        else:
            parts = [value]
        items = list(enumerate(parts))
    if not items:
        raise InputError(f"{what} is empty", "pass at least one sigma, e.g. 4 or 1,8")
    return {int(level): check_finite(what, sigma, 0.0, example=4) for level, sigma in items}


class TemporalAttentionRegularization(AttentionTechnique):
    """VSTAR TAR on the temporal layers of chosen downsampling levels (see the module docstring).

    ``preset`` names a setting of :data:`VSTAR_PRESETS`; ``sigmas`` (a {level: sigma} mapping, a
    number for level 0, or a list for levels 0, 1, ...) replaces it. ``until_time`` (last active
    0-based step, inclusive) wins over ``until_fraction``.
    """

    name = "vstar"
    supports_split_batches = True  # the bonus is row by row: any slice of the batch gets the same edit

    def __init__(
        self,
        preset: str = DEFAULT_VSTAR_PRESET,
        *,
        sigmas: Any = None,
        strength: float = 1.0,
        until_time: int | None = None,
        until_fraction: float = DEFAULT_UNTIL_FRACTION,
        clamp_rowmax: bool = False,
    ):
        if sigmas is None:
            if preset not in VSTAR_PRESETS:
                raise InputError(f"unknown VSTAR preset {preset!r}", f"pass one of: {', '.join(VSTAR_PRESETS)}")
            self.preset: str | None = preset
            self.sigmas = dict(VSTAR_PRESETS[preset])
        else:
            self.sigmas = parse_sigmas(sigmas)
            # a preset is named only when the sigmas are its own (so settings() round-trips)
            self.preset = preset if VSTAR_PRESETS.get(preset) == self.sigmas else None
        self.strength = check_finite("VSTAR strength", strength, 0.0, example=1)
        self.until_time = None if until_time is None else check_int_range("VSTAR until_time", until_time, -1, example=13)
        self.until_fraction = check_finite("VSTAR until fraction", until_fraction, 0.0, 1.0)
        self.clamp_rowmax = bool(clamp_rowmax)
        super().__init__(select_layers(kinds="temporal", levels=sorted(self.sigmas)))
        self._last_step = -1
        self._bands: dict[tuple[int, float, str], torch.Tensor] = {}

    def last_active_step(self, num_inference_steps: int | None) -> int:
        """The last 0-based step TAR acts on (inclusive)."""
        if self.until_time is not None:
            return self.until_time
        if num_inference_steps is None:
            raise TechniqueError(
                "VSTAR cannot tell how many denoising steps this run has",
                "pass until_time=..., or call get_manager(pipe).start_run(num_inference_steps) before sampling",
            )
        return until_time_for(num_inference_steps, self.until_fraction)

    def on_run_start(self, context: AttentionContext) -> None:
        self._last_step = self.last_active_step(None if self.until_time is not None else context.inference_steps())

    def is_active(self, context: AttentionContext) -> bool:
        return self.strength != 0.0 and 0 <= context.step_index <= self._last_step

    def _band(self, num_frames: int, sigma: float, device: torch.device) -> torch.Tensor:
        key = (num_frames, sigma, str(device))
        band = self._bands.get(key)
        if band is None:
            band = self._bands[key] = gaussian_band(num_frames, sigma, device)
        return band

    def edit_scores(self, call: AttentionCall, scores: torch.Tensor) -> torch.Tensor:
        band = self._band(scores.shape[-1], self.sigmas[call.layer.level], scores.device)
        return regularize_scores(scores, band, self.strength, self.clamp_rowmax)

    def settings(self) -> dict[str, Any]:
        """Everything that reproduces this technique (for sidecars; :meth:`from_settings` reads it back)."""
        return {
            "preset": self.preset, "sigmas": {str(k): v for k, v in sorted(self.sigmas.items())},
            "strength": self.strength, "until_time": self.until_time, "until_fraction": self.until_fraction,
            "clamp_rowmax": self.clamp_rowmax,
        }  # fmt: skip
