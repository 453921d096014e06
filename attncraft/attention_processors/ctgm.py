"""FancyVideo's Cross-frame Textual Guidance Module (CTGM) on an AnimateDiff ``UNetMotionModel``.

CTGM makes the text condition of a text-to-video UNet differ from frame to frame, inside the
spatial cross-attention of every spatial transformer (a *site*: ``down_blocks.i.attentions.j``,
``mid_block.attentions.0``, ``up_blocks.i.attentions.j``). Three trainable parts, named as in the
paper (the mapping from the reference code's ``ctm_b`` / ``ctm_i`` / ``ctm_a`` is the spec's):

* **TII**, Temporal Information Injector (:class:`CTGMSite`, before the site's transformer blocks):
  the site's input latent goes through two AnimateDiff-style temporal modules, and the refined latent
  replaces both the transformer's input and its residual (the reference's latent refinement); then
  the text tokens *query* each frame's latent tokens (:class:`FrameTextInjector`), giving a text
  condition per frame. Frame 0 keeps the incoming condition, bit for bit. Every ``attn2`` of the site
  reads the per-frame text.
* **TAR**, Temporal Affinity Refiner (:meth:`CTGMLayer.refine_scores`, an ``edit_scores`` hook): the
  pre-softmax scores ``S`` of ``attn2``, ``(B*F, heads, h*w, T)``, are viewed as ``(B*heads, T, F, h,
  w)`` (the text tokens are the channels) and frames 1..F-1 go through two temporal modules.
* **TFB**, Temporal Feature Booster (:meth:`CTGMLayer.boost`, an ``edit_output`` hook): the attention
  output before ``to_out`` goes through one temporal module, ``out <- 0.5 out + 0.5 TFB(out)``.

A temporal module (:class:`TemporalModule`) is the AnimateDiff one: GroupNorm, ``proj_in``, one
block of two temporal self-attentions with sinusoidal positions and a GEGLU feed-forward
(diffusers' ``BasicTransformerBlock``, as in its motion modules), a zero-initialised ``proj_out`` and
a residual, so it starts as the identity.

Modes (:data:`MODES`; the reference's names are aliases):

============  ===============================  ==========================================
mode          reference name                   components
============  ===============================  ==========================================
``tar``       ``add_scoremap``                 TAR
``tfb``       ``add_hiddenstate``              TFB
``tii``       ``add_tem_noise_cross_text``     TII (latent refinement + per-frame text)
``tii-text``  ``add_temporal_txt``             per-frame text + two temporal modules over
                                               the text tokens (no latent refinement)
``tii+tar``                                    TII + TAR (the v4 abstract; the default)
``all``       ``all``, ``all_stage_2``         TII + TAR + TFB (the v2 abstract)
============  ===============================  ==========================================

Sites: ``"all"`` (every spatial transformer with cross-attention: 16 on SD 1.5) or ``"part"`` (the
reference's ``part_module``: the first transformer of each down and up block and the mid block's, 7
on SD 1.5). Each ``attn2`` of a site (one per transformer block) has its own TAR and TFB.

Choices, and where this deviates from the reference code (spec sections 2 and 4.2, "must decide"):

* **Identity at initialisation (default)**: TAR's logits are ``S + delta`` and TII's text is
  ``text + proj_out(e)``, so an untrained CTGM leaves the pipeline's output unchanged (TII and TFB
  bit for bit; TAR within float tolerance, because scores need the explicit attention path instead
  of the fused kernel). ``faithful=True`` gives the reference's semantics: TAR adds the refined
  scores to the scores (``2 S + delta``, frame 0 included, a softmax temperature of 0.5 at
  initialisation) and TII mixes ``0.5 proj_out(e) + 0.5 text`` (half the text at initialisation).
  TFB and the latent refinement are the identity at initialisation in both.
* **TFB** is computed as ``out + 0.5 delta`` (``delta`` the module's branch), which is the
  reference's ``0.5 out + 0.5 (out + delta)``.
* **Sizes from the model**: the text tokens ``T`` (TAR's channels) come from the pipeline's
  tokenizer or text encoder (:meth:`CTGM.for_pipeline`; no hard-coded 77), the text width ``D`` from
  ``attn2``, the channels from each site, the longest clip from the adapter's
  ``motion_max_seq_length``. The reference's temporal-module sizes are kept where it has them:
  8 heads, head width ``channels // 8`` (TAR: 77 -> 72), the per-frame text module's width equal to
  the text width. GroupNorm groups: the largest divisor of the channels up to 32 (the reference's
  32, and its 11 for 77 channels).
* **Non-square latents**: h and w come from the UNet call (the reference assumes ``h = w``).
* **GroupNorm per frame**, as the reference's (and AnimateDiff's) temporal modules; diffusers' motion
  modules normalise over all frames of a clip.
* **No sites are skipped** by the text width (the reference builds CTGM only where
  ``cross_attention_dim == 768``): every cross-attention site of the chosen set gets it.
* **Off for single frames** (F = 1), as the reference; frame counts above ``max_frames`` are refused
  with a clear error. No gradient checkpointing is forced (the reference always checkpoints TAR and
  TFB), and the fused kernels (SDPA) run inside the temporal modules, except for TAR's heads of 9,
  which no fused kernel takes: on CUDA they run as two batched matrix products over the frames
  (:class:`ShortSequenceProcessor`, 1.7x faster than SDPA at that shape). At inference on CUDA (fp16 /
  bf16) TAR's two temporal modules run by default as one fused Triton kernel each
  (:mod:`.ctgm_kernels`, ``tar_kernel="auto"``), reading and writing the scores in their own layout.
* **CFG**: both halves, as the reference (one batch).

The trainable parts live in a :class:`CTGM` module *outside* the UNet (its ``state_dict`` keys
follow the UNet's module paths, e.g. ``down_blocks.0.attentions.0.tii_cross.proj_in.weight`` and
``down_blocks.0.attentions.0.transformer_blocks.0.attn2.tar.0.proj_in.weight``), so the UNet's own
weights, processors and ``save_pretrained`` are untouched. :func:`save_ctgm` / :func:`load_ctgm` write
and read one fp16 safetensors file that carries its configuration and layout; loading is strict (every
missing, unexpected or mis-shaped tensor is named) and checks the file against the UNet.
:class:`CrossFrameTextGuidance` is the :class:`~.technique.AttentionTechnique` that runs it: TAR and
TFB as ``edit_scores`` / ``edit_output`` on the sites' ``attn2`` layers, TII as forward pre-hooks on
the sites' transformers (attached in ``on_install``).

Parameter counts: :meth:`CTGM.parameter_counts` (the modules) and :func:`formula_parameter_counts`
(the spec's analytic formula, section 2.5) agree exactly; on the SD 1.5 layout ``all`` is 992.5 M,
TAR 3.72 M, TFB 272.85 M, TII 715.9 M (``tests/ctgm``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

from attncraft.attention_processors.backends import map_batch_chunks
from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.layers import LayerInfo, discover_layers
from attncraft.attention_processors.selection import select_layers
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import InputError, TechniqueError

__all__ = [
    "COMPONENTS",
    "MODES",
    "CTGM",
    "CTGMConfig",
    "CTGMLayer",
    "CTGMSite",
    "CrossFrameTextGuidance",
    "FrameTextInjector",
    "LayerSpec",
    "ShortSequenceProcessor",
    "SiteSpec",
    "TemporalModule",
    "ctgm_layout",
    "ctgm_technique",
    "formula_parameter_counts",
    "frame_attention",
    "group_count",
    "load_ctgm",
    "resolve_ctgm_file",
    "resolve_mode",
    "save_ctgm",
]

COMPONENTS = ("tii_self", "tii_cross", "tii_text", "tar", "tfb")
"""``tii_self``: TII's latent refinement (2 temporal modules on the site's channels); ``tii_cross``:
TII's per-frame text; ``tii_text``: 2 temporal modules over the text tokens (``tii-text`` mode);
``tar``: 2 temporal modules over the scores; ``tfb``: 1 temporal module on the attention output."""

MODES: dict[str, tuple[str, ...]] = {
    "tar": ("tar",),
    "tfb": ("tfb",),
    "tii": ("tii_self", "tii_cross"),
    "tii-text": ("tii_cross", "tii_text"),
    "tii+tar": ("tii_self", "tii_cross", "tar"),
    "all": ("tii_self", "tii_cross", "tar", "tfb"),
}
ALIASES = {
    "add_scoremap": "tar",
    "add_hiddenstate": "tfb",
    "add_tem_noise_cross_text": "tii",
    "add_temporal_txt": "tii-text",
    "all_stage_2": "all",
    "tii+tar+tfb": "all",
}
DEFAULT_MODE = "tii+tar"
SITE_SETS = ("all", "part")
DEFAULT_HEADS = 8
FORMAT_VERSION = 1
METADATA_KEY = "attncraft.ctgm"
TRAINING_METADATA_KEY = "attncraft.ctgm.training"


def resolve_mode(mode: str) -> str:
    """The canonical name of ``mode`` (a name of :data:`MODES` or a reference-code alias)."""
    name = str(mode).strip().lower()
    name = ALIASES.get(name, name)
    if name not in MODES:
        known = ", ".join([*MODES, *ALIASES])
        raise InputError(f"unknown CTGM mode {mode!r}", f"pass one of: {known}")
    return name


def group_count(channels: int, preferred: int = 32) -> int:
    """GroupNorm groups for ``channels``: the largest divisor up to ``preferred`` (32 -> 32, 77 -> 11)."""
    return max(g for g in range(1, min(preferred, channels) + 1) if channels % g == 0)


def _head_width(channels: int, heads: int, what: str) -> int:
    if channels < heads:
        raise InputError(f"CTGM {what} has {channels} channels, fewer than its {heads} heads", "pass fewer heads")
    return channels // heads


# --------------------------------------------------------------------------------------------------
# Trainable modules
# --------------------------------------------------------------------------------------------------


def _zero(linear: nn.Linear) -> nn.Linear:
    nn.init.zeros_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


HEAD_ALIGNMENT = 8
"""Head widths the fused CUDA attention kernels take (a multiple of 8 in half precision)."""

TAR_KERNELS = ("auto", "eager", "triton")
"""How TAR's temporal modules run at inference (:meth:`CTGMLayer.refine_scores`)."""

