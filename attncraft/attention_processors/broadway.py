"""BroadWay / ByTheWay: Temporal Self-Guidance and Fourier Motion Enhancement on temporal attention.

A training-free edit of the temporal attention maps of a text-to-video UNet with motion modules
(AnimateDiff's ``UNetMotionModel``) during the first denoising steps (arXiv 2410.06241, renamed
ByTheWay at CVPR 2025). For one temporal layer and one UNet call, with ``A`` the post-softmax map
``(B*h*w, heads, F, F)`` (rows are query frames, columns key frames, each row sums to one):

1. **Temporal Self-Guidance (TSG)** - ``A <- (1 - alpha) A + alpha R``, where ``R`` is the map of the
   corresponding motion module of the *reference block* (``up_blocks.1``), taken earlier in the same
   UNet call and resized to this layer's spatial grid.
2. **Fourier Motion Enhancement (FME)** - the FFT of each row over the key axis, the band
   ``H = {F//2 - tau, ..., F//2 + tau}`` (2 tau + 1 bins centred on Nyquist) scaled by ``beta``,
   the inverse FFT, rows renormalised to sum one.
3. **The energy rule** - ``E(A)`` is the mean over rows of ``sum_j A_ij^2``; with ``E1`` the energy
   before TSG and ``E2_l``, ``E2_h`` the low/high band energies after it (Parseval: they add up to
   ``E2``), ``beta_c = sqrt((E1 - E2_l) / E2_h)`` restores ``E1`` exactly, and
   ``beta = max(beta_user, beta_c)`` restores at least it.

For 16 frames and ``tau = 7`` the band is every bin but DC and FME is exactly the affine map
``A' = 1/F + beta (A - 1/F)`` entry by entry (the tests check it).

How this implementation resolves what the published material leaves open (the options of the spec,
section 6), each a constructor argument where the alternative is useful:

* **Placement**: every temporal layer (``attn1`` and ``attn2`` of each motion module, both temporal
  self-attention in diffusers) of the reference up block and of every up block after it
  (``up_blocks.1/2/3`` on SD 1.5: 18 layers); ``blocks`` picks others.
* **"Corresponding module"** (option a): the same motion-module index ``k`` and the same slot
  (``attn1`` with ``attn1``). The reference block runs first in every UNet call (diffusers calls the
  up blocks in index order, and within a block resnet -> attention -> motion module), so its map for
  ``(k, slot)`` exists when a later block needs it.
* **Interpolation** (option a): the reference map is viewed as ``(B, h1, w1, heads, F, F)`` and its
  spatial axes resized to the target grid with ``nearest`` (the default mode of torch's
  ``interpolate``, which the reference snippet calls); ``interpolation="bilinear"``
  (``align_corners=False``) is the alternative. Both keep rows stochastic (convex combinations).
* **Reference block itself** (option a): FME applies there too; TSG is the identity there.
* **Guidance map** (option a): the reference block's *vanilla* map, before its own FME.
* **Held for one call only**: a reference map is tagged with the UNet call it comes from, never used
  in another one, and released as soon as the last layer that reads it has run (or when the next
  call starts).
* **Steps**: denoising steps ``i < floor(step_fraction * N)`` (5 of 25, 10 of 50), ``N`` the run's
  number of steps (from the pipeline's scheduler, or ``num_active_steps`` directly); the window
  restarts with every run, so each FreeInit iteration gets it. Outside it the layers take the stock
  fused path (bit-equal to the pipeline without BroadWay).
* **CFG halves** (option a): energies (so ``beta``) from the conditional half, or from the whole
  batch when guidance is not batched; TSG and FME applied to both halves with the one ``beta``.
* **Negative entries** (option a): kept (ByTheWay, the default); ``clamp_negative=True`` clamps them
  at zero before renormalising (BroadWay v1).
* **beta granularity**: one scalar per layer call. **Undefined beta_c** (``E1 < E2_l`` or an empty
  high band): the numerator is clamped at zero and ``1e-12`` added to the denominator; a high band
  with no energy leaves ``beta = beta_user``.
* **tau**: the literal Nyquist-centred band; a band that does not fit in ``1 .. F-1`` (``tau >
  F//2 - 1``) is refused with a clear error before the first step. ``tau="all_nondc"`` scales every
  non-DC bin, which reproduces the 16-frame behaviour at any frame count.
* **FreeNoise** (sliding windows of frames) is refused: a window's map would be guided by the
  reference map of another window.
* **Numerics**: maps, FFT and energies in float32 (the processor's explicit path already gives
  float32 probabilities in fp16 UNets).

Deviation from the reference code, for speed, not in effect: the FFT, band scaling and inverse FFT
along the key axis are one real ``F x F`` matrix (``Re(IFFT diag(s) FFT)``, built once per frame count
with ``torch.fft`` from the identity), which is exactly linear in the map; the band energy is
``mean(A * (A @ P))`` with ``P`` that same operator for the band alone. The tests check both
against a literal ``torch.fft`` evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.layers import LayerInfo
from attncraft.attention_processors.selection import LayerSelector, select_layers
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import InputError, TechniqueError
from attncraft.validation import check_finite

__all__ = [
    "ALL_NON_DC",
    "BROADWAY_PRESETS",
    "BroadWay",
    "BroadWayPreset",
    "band_energy",
    "band_operator",
    "beta_rule",
    "check_tau",
    "default_reference_block",
    "fourier_motion_enhancement",
    "high_band",
    "resize_reference_map",
    "temporal_energy",
]

ALL_NON_DC = "all_nondc"
"""``tau`` value that scales every bin but DC, at any frame count."""
BETA_EPS = 1e-12


@dataclass(frozen=True)
class BroadWayPreset:
    """Published settings for one base model (BroadWay / ByTheWay README)."""

    tau: int
    alpha: float
    beta: float
    step_fraction: float = 0.2


BROADWAY_PRESETS: dict[str, BroadWayPreset] = {
    "animatediff": BroadWayPreset(tau=7, alpha=0.6, beta=1.5),
    "videocrafter2": BroadWayPreset(tau=7, alpha=0.1, beta=10.0),
}
"""``videocrafter2`` carries that model's published numbers; on an AnimateDiff UNet it is only a
stronger setting (the VideoCrafter2 module mapping is not part of the public material)."""


# --------------------------------------------------------------------------------------------------
# The math, on tensors
# --------------------------------------------------------------------------------------------------


def check_tau(tau: int | str, num_frames: int) -> None:
    """Raise :class:`InputError` unless the high band of ``tau`` fits in ``1 .. num_frames - 1``."""
    if num_frames < 2:
        raise InputError(f"BroadWay needs at least 2 frames, got {num_frames}", "generate 2 frames or more")
    if tau == ALL_NON_DC:
        return
    top = num_frames // 2 - 1
    if top < 0 or not 0 <= int(tau) <= top:
        raise InputError(
            f"BroadWay tau {tau} is too large for {num_frames} frames: the high band F//2-tau .. F//2+tau "
            f"must lie within 1 .. {num_frames - 1}",
            f"pass a tau of at most {top} (--broadway-tau {top}) or tau '{ALL_NON_DC}'",
        )


def high_band(num_frames: int, tau: int | str) -> list[int]:
    """Indices of the FFT bins FME scales (``tau`` checked against ``num_frames`` first)."""
    check_tau(tau, num_frames)
    if tau == ALL_NON_DC:
        return list(range(1, num_frames))
    mid = num_frames // 2
    return list(range(mid - int(tau), mid + int(tau) + 1))


def band_operator(num_frames: int, bins: Iterable[int], device: torch.device | str | None = None) -> torch.Tensor:
    """The real ``F x F`` matrix ``P`` with ``a @ P == Re(ifft(mask * fft(a)))`` for real rows ``a``.

    ``mask`` is 1 on ``bins``, 0 elsewhere. ``P`` is symmetric, and ``sum(a * (a @ P))`` is the
    band's share of ``sum(a**2)`` (Parseval, with the ``1/F`` of the spec's band energy).
    """
    mask = torch.zeros(num_frames, dtype=torch.float64)
    mask[list(bins)] = 1.0
    eye = torch.eye(num_frames, dtype=torch.float64)
    op = torch.fft.ifft(torch.fft.fft(eye, dim=-1) * mask, dim=-1).real
    return op.to(device=device, dtype=torch.float32)


def temporal_energy(probs: torch.Tensor) -> torch.Tensor:
    """``E(A)``: mean over every row of ``sum_j A_ij^2`` (a 0-d tensor, no host sync)."""
    return probs.square().sum(-1).mean()


def band_energy(probs: torch.Tensor, op: torch.Tensor, projected: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of ``(1/F) sum_{k in band} |X_k|^2`` for the band of ``op`` (:func:`band_operator`).

    ``projected`` is ``probs @ op`` when the caller has it already.
    """
    projected = probs @ op if projected is None else projected
    return (probs * projected).sum(-1).mean()


