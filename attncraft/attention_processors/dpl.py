"""Dynamic Prompt Learning (DPL, Wang et al. 2023): the losses, thresholds, background mask and the
hooks the optimisation uses. The loop that interleaves it with null-text inversion is in
:mod:`attncraft.pipelines.dpl`.

Everything here is a pure function or a small hook, testable alone:

* :func:`attention_balancing_loss`, :func:`disjoint_loss`, :func:`background_loss` and
  :func:`dpl_losses` - the three losses on aggregated cross-attention maps ``A`` of shape
  ``(..., h, w, keys)`` (any leading batch dimensions: one value per scene);
* :func:`thresholds` - the gradual-optimisation thresholds ``T_at, T_bg, T_dj`` of step ``i``;
* :class:`LossMaps` - an observer that keeps the head-mean cross-attention maps *with their
  gradient* on the map-level layers (output from the fused kernel);
* :func:`background_masks` - self-attention k-means labelled by the nouns' cross-attention maps;
* :class:`TokenSplice` - puts the dynamic tokens' vectors at their positions of the text encoder's
  token embeddings, so no row of the embedding matrix is ever changed and only the vectors get
  gradients (the reference optimises the whole matrix and restores the other rows each step);
* :func:`stop_after` - ends a UNet forward once the loss layers have run (nothing after them
  reaches the losses).

Deviations from the reference code (see the DPL spec, section 12):

* L_dj with fewer than two dynamic tokens is 0 (the reference averages an empty set: NaN), with a
  warning; a scene without a background cluster drops L_bg (the reference crashes), and says so.
* The map average counts the steps it averages (the reference divides by a fixed 50).
* The background mask is downsampled with nearest (default) or area >= 0.5; ``"reference"``
  reproduces the reference's dilating resize-then-any-nonzero.
* k-means is the project's own (k-means++ seeding, Lloyd iterations, ``n_init`` restarts, seeded
  torch generator): scikit-learn is not a dependency, so labels are not bit-identical to the
  reference's, only equivalent.
* The Gaussian of L_at is Attend-and-Excite's smoothing kernel, as the reference uses it:
  weights ``exp(-(x / (2 sigma))^2)`` normalised, i.e. a Gaussian of standard deviation
  ``sigma * sqrt(2)`` (0.71 px for the reference's sigma 0.5), 3x3, reflect padding.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attncraft.attention_processors.context import AttentionCall
from attncraft.attention_processors.layers import LayerInfo
from attncraft.attention_processors.selection import LayerSelector
from attncraft.attention_processors.technique import OBSERVE_ORDER, AttentionTechnique
from attncraft.errors import InputError
from attncraft.validation import check_finite, check_int_range

log = logging.getLogger("attncraft.dpl")

# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass
class DPLConfig:
    """DPL's hyperparameters; the defaults are the reference's (``DPL.sh``, supplementary section D)."""

    token_steps: int = 21
    """Token-update iterations per timestep (``ATTN_STEP``); <= 1 turns the token update off."""
    lambda_at: float = 1.0
    alpha_at: float = 25.0
    beta_at: float = 0.3
    lambda_bg: float = 0.05
    alpha_bg: float = 50.0
    beta_bg: float = 0.7
    bg_start: int = 0
    """First step with the background loss (``max_iter_to_alter``)."""
    lambda_dj: float = 0.05
    alpha_dj: float = 25.0
    beta_dj: float = 0.9
    lr: float = 1e-3
    """AdamW learning rate of the placeholder vectors (torch's default, as the reference)."""
    weight_decay: float = 1e-2
    """AdamW weight decay (torch's default), on the placeholder vectors only."""
    softmax_temperature: float = 100.0
    smooth_sigma: float = 0.5
    clusters: int = 5
    cluster_restarts: int = 10
    cluster_seed: int = 1
    label_threshold: float = 0.2
    bg_downsample: str = "nearest"
    """``nearest`` (default), ``area`` (area average >= 0.5) or ``reference`` (dilating)."""
    precision: str = "fp32"
    """Precision of the optimisation passes (token updates and null-text): ``fp32`` (default, as the
    reference and the spec), ``tf32`` (float32 storage, TF32 tensor-core matmuls and convolutions on
    CUDA for those passes only, restored afterwards; the same as ``fp32`` elsewhere) or
    ``bf16``/``fp16`` (autocast). The benchmark reports each one's effect on the optimised embeddings."""
    attention: str = "fused"
    """Attention kernel of the optimisation passes that backpropagate: ``fused`` (default: torch's
    SDPA choice, as diffusers), ``explicit`` (the materialised product) or ``auto`` (the explicit
    product in float32 on CUDA within a memory budget, the fused kernel otherwise; see
    :func:`attncraft.pipelines.inversion.explicit_attention_wanted`). ``fused`` is the default because
    it measured faster on an H200 at SD 1.5 size (null-text 88 against 105 ms, token update 91
    against 94 ms, with 4-5 GiB less memory; ``benchmarks/RESULTS.md``): the iterations are
    launch-bound there, so the memory-efficient kernel's slower float32 backward does not show."""
    compile: str | None = None
    """``torch.compile`` mode of the optimisation passes' UNet calls that backpropagate (the token
    updates and the null-text iterations): None (default: eager), ``default``, ``reduce-overhead``
    (CUDA graphs on CUDA: one launch per graph instead of one per kernel), ``max-autotune`` or
    ``max-autotune-no-cudagraphs``. The token pass still ends at the loss layers: compiled, the
    operations after them feed nothing and are left out of the graph. Each inversion compiles once
    per pass. Measured on an H200 at SD 1.5 size (``reduce-overhead``, ``benchmarks/RESULTS.md``,
    "fourth lease"): 0.46x the reference's cost per token update and 0.50x per null-text iteration
    (eager: 0.83x / 0.73x; "eighth lease": 0.38x / 0.61x, eager 0.80x / 0.87x), the optimised embeddings within 1.3e-4 / 2.9e-3 of strict fp32 eager, but
    88 + 86 s of compilation for the first inversion, more than it saves on one image (102 s at 21 + 51
    iterations a step, 50 steps), which is why it is not the default. With a warm inductor cache (a later
    process on the same machine, ``TORCHINDUCTOR_CACHE_DIR``) the compilation takes 10 + 10 s ("tenth lease"), and
    the compiled passes then pay for themselves on the first image. The CUDA-graph backend without inductor
    compiles in 18 + 13 s but keeps little of the gain (0.51x / 0.74x). Compiling the repeated blocks instead (regional
    compilation) would not shorten it: under the attention manager 14 of 16 transformer blocks are graphs of their own
    (``benchmarks/probe_regional_compile.py``). With the ``aot_eager`` backend the results equal the eager ones exactly on the
    CPU, but inductor on the CPU returns wrong gradients for these calls (embeddings alone requiring
    grad, also on a plain diffusers UNet), so the option is refused on the CPU."""

    def validate(self) -> DPLConfig:
        check_int_range("token_steps", self.token_steps, 0, 1000, example=21)
        for name in ("lambda_at", "lambda_bg", "lambda_dj", "beta_at", "beta_bg", "beta_dj", "weight_decay"):
            check_finite(name, getattr(self, name), 0.0)
        for name in ("alpha_at", "alpha_bg", "alpha_dj", "lr", "softmax_temperature", "smooth_sigma"):
            check_finite(name, getattr(self, name), 0.0, low_inclusive=False)
        check_int_range("bg_start", self.bg_start, 0)
        check_int_range("clusters", self.clusters, 2, 64, example=5)
        check_int_range("cluster_restarts", self.cluster_restarts, 1, 1000, example=10)
        check_finite("label_threshold", self.label_threshold, 0.0, 1.0)
        if self.bg_downsample not in ("nearest", "area", "reference"):
            raise InputError(f"unknown background downsampling {self.bg_downsample!r}", "pass nearest, area or reference")
        if self.precision not in ("fp32", "tf32", "bf16", "fp16"):
            raise InputError(f"unknown DPL precision {self.precision!r}", "pass fp32, tf32, bf16 or fp16")
        from attncraft.pipelines.inversion import check_attention_choice, check_compile_mode

        check_attention_choice(self.attention, "DPL attention kernel")
        check_compile_mode(self.compile, "DPL compile mode")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def thresholds(step: int, config: DPLConfig) -> tuple[float, float, float]:
    """``(T_at, T_bg, T_dj)`` at step ``i``: ``beta * exp(-i / alpha)`` (L_bg from ``bg_start``)."""
    t_at = config.beta_at * math.exp(-step / config.alpha_at)
    t_bg = config.beta_bg * math.exp(-(step - config.bg_start) / config.alpha_bg)
    t_dj = config.beta_dj * math.exp(-step / config.alpha_dj)
    return t_at, t_bg, t_dj


# --------------------------------------------------------------------------------------------------
# Losses (pure functions; maps A are (..., h, w, keys), token indices are key positions)
# --------------------------------------------------------------------------------------------------


def smoothing_kernel(sigma: float = 0.5, size: int = 3, device: torch.device | str | None = None) -> torch.Tensor:
    """Attend-and-Excite's (size x size) smoothing kernel: ``exp(-(x / (2 sigma))^2)`` per axis, normalised,
    made on ``device`` (inside a compiled graph: made where the maps are, so the graph holds no CPU
    operation, which would keep a CUDA-graph backend from capturing it)."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-((x / (2 * sigma)) ** 2))
    k = g[:, None] * g[None, :]
    return (k / k.sum()).float()


@functools.lru_cache(maxsize=16)
def _kernel_on(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, 3, 3) :func:`smoothing_kernel` on ``device``, made once (a host-to-device copy per
    loss evaluation would wait for the GPU at every token update)."""
    with torch.inference_mode(False):  # a normal tensor, usable in a backward whatever the first caller's mode
        return smoothing_kernel(sigma).to(device, dtype)[None, None]


def _token_maps(maps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """(..., K, h, w) maps of the token positions ``tokens`` (..., K) from (..., h, w, keys)."""
    lead = maps.shape[:-3]
    idx = tokens.expand(*lead, tokens.shape[-1]) if tokens.dim() == 1 else tokens
    gathered = torch.gather(maps, -1, idx[..., None, None, :].expand(*lead, *maps.shape[-3:-1], idx.shape[-1]))
    return gathered.movedim(-1, -3)


def attention_balancing_loss(
    maps: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 100.0,
    sigma: float = 0.5,
    smooth: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_at = max over tokens of ``max(0, 1 - m_s)``, ``m_s`` the peak of the smoothed, re-softmaxed map.

    ``P = softmax(temperature * A[..., 1:-1])`` over the keys without the first (start) and last;
    each token's map is smoothed (:func:`smoothing_kernel`, reflect padding) and ``m_s`` is its
    maximum. ``tokens`` are key positions of ``A`` (the shift by one is done here); ``valid``
    (..., K) masks out padded token slots.
    """
    probs = torch.softmax(maps[..., 1:-1] * temperature, dim=-1)
    per = _token_maps(probs, tokens - 1)  # (..., K, h, w)
    if smooth:
        lead = per.shape[:-2]
        flat = per.reshape(-1, 1, *per.shape[-2:])
        kernel = (smoothing_kernel(sigma, device=flat.device).to(flat.dtype)[None, None] if torch.compiler.is_compiling()
                  else _kernel_on(float(sigma), flat.device, flat.dtype))  # a graph constant when compiled
        flat = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="reflect"), kernel)
        per = flat.reshape(*lead, *per.shape[-2:])
    peak = per.flatten(-2).amax(-1)  # (..., K)
    loss = (1.0 - peak).clamp_min(0.0)
    if valid is not None:
        loss = torch.where(valid, loss, torch.zeros_like(loss))
    return loss.amax(-1)


def _cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(eps)


def disjoint_loss(maps: torch.Tensor, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_dj = mean over token pairs ``i > j`` of ``cos(a_i, a_j)`` (raw maps); 0 with fewer than two."""
    flat = _token_maps(maps, tokens).flatten(-2)  # (..., K, hw)
    K = flat.shape[-2]
    if K < 2:
        return torch.zeros(flat.shape[:-2], device=maps.device, dtype=maps.dtype)
    cos = _cosine(flat[..., :, None, :], flat[..., None, :, :])  # (..., K, K)
    lower = torch.tril(torch.ones(K, K, dtype=torch.bool, device=maps.device), diagonal=-1)
    if valid is not None:
        pair = lower & valid[..., :, None] & valid[..., None, :]
    else:
        pair = lower.expand(cos.shape)
    count = pair.sum((-1, -2))
    total = torch.where(pair, cos, torch.zeros_like(cos)).sum((-1, -2))
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def background_loss(
    maps: torch.Tensor, tokens: torch.Tensor, background: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """L_bg = mean over tokens of ``cos(a_s, vec(B))`` (raw maps; ``background`` (..., h, w))."""
    flat = _token_maps(maps, tokens).flatten(-2)  # (..., K, hw)
    bg = background.to(flat.dtype).flatten(-2)[..., None, :]
    cos = _cosine(flat, bg)
    if valid is None:
        return cos.mean(-1)
    count = valid.sum(-1)
    return torch.where(valid, cos, torch.zeros_like(cos)).sum(-1) / count.clamp_min(1)


@dataclass
class LossValues:
    """The three losses and the total, one value per scene."""

    at: torch.Tensor
    dj: torch.Tensor
    bg: torch.Tensor
    total: torch.Tensor
    has_background: torch.Tensor


def dpl_losses(
    maps: torch.Tensor,
    tokens: torch.Tensor,
    background: torch.Tensor | None,
    has_background: torch.Tensor | None,
    config: DPLConfig,
    step: int,
    valid: torch.Tensor | None = None,
    compile: str | None = None,
) -> LossValues:
    """All three losses of one step for a batch of scenes: maps (B, h, w, keys), tokens (B, K) or (K,).

    A scene without a background (``has_background`` False, or ``background`` None) has L_bg = 0
    and no background term; the background loss counts only from ``config.bg_start`` on.
    ``compile``: a ``torch.compile`` mode (:attr:`DPLConfig.compile`) runs the losses (forward and
    backward, a few hundred small operations eagerly) as one compiled graph per ``use_bg`` value.
    """
    use_bg = config.lambda_bg > 0 and step >= config.bg_start
    if compile is not None:
        from attncraft.pipelines.inversion import COMPILE_BACKEND

        return _compiled_losses(compile, COMPILE_BACKEND)(maps, tokens, background, has_background, config, use_bg, valid)
    return _losses(maps, tokens, background, has_background, config, use_bg, valid)


@functools.lru_cache(maxsize=None)
def _compiled_losses(mode: str, backend: str):
    options = {"mode": mode} if backend == "inductor" else {}
    return torch.compile(_losses, backend=backend, dynamic=False, **options)


def _losses(maps, tokens, background, has_background, config: DPLConfig, use_bg: bool, valid) -> LossValues:
    batch = maps.shape[:-3]
    at = attention_balancing_loss(maps, tokens, config.softmax_temperature, config.smooth_sigma, valid=valid)
    dj = disjoint_loss(maps, tokens, valid=valid)
    if background is None:
        has_bg = torch.zeros(batch, dtype=torch.bool, device=maps.device)
        bg = torch.zeros(batch, device=maps.device, dtype=maps.dtype)
    else:
        has_bg = has_background if has_background is not None else torch.ones(batch, dtype=torch.bool, device=maps.device)
        bg = torch.where(has_bg, background_loss(maps, tokens, background, valid=valid), torch.zeros_like(at))
    total = config.lambda_at * at + config.lambda_dj * dj + (config.lambda_bg * bg if use_bg else 0.0)
    return LossValues(at=at, dj=dj, bg=bg, total=total, has_background=has_bg)


def below_thresholds(values: LossValues, step: int, config: DPLConfig) -> torch.Tensor:
    """(B,) True where every active loss is under its threshold (the reference's early stop)."""
    t_at, t_bg, t_dj = thresholds(step, config)
    ok = (values.at < t_at) & (values.dj < t_dj)
    if config.lambda_bg > 0 and step >= config.bg_start:
        ok &= (values.bg < t_bg) | ~values.has_background
    return ok


# --------------------------------------------------------------------------------------------------
# Maps with gradients
# --------------------------------------------------------------------------------------------------


class LossMaps(AttentionTechnique):
    """Observer on the map-level cross-attention layers: keeps the head-mean maps of every row, with
    their gradient, for the losses (:meth:`aggregate`: mean over layers, ``(B, h, w, keys)``)."""

    name = "dpl-loss-maps"
    order = OBSERVE_ORDER
    edits_maps = False

    def __init__(self, selector: LayerSelector):
        super().__init__(selector)
        self.maps: list[torch.Tensor] = []
        self.resolution: tuple[int, int] | None = None

    def needs_maps(self, layer: LayerInfo) -> bool:
        return True

    def reset(self) -> None:
        self.maps = []

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        self.maps.append(probs.mean(dim=1))
        self.resolution = call.resolution
        return probs

    def aggregate(self) -> torch.Tensor:
        if not self.maps or self.resolution is None:
            raise RuntimeError("no loss-layer map was recorded in this UNet call")
        h, w = self.resolution
        mean = torch.stack(self.maps).mean(0)  # (B, Q, K)
        return mean.reshape(mean.shape[0], h, w, mean.shape[-1])


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def stop_after(unet: nn.Module, layer_names: Sequence[str]) -> Iterator[None]:
    """End every UNet forward in the block as soon as all ``layer_names`` have run (the caller
    catches :class:`StopForward`); the rest of the UNet cannot reach their maps."""
    modules = dict(unet.named_modules())
    wanted = set(layer_names)
    seen: set[str] = set()
    handles = []

    def hook(name):
        def after(module, args, output):
            seen.add(name)
            if seen >= wanted:
                seen.clear()
                raise _StopForward

        return after

    def reset(module, args):
        seen.clear()

    handles.append(unet.register_forward_pre_hook(reset))
    for name in wanted:
        handles.append(modules[name].register_forward_hook(hook(name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


StopForward = _StopForward


# --------------------------------------------------------------------------------------------------
# Dynamic tokens: vectors spliced into the token embeddings
# --------------------------------------------------------------------------------------------------


class TokenSplice:
    """Replaces, during text-encoder calls inside :meth:`active`, the token embeddings at given
    (row, position) pairs by given vectors (one set per encoder: SDXL has two)."""

    def __init__(self, embeddings: Sequence[nn.Embedding]):
        self.embeddings = list(embeddings)

    @contextlib.contextmanager
    def active(self, rows: torch.Tensor, positions: torch.Tensor, vectors: Sequence[torch.Tensor],
               max_row: int | None = None) -> Iterator[None]:
        """``max_row``: the largest of ``rows`` when the caller knows it (reading it from a GPU
        tensor would wait for the GPU)."""
        if len(vectors) != len(self.embeddings):
            raise ValueError(f"{len(vectors)} vector sets for {len(self.embeddings)} text encoders")
        if max_row is None:
            max_row = int(rows.max()) if rows.numel() else -1
        handles = []
        for module, vec in zip(self.embeddings, vectors):
            def hook(mod, args, out, vec=vec):
                if out.dim() != 3 or rows.numel() == 0 or max_row >= out.shape[0]:
                    return out
                return out.index_put((rows.to(out.device), positions.to(out.device)), vec.to(out.device, out.dtype))

            handles.append(module.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


# --------------------------------------------------------------------------------------------------
# Background mask: self-attention k-means labelled by the nouns' cross-attention
# --------------------------------------------------------------------------------------------------


def kmeans(points: torch.Tensor, k: int, restarts: int = 10, seed: int = 1, iterations: int = 100) -> torch.Tensor:
    """Batched k-means: points (B, N, D) -> labels (B, N) of the restart with the lowest inertia.

    k-means++ seeding from a seeded generator, then Lloyd iterations until no label changes.
    """
    B, N, D = points.shape
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = points.float().repeat_interleave(restarts, dim=0)  # (B*R, N, D)
    R = x.shape[0]
    k = min(k, N)
    centers = torch.empty(R, k, D, device=x.device)
    first = torch.randint(N, (R,), generator=gen).to(x.device)
    centers[:, 0] = x[torch.arange(R, device=x.device), first]
    dist = torch.cdist(x, centers[:, :1]).squeeze(-1) ** 2
    for c in range(1, k):
        weights = dist.clamp_min(0).cpu()
        weights = torch.where(weights.sum(-1, keepdim=True) > 0, weights, torch.ones_like(weights))
        pick = torch.multinomial(weights, 1, generator=gen).squeeze(-1).to(x.device)
        centers[:, c] = x[torch.arange(R, device=x.device), pick]
        dist = torch.minimum(dist, (torch.cdist(x, centers[:, c:c + 1]).squeeze(-1)) ** 2)
    labels = torch.cdist(x, centers).argmin(-1)
    for _ in range(iterations):
        one_hot = F.one_hot(labels, k).float()  # (R, N, k)
        counts = one_hot.sum(1)  # (R, k)
        sums = one_hot.transpose(1, 2) @ x
        centers = torch.where(counts[..., None] > 0, sums / counts.clamp_min(1)[..., None], centers)
        new = torch.cdist(x, centers).argmin(-1)
        if torch.equal(new, labels):
            break
        labels = new
    inertia = ((x - torch.gather(centers, 1, labels[..., None].expand(R, N, D))) ** 2).sum((1, 2))
    best = inertia.view(B, restarts).argmin(-1)
    return labels.view(B, restarts, N)[torch.arange(B, device=x.device), best]


@dataclass
class BackgroundMasks:
    """Per scene: the background mask at the loss-map resolution, and what the clustering found."""

    masks: torch.Tensor
    """(B, h, w) bool at the loss-map resolution."""
    has_background: torch.Tensor
    """(B,) bool: False where no cluster was labelled background (L_bg is dropped there)."""
    cluster_labels: torch.Tensor
    """(B, hs, ws) cluster index per pixel at the self-attention resolution."""
    cluster_names: list[list[str]]
    """Per scene, the label of each cluster: a noun or ``"BG"``."""


def background_masks(
    self_attention: torch.Tensor,
    self_resolution: tuple[int, int],
    noun_maps: torch.Tensor,
    noun_valid: torch.Tensor,
    names: Sequence[Sequence[str]],
    map_resolution: tuple[int, int],
    config: DPLConfig,
) -> BackgroundMasks:
    """Background masks from averaged self-attention (B, Ns, Ns) and the nouns' averaged
    cross-attention maps (B, K, h, w) (``noun_valid`` (B, K) marks real nouns).

    Clusters of self-attention rows take the noun whose normalised map ``(C - |min C|) / max C``
    has the highest mean over the cluster if that mean exceeds ``config.label_threshold``, else
    ``BG``; the union of BG clusters, downsampled to ``map_resolution``, is the mask.
    """
    B = self_attention.shape[0]
    hs, ws = self_resolution
    labels = kmeans(self_attention, config.clusters, config.cluster_restarts, config.cluster_seed)  # (B, Ns)
    up = F.interpolate(noun_maps.float(), size=(hs, ws), mode="nearest").flatten(-2)  # (B, K, Ns)
    low = up.amin(-1, keepdim=True).abs()
    high = up.amax(-1, keepdim=True)
    norm = (up - low) / high.clamp_min(1e-12)
    k = config.clusters
    one_hot = F.one_hot(labels, k).float()  # (B, Ns, k)
    counts = one_hot.sum(1)  # (B, k)
    scores = norm @ one_hot / counts.clamp_min(1)[:, None, :]  # (B, K, k)
    scores = torch.where(noun_valid[..., None], scores, torch.full_like(scores, -1.0))
    best, which = scores.max(1)  # (B, k)
    is_bg = (best <= config.label_threshold) & (counts > 0)
    bg_pixels = torch.gather(is_bg, 1, labels).view(B, 1, hs, ws).float()
    cluster_names = [
        ["BG" if bool(is_bg[b, c]) else (names[b][int(which[b, c])] if counts[b, c] > 0 else "-") for c in range(k)]
        for b in range(B)
    ]
    if config.bg_downsample == "nearest":
        small = F.interpolate(bg_pixels, size=map_resolution, mode="nearest") > 0.5
    elif config.bg_downsample == "area":
        small = F.adaptive_avg_pool2d(bg_pixels, map_resolution) >= 0.5
    else:  # the reference: a smooth resize, then every non-zero pixel counts (dilates the mask)
        small = F.interpolate(bg_pixels, size=map_resolution, mode="bilinear", align_corners=False, antialias=True) > 0
    masks = small[:, 0]
    return BackgroundMasks(masks=masks, has_background=masks.flatten(1).any(1), cluster_labels=labels.view(B, hs, ws),
                           cluster_names=cluster_names)