SHORT_SEQUENCE = 32
"""Longest sequence :class:`ShortSequenceProcessor` computes explicitly (the frame cap of the motion
modules); longer ones go to SDPA."""


def frame_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention over short sequences as two matrix products, the scale and softmax in fp32:
    ``(..., L, d)`` inputs, the output in ``value``'s dtype (:class:`ShortSequenceProcessor`'s form)."""
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    return torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)


class ShortSequenceProcessor:
    """Self-attention of a temporal module over its frames as two batched matrix products on CUDA,
    with the softmax in fp32.

    TAR's temporal modules work on the 77 text tokens as channels (``proj_in`` to 72, 8 heads of 9, the
    reference's sizes) over 65,536 sequences of 15 frames per ``attn2`` at SD 1.5's 64x64 layers. On an
    H200 (``benchmarks/RESULTS.md``, "fifth lease") SDPA is slow at that shape whichever kernel it takes:
    with heads of 9 no fused kernel applies and its math path took 2.54 ms per 32,768 sequences; padding
    each head to 16 lets cuDNN's fused kernel run, and it took 4.18 ms (each kernel tile holds 64 to 128
    queries, here 15); ``q @ k^T``, softmax, ``@ v`` took 1.50 ms (1.15 with the softmax in fp16). One
    TAR temporal module at 64x64 went from 28.7 to 16.9 ms, and a whole 25-step AnimateDiff run at SD 1.5 size with
    TAR on 16 sites from 3.33x to 2.40x stock ("eighth lease"). The scores of 15 or 16 frames are small
    (32,768 x 8 x 16 x 16 in fp32: 268 MB per slice), so nothing is lost by materialising them; past
    ``max_length`` frames the call is SDPA's. The values are those of attention up to rounding (the
    matrix product accumulates in fp32 and returns the scores in the input dtype; scale and softmax run
    in fp32; tested against diffusers' processor). On the CPU (``explicit_on_cpu``
    False) the call is ``AttnProcessor2_0``'s, bit for bit. Only what a temporal module's
    ``BasicTransformerBlock`` uses is supported (self-attention, no mask, no group or spatial norm);
    anything else goes to ``AttnProcessor2_0``.
    """

    def __init__(self, max_length: int = SHORT_SEQUENCE, explicit_on_cpu: bool = False):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.max_length = int(max_length)
        self.explicit_on_cpu = bool(explicit_on_cpu)
        self._stock = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:  # fmt: skip
        plain = (encoder_hidden_states is None and attention_mask is None and attn.group_norm is None
                 and attn.spatial_norm is None and hidden_states.ndim == 3 and attn.norm_q is None
                 and attn.norm_k is None)  # fmt: skip
        if (not plain or hidden_states.shape[1] > self.max_length
                or not (hidden_states.is_cuda or self.explicit_on_cpu)):  # fmt: skip
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        batch, length, _ = hidden_states.shape
        heads = attn.heads
        width = attn.inner_dim // heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, length, heads, width).transpose(1, 2)

        query, key, value = (split(layer(hidden_states)) for layer in (attn.to_q, attn.to_k, attn.to_v))
        out = frame_attention(query, key, value, attn.scale).transpose(1, 2).reshape(batch, length, heads * width)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class TemporalModule(AnimateDiffTransformer3D):
    """An AnimateDiff-style temporal module: ``x + branch(x)``, the branch zero at initialisation.

    Input ``(N*F, C, H, W)`` (N clips of F frames, clip-major); every (clip, h, w) position is a
    sequence of F frames with C channels. GroupNorm is per frame (``norm`` on each ``(C, H, W)``),
    then ``proj_in`` to ``heads * (C // heads)``, one ``BasicTransformerBlock`` with two temporal
    self-attentions (sinusoidal positions up to ``max_frames``) and a GEGLU feed-forward, and the
    zero-initialised ``proj_out`` back to C. Parameter names are those of diffusers' motion modules.
    Head widths that are no multiple of 8 (TAR's 9) run with :class:`ShortSequenceProcessor`.

    The block runs on equal slices of the ``N*H*W`` sequences with at most ``kernel_batch_limit``
    sequences each (:func:`~.backends.map_batch_chunks`; where the attention is diffusers' SDPA call, its
    grid holds the batch alone): TAR has one sequence per (clip, ``attn2`` head, latent pixel),
    2 * 8 * 64 * 64 = 65536 on SD 1.5 at 512x512 with guidance, past the fused kernels' CUDA grid limit
    (two slices of 32768; they also bound the explicit path's scores). Every sequence is independent, so
    the values are those of one call.
    """

    def __init__(self, channels: int, heads: int = DEFAULT_HEADS, max_frames: int = 32):
        super().__init__(
            num_attention_heads=heads, attention_head_dim=_head_width(channels, heads, "temporal module"),
            in_channels=channels, norm_num_groups=group_count(channels), double_self_attention=True,
            activation_fn="geglu", positional_embeddings="sinusoidal", num_positional_embeddings=max_frames,
        )  # fmt: skip
        self.max_frames = max_frames
        self.kernel_batch_limit: int | None = None  # None: backends.MAX_KERNEL_BATCH
        _zero(self.proj_out)
        if _head_width(channels, heads, "temporal module") % HEAD_ALIGNMENT:  # TAR's 9: no fused kernel fits
            for block in self.transformer_blocks:
                for attention in (block.attn1, block.attn2):
                    if attention is not None:
                        attention.set_processor(ShortSequenceProcessor())

    def branch(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The residual branch on ``x`` ``(N*F, C, H, W)``, in the module's dtype."""
        nf, c, h, w = x.shape
        n = nf // num_frames
        # contiguous: GroupNorm's CPU backward crashes on strided (e.g. channels-last) input in torch 2.13
        y = self.norm(x.to(self.proj_in.weight.dtype).contiguous())
        y = y.view(n, num_frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(n * h * w, num_frames, c)
        y = self.proj_in(y)
        y = map_batch_chunks(self._blocks, (y,), 1, self.kernel_batch_limit)
        y = self.proj_out(y)
        return y.view(n, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(nf, c, h, w)

    def _blocks(self, y: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            y = block(y)
        return y

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        """``x + branch(x)``, in ``x``'s dtype (so a zero branch returns ``x`` exactly)."""
        return x + self.branch(x, num_frames).to(x.dtype)


class FrameTextInjector(nn.Module):
    """TII's per-frame text: the text tokens attend to one frame's latent tokens.

    For each frame: the latent ``(C, H, W)`` -> GroupNorm -> ``proj_in`` (C -> D) on its H*W tokens ->
    LayerNorm; ``e = text + Attn(Q = text, K = V = latent tokens)`` (``heads`` heads of ``D // heads``),
    ``e = e + FF(LN(e))`` (GEGLU); the branch is ``proj_out(e)`` (D -> D, zero-initialised).
    """

    def __init__(self, channels: int, text_dim: int, heads: int = DEFAULT_HEADS):
        super().__init__()
        if text_dim % heads:
            raise InputError(f"CTGM text width {text_dim} is not a multiple of {heads} heads", "pass heads dividing it")
        self.norm = nn.GroupNorm(group_count(channels), channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, text_dim)
        self.norm_latent = nn.LayerNorm(text_dim)
        self.attn = Attention(query_dim=text_dim, cross_attention_dim=text_dim, heads=heads, dim_head=text_dim // heads,
                              bias=False)  # fmt: skip
        self.norm_ff = nn.LayerNorm(text_dim)
        self.ff = FeedForward(text_dim, activation_fn="geglu")
        self.proj_out = _zero(nn.Linear(text_dim, text_dim))

    def branch(self, latent: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``proj_out(e)`` for frames ``latent`` ``(N, C, H, W)`` and their text ``(N, T, D)``."""
        dtype = self.proj_in.weight.dtype
        tokens = self.norm(latent.to(dtype).contiguous()).flatten(2).transpose(1, 2)
        tokens = self.norm_latent(self.proj_in(tokens))
        e = text.to(dtype)
        e = e + self.attn(e, encoder_hidden_states=tokens)
        e = e + self.ff(self.norm_ff(e))
        return self.proj_out(e)


class CTGMLayer(nn.Module):
    """TAR and TFB of one ``attn2`` layer (each present when its mode has it)."""

    def __init__(self, spec: LayerSpec, components: Iterable[str], text_tokens: int, heads: int, max_frames: int):
        super().__init__()
        components = set(components)
        self.name = spec.name
        if "tar" in components:
            self.tar = nn.ModuleList([TemporalModule(text_tokens, heads, max_frames) for _ in range(2)])
        if "tfb" in components:
            self.tfb = TemporalModule(spec.inner_dim, heads, max_frames)

    def refine_scores(self, scores: torch.Tensor, num_frames: int, hw: tuple[int, int], faithful: bool,
                      kernel: str = "auto") -> torch.Tensor:  # fmt: skip
        """TAR on pre-softmax scores ``(B*F, heads, h*w, T)``; frame 0 passes through (identity mode)
        or is doubled with the rest (``faithful``).

        ``kernel``: ``"auto"`` (default) the fused Triton kernel (:mod:`.ctgm_kernels`) where it can run
        (a CUDA device, fp16 / bf16 modules, no gradients wanted) and the eager modules elsewhere, also
        after a compile of the kernel failed on the device (warned once); ``"eager"`` the modules;
        ``"triton"`` the kernel or an error saying why it cannot run (also in Triton's CPU interpreter).
        The two paths agree within the rounding of the modules' dtype (the kernel is slightly closer to
        fp32, ``benchmarks/RESULTS.md``).
        """
        if kernel not in TAR_KERNELS:
            raise InputError(f"unknown TAR kernel {kernel!r}", f"pass one of: {', '.join(TAR_KERNELS)}")
        if kernel != "eager":
            from attncraft.attention_processors import ctgm_kernels

            problem = ctgm_kernels.fused_tar_problem(self.tar, scores, num_frames, allow_interpreter=kernel == "triton")
            if problem is None:
                try:
                    out = ctgm_kernels.fused_tar(self.tar, scores, num_frames)
                except ctgm_kernels.compile_errors() as error:
                    dtype = next(self.tar.parameters()).dtype
                    problem = ctgm_kernels.mark_failed(scores, dtype, error)
                    if kernel == "triton":
                        raise TechniqueError(f"TAR's fused kernel cannot run here: {problem}",
                                             "pass tar_kernel='auto' or 'eager'") from None  # fmt: skip
                    warnings.warn(f"TAR runs its eager modules: {problem}", stacklevel=2)
                else:
                    return scores + out if faithful else out
            elif kernel == "triton":
                raise TechniqueError(f"TAR's fused kernel cannot run here: {problem}", "pass tar_kernel='auto' or 'eager'")
        nf, heads, q, t = scores.shape
        b, f, (h, w) = nf // num_frames, num_frames, hw
        grid = scores.view(b, f, heads, h, w, t)
        x = grid[:, 1:].permute(0, 2, 1, 5, 3, 4).reshape(b * heads * (f - 1), t, h, w)
        for module in self.tar:
            x = module(x, f - 1)
        refined = x.view(b, heads, f - 1, t, h, w).permute(0, 2, 1, 4, 5, 3).reshape(b, f - 1, heads, q, t)
        first = scores.view(b, f, heads, q, t)[:, :1]
        out = torch.cat([first, refined], dim=1)
        if faithful:  # S + (S with frames 1.. refined) = 2 S + delta
            out = scores.view(b, f, heads, q, t) + out
        return out.reshape(nf, heads, q, t)

    def boost(self, out: torch.Tensor, num_frames: int, hw: tuple[int, int]) -> torch.Tensor:
        """TFB on the attention output ``(B*F, h*w, inner)``: ``out + 0.5 * branch(out)``."""
        nf, q, c = out.shape
        h, w = hw
        x = out.view(nf, h, w, c).permute(0, 3, 1, 2)
        delta = self.tfb.branch(x, num_frames).permute(0, 2, 3, 1).reshape(nf, q, c)
        return out + 0.5 * delta.to(out.dtype)


class CTGMSite(nn.Module):
    """TII of one spatial transformer (``tii_self``, ``tii_cross``, ``tii_text`` as the mode has them)
    and the :class:`CTGMLayer` of each of its ``attn2`` layers, at ``transformer_blocks.k.attn2``."""

    def __init__(self, spec: SiteSpec, components: Iterable[str], text_tokens: int, heads: int, max_frames: int):
        super().__init__()
        components = tuple(components)
        self.name = spec.name
        if "tii_self" in components:
            self.tii_self = nn.ModuleList([TemporalModule(spec.channels, heads, max_frames) for _ in range(2)])
        if "tii_cross" in components:
            self.tii_cross = FrameTextInjector(spec.channels, spec.text_dim, heads)
        if "tii_text" in components:
            self.tii_text = nn.ModuleList([TemporalModule(spec.text_dim, heads, max_frames) for _ in range(2)])
        self.layers: dict[str, CTGMLayer] = {}
        layer_components = [c for c in components if c in ("tar", "tfb")]
        for layer in spec.layers:
            module = CTGMLayer(layer, layer_components, text_tokens, heads, max_frames)
            _attach(self, layer.name[len(spec.name) + 1:], module)
            self.layers[layer.name] = module

    @property
    def injects(self) -> bool:
        return any(hasattr(self, c) for c in ("tii_self", "tii_cross", "tii_text"))

    def inject(self, hidden: torch.Tensor, text: torch.Tensor, num_frames: int, faithful: bool,
               use: frozenset[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """TII on the transformer's input ``hidden`` ``(B*F, C, H, W)`` and text ``(B*F, T, D)``; returns
        the refined latent and the per-frame text (frame 0's rows are ``text``'s, bit for bit)."""
        f = num_frames
        if "tii_self" in use and hasattr(self, "tii_self"):
            for module in self.tii_self:
                hidden = module(hidden, f)
        cross = "tii_cross" in use and hasattr(self, "tii_cross")
        temporal_text = "tii_text" in use and hasattr(self, "tii_text")
        if not (cross or temporal_text):
            return hidden, text
        nf, t, d = text.shape
        b = nf // f
        # frame 0 is reset to the incoming text: compute it only when later frames depend on it
        start = 0 if temporal_text else 1
        frames = text.view(b, f, t, d)[:, start:]
        new = frames.reshape(-1, t, d)
        if cross:
            latent = hidden.view(b, f, *hidden.shape[1:])[:, start:].reshape(-1, *hidden.shape[1:])
            delta = self.tii_cross.branch(latent, new).to(text.dtype)
            new = 0.5 * delta + 0.5 * new if faithful else new + delta
        if temporal_text:  # the text tokens as "spatial" positions: (B*F, D, T, 1)
            x = new.transpose(1, 2).unsqueeze(-1)
            for module in self.tii_text:
                x = module(x, f)
            new = x.squeeze(-1).transpose(1, 2)
        new = new.reshape(b, f - start, t, d)
        if start == 0:
            new = new[:, 1:]
        out = torch.cat([text.view(b, f, t, d)[:, :1], new], dim=1)
        return hidden, out.reshape(nf, t, d)


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` under the dotted ``path`` of ``root``, creating empty containers on the way."""
    parts = path.split(".")
    parent = root
    for part in parts[:-1]:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        parent = child
    parent.add_module(parts[-1], module)


# --------------------------------------------------------------------------------------------------
# Layout and configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    name: str
    """The ``attn2`` module path, e.g. ``down_blocks.0.attentions.0.transformer_blocks.0.attn2``."""
    heads: int
    inner_dim: int


@dataclass(frozen=True)
class SiteSpec:
    name: str
    """The spatial transformer's module path, e.g. ``down_blocks.0.attentions.0``."""
    channels: int
    text_dim: int
    layers: tuple[LayerSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "text_dim": self.text_dim,
                "layers": [asdict(layer) for layer in self.layers]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteSpec:
        return cls(str(d["name"]), int(d["channels"]), int(d["text_dim"]),
                   tuple(LayerSpec(str(x["name"]), int(x["heads"]), int(x["inner_dim"])) for x in d["layers"]))  # fmt: skip


def _site_of(layer: LayerInfo) -> str:
    return layer.name.split(".transformer_blocks.")[0]


def ctgm_layout(unet: nn.Module, sites: str = "all") -> tuple[SiteSpec, ...]:
    """The CTGM sites of ``unet`` (a ``UNetMotionModel``): every spatial transformer with
    cross-attention (``sites="all"``), or the first one of each down and up block plus the mid block's
    (``"part"``), with their channels, text width and ``attn2`` layers, in call order."""
    if sites not in SITE_SETS:
        raise InputError(f"unknown CTGM site set {sites!r}", "pass 'all' (every cross-attention site) or 'part'")
    layers = [layer for layer in discover_layers(unet).values() if layer.kind == "cross" and layer.place is not None]
    if not layers:
        raise TechniqueError(f"{type(unet).__name__} has no spatial cross-attention", "CTGM needs an AnimateDiff motion UNet")
    if sites == "part":
        layers = [layer for layer in layers if layer.place == "mid" or layer.attention_index == 0]
    order = {"down": 0, "mid": 1, "up": 2}
    layers.sort(key=lambda x: (order[x.place], x.block_index or 0, x.attention_index or 0, x.transformer_index or 0))
    modules = dict(unet.named_modules())
    grouped: dict[str, list[LayerSpec]] = {}
    for layer in layers:
        attn = modules[layer.name]
        grouped.setdefault(_site_of(layer), []).append(LayerSpec(layer.name, int(attn.heads), int(attn.inner_dim)))
    out = []
    for name, specs in grouped.items():
        transformer = modules[name]
        attn = modules[specs[0].name]
        out.append(SiteSpec(name, int(transformer.in_channels), int(attn.cross_attention_dim), tuple(specs)))
    return tuple(out)


@dataclass
class CTGMConfig:
    """Everything that builds a :class:`CTGM` (stored in its safetensors file)."""

    mode: str = DEFAULT_MODE
    sites: str = "all"
    faithful: bool = False
    text_tokens: int = 77
    heads: int = DEFAULT_HEADS
    max_frames: int = 32
    layout: tuple[SiteSpec, ...] = field(default_factory=tuple)

    def __post_init__(self):
        self.mode = resolve_mode(self.mode)
        if self.sites not in SITE_SETS:
            raise InputError(f"unknown CTGM site set {self.sites!r}", "pass 'all' or 'part'")

    @property
    def components(self) -> tuple[str, ...]:
        return MODES[self.mode]

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "mode": self.mode, "sites": self.sites, "faithful": self.faithful,
                "text_tokens": self.text_tokens, "heads": self.heads, "max_frames": self.max_frames,
                "layout": [s.to_dict() for s in self.layout]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CTGMConfig:
        version = int(d.get("version", 0))
        if version != FORMAT_VERSION:
            raise InputError(f"CTGM file format {version} is not the supported {FORMAT_VERSION}", "retrain or convert it")
        return cls(mode=d["mode"], sites=d["sites"], faithful=bool(d["faithful"]), text_tokens=int(d["text_tokens"]),
                   heads=int(d["heads"]), max_frames=int(d["max_frames"]),
                   layout=tuple(SiteSpec.from_dict(s) for s in d["layout"]))  # fmt: skip


def _text_tokens_of(pipe) -> int:
    tokenizer = getattr(pipe, "tokenizer", None)
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 100_000:
        return length
    encoder = getattr(pipe, "text_encoder", None)
    length = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if isinstance(length, int) and length > 0:
        return length
    raise TechniqueError("cannot tell how many text tokens this pipeline's prompts have",
                         "pass text_tokens=... to CTGM.for_unet")  # fmt: skip


class CTGM(nn.Module):
    """The trainable CTGM of one UNet layout: a :class:`CTGMSite` per site, under the site's path."""

    def __init__(self, config: CTGMConfig):
        super().__init__()
        if not config.layout:
            raise InputError("a CTGM needs at least one site", "build it with CTGM.for_unet(unet)")
        self.config = config
        self.source: Path | None = None
        """The file it was loaded from (:func:`load_ctgm`), else None."""
        self.training_record: dict[str, Any] | None = None
        """What the file says about the training run that made it, if anything."""
        self.sites: dict[str, CTGMSite] = {}
        self.layers: dict[str, CTGMLayer] = {}
        for spec in config.layout:
            site = CTGMSite(spec, config.components, config.text_tokens, config.heads, config.max_frames)
            _attach(self, spec.name, site)
            self.sites[spec.name] = site
            self.layers.update(site.layers)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def for_unet(cls, unet: nn.Module, *, text_tokens: int, mode: str = DEFAULT_MODE, sites: str = "all",
                 faithful: bool = False, heads: int = DEFAULT_HEADS, max_frames: int | None = None) -> CTGM:
        """A fresh (identity, or ``faithful``) CTGM for ``unet``'s layout; ``text_tokens`` is the prompt
        length of the pipeline's text encoder (TAR's channels)."""
        if max_frames is None:
            config = getattr(unet, "config", None) or {}
            max_frames = int(config.get("motion_max_seq_length", None) or 32)
        config = CTGMConfig(mode=mode, sites=sites, faithful=bool(faithful), text_tokens=int(text_tokens),
                            heads=int(heads), max_frames=int(max_frames), layout=ctgm_layout(unet, sites))  # fmt: skip
        return cls(config)

    @classmethod
    def for_pipeline(cls, pipe, **kwargs) -> CTGM:
        """:meth:`for_unet` on ``pipe.unet``, the text tokens from its tokenizer / text encoder."""
        kwargs.setdefault("text_tokens", _text_tokens_of(pipe))
        return cls.for_unet(pipe.unet, **kwargs)

    # -- facts -----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def components(self) -> tuple[str, ...]:
        return self.config.components

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component (:data:`COMPONENTS`) and ``total``, counted on the modules."""
        counts = dict.fromkeys(COMPONENTS, 0)
        for name, param in self.named_parameters():
            part = next(p for p in name.split(".") if p in COMPONENTS)
            counts[part] += param.numel()
        counts["total"] = sum(counts[c] for c in COMPONENTS)
        return counts

    def check_fits(self, unet: nn.Module) -> None:
        """Raise :class:`TechniqueError` unless ``unet`` has exactly this CTGM's sites and sizes."""
        try:
            layout = ctgm_layout(unet, self.config.sites)
        except TechniqueError as exc:
            raise TechniqueError(f"CTGM cannot run on this model: {exc.problem}", exc.fix) from None
        if layout == self.config.layout:
            return
        mine = {s.name: s for s in self.config.layout}
        theirs = {s.name: s for s in layout}
        missing = sorted(set(mine) - set(theirs))
        extra = sorted(set(theirs) - set(mine))
        if missing or extra:
            what = (f"sites {', '.join(missing[:3])} are not in this UNet" if missing
                    else f"this UNet has sites {', '.join(extra[:3])} the CTGM lacks")  # fmt: skip
        else:
            name = next(n for n in mine if mine[n] != theirs[n])
            a, b = mine[name], theirs[name]
            what = (f"site {name} has {b.channels} channels, {b.text_dim}-d text and attn2 "
                    f"{[(x.heads, x.inner_dim) for x in b.layers]} here, the CTGM was made for {a.channels}, "
                    f"{a.text_dim}-d, {[(x.heads, x.inner_dim) for x in a.layers]}")  # fmt: skip
        raise TechniqueError(f"this CTGM was made for another UNet layout: {what}", "train a CTGM for this model")

    def technique(self, **kwargs) -> CrossFrameTextGuidance:
        return CrossFrameTextGuidance(self, **kwargs)


# --------------------------------------------------------------------------------------------------
# The analytic parameter count (the spec's formula)
# --------------------------------------------------------------------------------------------------


def _temporal_module_params(channels: int, heads: int) -> int:
    """GroupNorm 2C; proj_in Cd + d; 2 attentions (q, k, v without bias, out with bias) and their
    LayerNorms 2 (4d^2 + 3d); GEGLU feed-forward 12 d^2 + 9d and its LayerNorm 2d; proj_out dC + C."""
    c, d = channels, heads * (channels // heads)
    return 2 * c * d + 20 * d * d + 3 * c + 18 * d


def _text_injector_params(channels: int, text_dim: int) -> int:
    """GroupNorm 2C; proj_in CD + D; LayerNorm 2D; attention 4 D^2 + D; LayerNorm 2D; GEGLU 12 D^2 + 9D;
    proj_out D^2 + D."""
    c, d = channels, text_dim
    return c * d + 17 * d * d + 2 * c + 16 * d


def formula_parameter_counts(layout: Iterable[SiteSpec], mode: str, text_tokens: int,
                             heads: int = DEFAULT_HEADS) -> dict[str, int]:
    """The spec's analytic parameter count of CTGM (section 2.5) per component and ``total``,
    computed from the layout alone (no modules are built)."""
    parts = MODES[resolve_mode(mode)]
    counts = dict.fromkeys(COMPONENTS, 0)
    for site in layout:
        if "tii_self" in parts:
            counts["tii_self"] += 2 * _temporal_module_params(site.channels, heads)
        if "tii_cross" in parts:
            counts["tii_cross"] += _text_injector_params(site.channels, site.text_dim)
        if "tii_text" in parts:
            counts["tii_text"] += 2 * _temporal_module_params(site.text_dim, heads)
        for layer in site.layers:
            if "tar" in parts:
                counts["tar"] += 2 * _temporal_module_params(text_tokens, heads)
            if "tfb" in parts:
                counts["tfb"] += _temporal_module_params(layer.inner_dim, heads)
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def save_ctgm(ctgm: CTGM, path: str | os.PathLike, dtype: torch.dtype = torch.float16,
              training: Mapping[str, Any] | None = None) -> Path:
    """Write ``ctgm``'s parameters (``dtype``, default fp16) and configuration to one safetensors file,
    atomically; ``training`` (JSON-able) is stored beside the configuration."""
    from safetensors.torch import save_file

    from attncraft.outputs import atomic_path, to_strict_json

    tensors = {name: p.detach().to(device="cpu", dtype=dtype).contiguous() for name, p in ctgm.named_parameters()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(ctgm.config.to_dict())}
    if training is not None:
        metadata[TRAINING_METADATA_KEY] = to_strict_json(dict(training))
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_ctgm_metadata(path: str | os.PathLike) -> tuple[CTGMConfig, dict[str, Any] | None]:
    """The configuration (and training record, if any) stored in a CTGM file, without loading tensors."""
    from safetensors import safe_open

    from attncraft.validation import check_input_file

    path = check_input_file(path, "CTGM weights", suffixes=(".safetensors",))  # never a pickle
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # a truncated or foreign file
        from attncraft.errors import short_reason

        raise InputError(f"CTGM weights {path} cannot be read ({short_reason(exc)})", "pass a file written by save_ctgm") from None
    if METADATA_KEY not in metadata:
        raise InputError(f"{path} is not a CTGM file (no {METADATA_KEY} metadata)", "pass a file written by save_ctgm")
    config = CTGMConfig.from_dict(json.loads(metadata[METADATA_KEY]))
    training = json.loads(metadata[TRAINING_METADATA_KEY]) if TRAINING_METADATA_KEY in metadata else None
    return config, training


def load_ctgm(path: str | os.PathLike, unet: nn.Module | None = None, *, device: Any = None,
              dtype: torch.dtype | None = None) -> CTGM:
    """A :class:`CTGM` from a file of :func:`save_ctgm`, loaded strictly: any tensor missing from the
    file, not expected by its configuration, or of the wrong shape is named in the error. With
    ``unet``, the file must fit that UNet's layout (:meth:`CTGM.check_fits`)."""
    from safetensors.torch import load_file

    from attncraft.checkpoints import strict_mismatches

    config, training = read_ctgm_metadata(path)
    ctgm = CTGM(config)
    if unet is not None:
        ctgm.check_fits(unet)
    tensors = load_file(str(path))
    params = dict(ctgm.named_parameters())
    problems = strict_mismatches(params, tensors)
    if problems:
        raise InputError(f"CTGM weights {path} do not match their '{config.mode}' configuration: {'; '.join(problems)}",
                         "pass the file save_ctgm wrote, unmodified")  # fmt: skip
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name])
    ctgm.training_record = training
    ctgm.source = Path(path)
    if device is not None or dtype is not None:
        ctgm.to(device=device, dtype=dtype)
    return ctgm.eval().requires_grad_(False)


SHAPES_ALIASES = {"shapes": "ctgm-tii-tar.safetensors", "shapes-tii-tar": "ctgm-tii-tar.safetensors",
                  "shapes-all": "ctgm-all.safetensors"}
"""``--ctgm shapes`` (TII + TAR) and ``shapes-all``: the trained Shapes CTGMs in ``assets/models/shapes-ctgm``."""


def resolve_ctgm_file(reference: str | os.PathLike) -> Path:
    """The CTGM file a reference names (a path, or a :data:`SHAPES_ALIASES` name), checked to be a
    CTGM file (its configuration is read, no tensors)."""
    ref = str(reference).strip()
    if ref.lower() in SHAPES_ALIASES:
        from attncraft.shapes.models import SHAPES_CTGM_DIR

        path = SHAPES_CTGM_DIR / SHAPES_ALIASES[ref.lower()]
        if not path.is_file():
            raise InputError(f"the Shapes CTGM {ref!r} is not in {SHAPES_CTGM_DIR} (not trained yet)",
                             "pass a CTGM file, or train one with tools/gpu/train_shapes_ctgm.sh")  # fmt: skip
    else:
        path = Path(ref).expanduser()
    read_ctgm_metadata(path)
    return path


def ctgm_technique(pipe, ctgm: Any, components: Iterable[str] | None = None) -> CrossFrameTextGuidance:
    """The :class:`CrossFrameTextGuidance` for ``ctgm`` on ``pipe`` (anything with a ``unet``): a file
    path or Shapes alias (loaded strictly against the UNet, and kept on the pipeline so later calls with
    the same unchanged file reuse it), a :class:`CTGM`, or a technique (returned as it is)."""
    if isinstance(ctgm, CrossFrameTextGuidance):
        return ctgm
    if isinstance(ctgm, CTGM):
        ctgm.check_fits(pipe.unet)
        return CrossFrameTextGuidance(ctgm, components=components)
    path = resolve_ctgm_file(ctgm)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, id(pipe.unet))
    cached = getattr(pipe, "_attncraft_ctgm", None)
    if cached is None or cached[0] != key:
        cached = (key, load_ctgm(path, pipe.unet))
        pipe._attncraft_ctgm = cached
    return CrossFrameTextGuidance(cached[1], components=components)


def file_fingerprint(path: str | os.PathLike) -> str:
    """First 16 hex digits of the file's sha256 (what a sidecar records to name the weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# The technique
# --------------------------------------------------------------------------------------------------


class CrossFrameTextGuidance(AttentionTechnique):
    """CTGM on a motion UNet: TII as pre-hooks on the sites' transformers, TAR / TFB on their ``attn2``.

    ``ctgm`` is a :class:`CTGM` (or a path to a file of :func:`save_ctgm`). ``components`` (a subset of
    the CTGM's) switches parts off at inference; default: all the mode has. With ``follow_unet``
    (default) the CTGM moves to the device and dtype of the UNet's activations at each call; trainers
    pass ``follow_unet=False`` and place it themselves. ``tar_kernel`` (``"auto"``, ``"eager"``,
    ``"triton"``) says how TAR's temporal modules run (:meth:`CTGMLayer.refine_scores`): by default
    (``"auto"``) as the fused Triton kernel of :mod:`.ctgm_kernels` where it can (CUDA, fp16 / bf16, no
    gradients), which cut a whole AnimateDiff run with TAR on 16 sites from 2.41x to 1.58x stock on an
    H200 (``benchmarks/RESULTS.md``), and as PyTorch modules elsewhere; ``"eager"`` always the modules.

    Runs before map-editing techniques on the same layers (``order`` 50: CTGM is a part of the model,
    other techniques edit what the model computes). On a run with VSTAR or BroadWay (temporal layers)
    there is no shared layer: in every transformer block the order is TII -> attn1 -> attn2 (scores,
    TAR, softmax, output, TFB) -> feed-forward, then the motion module with VSTAR's TAR -> softmax ->
    BroadWay.
    """

    name = "ctgm"
    order = 50

    def __init__(self, ctgm: CTGM | str | os.PathLike, *, components: Iterable[str] | None = None,
                 follow_unet: bool = True, tar_kernel: str = "auto"):
        if not isinstance(ctgm, CTGM):
            ctgm = load_ctgm(ctgm)
        self.ctgm = ctgm
        have = set(ctgm.components)
        if components is None:
            use = have
        else:
            use = {str(c) for c in components}
            unknown = sorted(use - have)
            if unknown:
                raise InputError(f"CTGM mode '{ctgm.mode}' has no {', '.join(unknown)}",
                                 f"choose among {', '.join(ctgm.components)}")  # fmt: skip
        self.use = frozenset(use)
        self.follow_unet = bool(follow_unet)
        if tar_kernel not in TAR_KERNELS:
            raise InputError(f"unknown TAR kernel {tar_kernel!r}", f"pass one of: {', '.join(TAR_KERNELS)}")
        self.tar_kernel = tar_kernel
        names = frozenset(ctgm.layers)
        super().__init__(select_layers(kinds="cross", predicate=lambda layer: layer.name in names))
        self._hooks: dict[int, list] = {}
        self._contexts: dict[int, AttentionContext] = {}
        self._placed: tuple[torch.device, torch.dtype] | None = None

    # -- what runs where -------------------------------------------------------------------
    @property
    def faithful(self) -> bool:
        return self.ctgm.config.faithful

    @property
    def refines_scores(self) -> bool:
        return "tar" in self.use

    def needs_maps(self, layer: LayerInfo) -> bool:
        return self.refines_scores

    def is_active(self, context: AttentionContext) -> bool:
        return context.num_frames is not None and context.num_frames > 1

    # -- lifecycle -------------------------------------------------------------------------
    def on_install(self, manager) -> None:
        self.ctgm.check_fits(manager.unet)
        self._contexts[id(manager)] = manager.context
        self._attach_hooks(manager)

    def on_remove(self, manager) -> None:
        for handle in self._hooks.pop(id(manager), []):
            handle.remove()
        self._contexts.pop(id(manager), None)

    def _attach_hooks(self, manager) -> None:
        for handle in self._hooks.pop(id(manager), []):
            handle.remove()
        handles = []
        if self.use & {"tii_self", "tii_cross", "tii_text"}:
            for name, site in self.ctgm.sites.items():
                module = manager.unet.get_submodule(name)
                hook = _SiteHook(self, site, manager.context)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        self._hooks[id(manager)] = handles

    def on_run_start(self, context: AttentionContext) -> None:
        frames = context.num_frames
        if frames is not None and frames > self.ctgm.config.max_frames:
            raise TechniqueError(
                f"CTGM's temporal modules hold at most {self.ctgm.config.max_frames} frames, this run has {frames}",
                "generate fewer frames (or train a CTGM with a larger max_frames)",
            )

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Follow the UNet's device and dtype (one comparison per call once placed)."""
        if not self.follow_unet or self._placed == (device, dtype):
            return
        self.ctgm.to(device=device, dtype=dtype)
        self._placed = (device, dtype)

    def _resolution(self, call: AttentionCall) -> tuple[int, int]:
        hw = call.resolution
        if hw is None:
            raise TechniqueError(f"CTGM needs the latent size of the UNet call at {call.layer.name}",
                                 "run the UNet with a 5-D sample (batch, channels, frames, height, width)")  # fmt: skip
        return hw

    # -- hooks -----------------------------------------------------------------------------
    def edit_scores(self, call: AttentionCall, scores: torch.Tensor) -> torch.Tensor:
        if not self.refines_scores:
            return scores
        tokens = scores.shape[-1]
        if tokens != self.ctgm.config.text_tokens:
            raise TechniqueError(f"CTGM's TAR was trained for {self.ctgm.config.text_tokens} text tokens, "
                                 f"{call.layer.name} gets {tokens}", "use the text encoder the CTGM was trained with")  # fmt: skip
        self._place(scores.device, call.query.dtype)
        layer = self.ctgm.layers[call.layer.name]
        return layer.refine_scores(scores, call.num_frames, self._resolution(call), self.faithful, self.tar_kernel)

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        if "tfb" not in self.use:
            return output
        self._place(output.device, output.dtype)
        layer = self.ctgm.layers[call.layer.name]
        return layer.boost(output, call.num_frames, self._resolution(call))

    # -- reporting -------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """What reproduces this technique (for sidecars): the file and its fingerprint when loaded
        from one, the mode, the parts in use, the semantics and the sites."""
        source = self.ctgm.source
        config = self.ctgm.config
        return {
            "file": str(source) if source is not None else None,
            "sha256_16": file_fingerprint(source) if source is not None else None,
            "mode": config.mode, "components": sorted(self.use), "faithful": config.faithful,
            "sites": config.sites, "num_sites": len(config.layout), "text_tokens": config.text_tokens,
            "max_frames": config.max_frames, "tar_kernel": self.tar_kernel,
        }  # fmt: skip


class _SiteHook:
    """Forward pre-hook of one site's spatial transformer: TII on its input and text."""

    def __init__(self, technique: CrossFrameTextGuidance, site: CTGMSite, context: AttentionContext):
        self.technique, self.site, self.context = technique, site, context

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        technique = self.technique
        if not technique.is_active(self.context):
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        text = kwargs.get("encoder_hidden_states")
        if text is None:
            return None
        extra = None
        if isinstance(text, tuple):  # IP-Adapter: (text, image tokens); TII rewrites the text only
            text, extra = text[0], text[1:]
        frames = self.context.num_frames
        if hidden.shape[0] % frames or text.shape[0] != hidden.shape[0]:
            raise TechniqueError(f"CTGM at {self.site.name}: {hidden.shape[0]} latent rows and {text.shape[0]} text "
                                 f"rows do not make clips of {frames} frames", "pass one text row per frame")  # fmt: skip
        technique._place(hidden.device, hidden.dtype)
        hidden, text = self.site.inject(hidden, text, frames, technique.faithful, technique.use)
        if extra is not None:
            text = (text, *extra)
        kwargs["encoder_hidden_states"] = text
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden
        else:
            args = (hidden, *args[1:])
        return args, kwargs