def beta_rule(e1: torch.Tensor, e2: torch.Tensor, e2_high: torch.Tensor, beta_user: float) -> torch.Tensor:
    """``max(beta_user, beta_c)``, ``beta_c = sqrt(max(E1 - E2_l, 0) / (E2_h + eps))``, ``E2_l = E2 - E2_h``.

    A high band without energy (``E2_h <= eps``) gives ``beta_user`` (scaling it could not restore
    anything). Stays a tensor: no host sync inside the UNet call.
    """
    e2_low = e2 - e2_high
    beta_c = torch.sqrt(torch.clamp(e1 - e2_low, min=0.0) / (e2_high + BETA_EPS))
    beta_c = torch.where(e2_high > BETA_EPS, beta_c, torch.zeros_like(beta_c))
    return torch.clamp(beta_c, min=float(beta_user))


def fourier_motion_enhancement(
    probs: torch.Tensor,
    beta: torch.Tensor | float,
    op: torch.Tensor,
    clamp_negative: bool = False,
    projected: torch.Tensor | None = None,
) -> torch.Tensor:
    """FME: the band of ``op`` scaled by ``beta`` over the key axis, rows renormalised to one.

    ``A + (beta - 1) (A @ P)`` equals ``Re(ifft(s * fft(A)))`` with ``s = beta`` on the band and 1
    elsewhere. DC is never in the band, so the row sums are unchanged and the renormalisation only
    matters after ``clamp_negative`` (BroadWay v1) has zeroed negative weights.
    """
    projected = probs @ op if projected is None else projected
    out = probs + (beta - 1.0) * projected
    if clamp_negative:
        out = out.clamp(min=0.0)
    return out / out.sum(-1, keepdim=True)


def resize_reference_map(
    ref: torch.Tensor, ref_hw: tuple[int, int], target_hw: tuple[int, int], mode: str = "nearest"
) -> torch.Tensor:
    """Resize a temporal map ``(B*h1*w1, heads, F, F)`` (rows b-major, then h, then w) to ``(B*h*w, ...)``."""
    (h1, w1), (h, w) = ref_hw, target_hw
    rows, heads, f, g = ref.shape
    if (h1, w1) == (h, w):
        return ref
    batch = rows // (h1 * w1)
    grid = ref.reshape(batch, h1, w1, heads * f * g).permute(0, 3, 1, 2)
    if mode == "nearest":
        grid = F.interpolate(grid, size=(h, w), mode="nearest")
    else:
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(batch * h * w, heads, f, g)


# --------------------------------------------------------------------------------------------------
# The technique
# --------------------------------------------------------------------------------------------------


def default_reference_block(unet: Any) -> int:
    """The up block whose maps guide on ``unet``: ``up_blocks.1`` when it has three up blocks or more
    (SD 1.5, the published choice: the second-coarsest, guiding the two finer ones), else
    ``up_blocks.0`` (two-level UNets such as Shapes and the tiny test UNets, whose ``up_blocks.1`` is
    the last one and would guide nothing). Read from the model, never from its size."""
    blocks = len(getattr(unet, "up_blocks", None) or ())
    return 1 if blocks >= 3 else 0


def _slot(layer: LayerInfo) -> str:
    return layer.name.rsplit(".", 1)[-1]


def _window_end(fraction: float, steps: int) -> int:
    """``floor(fraction * steps)``, robust to the float error of e.g. 0.2 * 25."""
    return int(math.floor(fraction * steps + 1e-9))


class BroadWay(AttentionTechnique):
    """Temporal Self-Guidance + Fourier Motion Enhancement on the temporal layers of up blocks.

    ``preset`` gives tau, alpha, beta and the step fraction (:data:`BROADWAY_PRESETS`); any of them
    may be overridden. ``temporal_self_guidance`` / ``motion_enhancement`` switch the two parts
    (TSG alone, FME alone). ``num_active_steps`` fixes the window in steps instead of a fraction.
    ``record_energy`` keeps, per layer call, the conditional half's energy before TSG, after TSG and
    after FME, and the ``beta`` used (:meth:`energy_log`). See the module docstring for the
    choices made.
    """

    name = "broadway"
    supports_frame_windows = False
    """Guidance pairs each layer's map with the reference block's map of the same call; FreeNoise's
    sliding windows run each layer once per window, which would pair maps of different windows."""

    def __init__(
        self,
        preset: str = "animatediff",
        *,
        alpha: float | None = None,
        beta: float | None = None,
        tau: int | str | None = None,
        step_fraction: float | None = None,
        num_active_steps: int | None = None,
        reference_block: int = 1,
        blocks: Iterable[int] | None = None,
        interpolation: str = "nearest",
        clamp_negative: bool = False,
        temporal_self_guidance: bool = True,
        motion_enhancement: bool = True,
        record_energy: bool = False,
    ):
        if preset not in BROADWAY_PRESETS:
            raise InputError(f"unknown BroadWay preset {preset!r}", f"pass one of: {', '.join(BROADWAY_PRESETS)}")
        base = BROADWAY_PRESETS[preset]
        self.preset = preset
        self.alpha = check_finite("BroadWay alpha", base.alpha if alpha is None else alpha, 0.0, 1.0)
        self.beta = check_finite("BroadWay beta", base.beta if beta is None else beta, 0.0, example=1.5)
        raw_tau = base.tau if tau is None else tau
        if raw_tau != ALL_NON_DC:
            if isinstance(raw_tau, bool) or not isinstance(raw_tau, (int, str)) or not str(raw_tau).lstrip("-").isdigit():
                raise InputError(f"BroadWay tau must be a whole number or '{ALL_NON_DC}', got {raw_tau!r}", "pass e.g. tau 7")
            raw_tau = int(raw_tau)
            if raw_tau < 0:
                raise InputError(f"BroadWay tau must be at least 0, got {raw_tau}", "pass e.g. tau 7")
        self.tau: int | str = raw_tau
        self.step_fraction = check_finite(
            "BroadWay step fraction", base.step_fraction if step_fraction is None else step_fraction, 0.0, 1.0
        )
        if num_active_steps is not None and (isinstance(num_active_steps, bool) or int(num_active_steps) < 0):
            raise InputError(f"BroadWay active steps must be at least 0, got {num_active_steps}", "pass e.g. 5")
        self.num_active_steps = None if num_active_steps is None else int(num_active_steps)
        if interpolation not in ("nearest", "bilinear"):
            raise InputError(f"unknown BroadWay interpolation {interpolation!r}", "pass 'nearest' or 'bilinear'")
        self.interpolation = interpolation
        self.clamp_negative = bool(clamp_negative)
        self.reference_block = int(reference_block)
        self.blocks = None if blocks is None else tuple(sorted({int(b) for b in blocks}))
        self.temporal_self_guidance = bool(temporal_self_guidance)
        self.motion_enhancement = bool(motion_enhancement)
        self.record_energy = bool(record_energy)
        super().__init__(self._selector())
        self._window = 0
        self._operators: dict[tuple[int, str, str], torch.Tensor] = {}
        self._readers: dict[tuple[int | None, str], set[str]] = {}
        self._refs: dict[tuple[int | None, str], list[Any]] = {}
        self._energy: list[dict[str, Any]] = []

    # -- selection -------------------------------------------------------------------------
    def _selector(self) -> LayerSelector:
        ref, blocks = self.reference_block, self.blocks

        def wanted(layer: LayerInfo) -> bool:
            index = layer.block_index
            if index is None:
                return False
            if blocks is not None:
                return index in blocks or index == ref
            return index >= ref

        return select_layers(kinds="temporal", places="up", predicate=wanted)

    def applies_to(self, layer: LayerInfo) -> bool:
        selected = self.selector(layer)
        if selected and layer.block_index != self.reference_block:
            # the layers that read each reference map, so the map is dropped after its last reader
            self._readers.setdefault((layer.attention_index, _slot(layer)), set()).add(layer.name)
        return selected

    def _tsg_on(self) -> bool:
        return self.temporal_self_guidance and self.alpha > 0.0

    def _guides(self, layer: LayerInfo) -> bool:
        """TSG acts on this layer (a selected block after the reference one)."""
        return self._tsg_on() and layer.block_index != self.reference_block

    # -- lifecycle -------------------------------------------------------------------------
    def check_frames(self, num_frames: int) -> None:
        """Raise :class:`InputError` if ``tau`` does not fit ``num_frames`` (call before sampling)."""
        if self.motion_enhancement:
            check_tau(self.tau, num_frames)

    def active_steps(self, num_inference_steps: int) -> int:
        """How many of ``num_inference_steps`` steps BroadWay acts on (the first ones)."""
        if self.num_active_steps is not None:
            return min(self.num_active_steps, num_inference_steps)
        return _window_end(self.step_fraction, num_inference_steps)

    def on_run_start(self, context: AttentionContext) -> None:
        self._refs.clear()
        if context.num_frames is not None:
            self.check_frames(context.num_frames)
        if self.num_active_steps is not None:
            self._window = self.num_active_steps
            return
        steps = context.inference_steps()
        if steps is None:
            raise TechniqueError(
                "BroadWay cannot tell how many denoising steps this run has",
                "pass num_active_steps=..., or call get_manager(pipe).start_run(num_inference_steps) before sampling",
            )
        self._window = self.active_steps(steps)

    def is_active(self, context: AttentionContext) -> bool:
        if not (self._tsg_on() or self.motion_enhancement):
            return False
        active = 0 <= context.step_index < self._window
        if not active and self._refs:
            self._refs.clear()
        return active

    # -- the edit ---------------------------------------------------------------------------
    def _operator(self, num_frames: int, device: torch.device) -> torch.Tensor:
        key = (num_frames, str(self.tau), str(device))
        op = self._operators.get(key)
        if op is None:
            op = band_operator(num_frames, high_band(num_frames, self.tau), device)
            self._operators[key] = op
        return op

    @staticmethod
    def _call_token(context: AttentionContext) -> tuple[int, int, int]:
        return id(context), context.run_index, context.unet_calls

    def _reference_for(self, call: AttentionCall, key: tuple[int | None, str], probs: torch.Tensor) -> torch.Tensor:
        entry = self._refs.get(key)
        if entry is None or entry[0] != self._call_token(call.context):
            raise TechniqueError(
                f"BroadWay found no map of up_blocks.{self.reference_block} motion module {key[0]} {key[1]} "
                f"in this UNet call before {call.layer.name}",
                "choose a reference_block that runs before the guided blocks and has the same motion modules",
            )
        _, ref, ref_hw, remaining = entry
        target_hw = call.resolution
        if ref_hw is None or target_hw is None:
            raise TechniqueError("BroadWay needs the latent size of the UNet call", "run the UNet through a pipeline or pass a 5-D sample")
        resized = resize_reference_map(ref, ref_hw, target_hw, self.interpolation)
        if resized.shape != probs.shape:
            raise TechniqueError(
                f"BroadWay reference map {tuple(resized.shape)} does not match {call.layer.name} {tuple(probs.shape)}",
                "use a reference block with the same heads and frames",
            )
        if remaining <= 1:
            del self._refs[key]
        else:
            entry[3] = remaining - 1
        return resized

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        layer = call.layer
        key = (layer.attention_index, _slot(layer))
        vanilla = probs.float()
        if layer.block_index == self.reference_block and self._tsg_on():
            readers = len(self._readers.get(key, ()))
            if readers:
                self._refs[key] = [self._call_token(call.context), vanilla, call.resolution, readers]
        cond = call.cond_rows()
        guided = vanilla
        if self._guides(layer):
            guided = torch.lerp(vanilla, self._reference_for(call, key, vanilla), self.alpha)
        if not self.motion_enhancement:
            if self.record_energy:
                e1, e2 = temporal_energy(vanilla[cond]), temporal_energy(guided[cond])
                self._log(call, e1, e2, e2, None)
            return guided
        op = self._operator(guided.shape[-1], guided.device)
        projected = guided @ op
        e2 = temporal_energy(guided[cond])
        e1 = temporal_energy(vanilla[cond]) if guided is not vanilla else e2
        beta = beta_rule(e1, e2, band_energy(guided[cond], op, projected[cond]), self.beta)
        out = fourier_motion_enhancement(guided, beta, op, self.clamp_negative, projected)
        if self.record_energy:
            self._log(call, e1, e2, temporal_energy(out[cond]), beta)
        return out

    # -- reporting ---------------------------------------------------------------------------
    def _log(self, call: AttentionCall, e1, e2, e3, beta) -> None:
        self._energy.append({"step": call.step_index, "layer": call.layer.name, "before": e1.detach(),
                             "after_tsg": e2.detach(), "after": e3.detach(),
                             "beta": None if beta is None else beta.detach()})  # fmt: skip

    def energy_log(self, clear: bool = False) -> list[dict[str, Any]]:
        """Per layer call (with ``record_energy``): step, layer, energies before TSG / after TSG /
        after FME on the conditional half, and beta (floats)."""
        rows = [{k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in row.items()} for row in self._energy]
        if clear:
            self._energy.clear()
        return rows

    def settings(self) -> dict[str, Any]:
        """Everything that reproduces this technique (for sidecars; :meth:`from_settings` reads it back)."""
        return {
            "preset": self.preset, "alpha": self.alpha, "beta": self.beta, "tau": self.tau,
            "step_fraction": self.step_fraction, "num_active_steps": self.num_active_steps,
            "reference_block": self.reference_block, "blocks": list(self.blocks) if self.blocks else None,
            "interpolation": self.interpolation, "clamp_negative": self.clamp_negative,
            "temporal_self_guidance": self.temporal_self_guidance, "motion_enhancement": self.motion_enhancement,
        }  # fmt: skip
