"""CV-VAE, the 3-D VAE of the released FancyVideo model, as a diffusers ``ModelMixin``.

CV-VAE (AILab-CVC) keeps SD's 4-channel latent and 8x spatial compression and adds 4x temporal
compression: ``N = 1 + 4k`` video frames encode to ``1 + (N - 1) // 4`` latent frames (61 -> 16,
125 -> 32), and ``L`` latent frames decode to ``4L - 3`` frames. This module rebuilds the
architecture from its public description so the released weights (``CV-VAE/vae3d``: the
``config.json`` and weights next to it) load with :meth:`CVVAEModel.from_pretrained` under the same
parameter names, strictly (:func:`load_cv_vae`):

* **encoder** (causal in time): ``conv_in`` -> per level ``num_res_blocks`` residual blocks (and
  attention at ``attn_resolutions``, none in the release) and a downsampler on every level but the
  last, halving time on levels 0 and 2 ("half_t_mult") -> a middle block (residual, single-head
  spatial attention, residual) -> GroupNorm, SiLU, ``conv_out`` to ``2 * z_channels`` moments. Its
  3-D convolutions pad space with zeros and time causally (the first frame repeated twice in front),
  so frame 0 is encoded from itself alone: a single image encodes to one latent frame;
* **decoder** (not causal): ``conv_in`` -> middle block whose attention is spatial then temporal
  (``spatial-temporal-xformer``: single-head attention over each frame's positions, ``proj_out``,
  then LayerNorm + single-head attention over the frames at each position and ``proj_out_t``; one
  residual around both, as defined) -> per level ``num_res_blocks + 1`` residual blocks and an
  upsampler on every level but the first, doubling time on levels 3 and 1: nearest 2x in space, a
  3-D convolution with twice the channels whose halves become frames ``2t`` and ``2t + 1``, the
  first frame dropped (``T -> 2T - 1``); its 3-D convolutions pad time with zeros, the upsamplers'
  with replicated frames;
* residual blocks ("half 3-D"): GroupNorm(32, eps 1e-5), SiLU, a 3x3x3 convolution, GroupNorm,
  SiLU, a per-frame 3x3 convolution, a 1x1x1 shortcut when the width changes;
* inference in pieces, as the released model runs: ``en_de_n_frames_a_time`` (16) frames a piece
  plus one overlap frame whose latent is dropped from every piece but the first (decoding: 4 latent
  frames plus one, its first output frame dropped), and spatial tiles of ``tile_spatial_size``
  pixels (576; ``tile_spatial_size // 8`` latent) overlapping by ``tile_overlap_ratio``, blended
  linearly in raster order (each tile with its already blended upper and left neighbours) and cut
  at the stride. Below one tile the whole frame is one tile.

Deviations, none of them numerical: the attention runs through PyTorch's SDPA (same math as the
reference's xformers / NPU kernels: one head, scale ``1/sqrt(C)``); padding is done in the tensor's
own dtype (the reference detours through fp32/fp16, which copies the same values); gradient
checkpointing is not implemented (inference only). Config keys the reference accepts but this
architecture cannot honour (an unknown attention type) are refused at construction, by name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from attncraft.attention_processors.backends import sdpa
from attncraft.errors import InputError, ModelLoadError
from attncraft.fancyvideo.strict import strict_from_pretrained

__all__ = ["CVVAEModel", "latent_frame_count", "load_cv_vae", "video_frame_count"]

ATTENTION_TYPES = ("vanilla", "vanilla-xformers", "spatial-temporal-xformer", "none")
_BASE_RESOLUTION = 256  # the reference's default encoder/decoder ``resolution`` (only for attn_resolutions)


def latent_frame_count(num_frames: int, temporal_compression: int = 4) -> int:
    """Latent frames of ``num_frames`` video frames: ``1 + (N - 1) // c`` (61 -> 16, 125 -> 32).

    ``N`` must be ``1 + c * k`` (the frames CV-VAE decodes back); any other count is refused with the
    two nearest valid ones."""
    c = int(temporal_compression)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"the number of frames must be a whole number >= 1, got {num_frames!r}", "pass e.g. --frames 61")
    if (num_frames - 1) % c:
        low = 1 + (num_frames - 1) // c * c
        raise InputError(
            f"{num_frames} frames cannot be made by a VAE with {c}x temporal compression: it makes 1 + {c}k frames",
            f"pass {low} or {low + c} frames ({1 + (low - 1) // c} or {2 + (low - 1) // c} latent frames)",
        )
    return 1 + (num_frames - 1) // c


def video_frame_count(num_latent_frames: int, temporal_compression: int = 4) -> int:
    """Video frames decoded from ``L`` latent frames: ``1 + c (L - 1)`` (16 -> 61, 32 -> 125)."""
    return 1 + int(temporal_compression) * (int(num_latent_frames) - 1)


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-5, affine=True)


class CausalConv3d(nn.Conv3d):
    """3-D convolution padded with zeros in space and, in time, with the first frame repeated
    ``2 * padding`` times in front (frame ``t`` sees only frames ``<= t``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.causal_padding = int(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.causal_padding
        if p:
            x = F.pad(x, (p, p, p, p, 0, 0))
            x = F.pad(x, (0, 0, 0, 0, 2 * p, 0), mode="replicate")
        return super().forward(x)


class FrameConv2d(nn.Conv2d):
    """A 2-D convolution applied to every frame of a ``(B, C, T, H, W)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            return super().forward(x)
        b, _, t, _, _ = x.shape
        y = super().forward(x.transpose(1, 2).flatten(0, 1))
        return y.unflatten(0, (b, t)).transpose(1, 2)


def _conv_class(use_3d_conv: bool, causal: bool):
    if not use_3d_conv:
        return FrameConv2d
    return CausalConv3d if causal else nn.Conv3d


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, use_3d_conv: bool, half_3d: bool,
                 causal: bool):
        super().__init__()
        conv = _conv_class(use_3d_conv, causal)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        second = FrameConv2d if half_3d else conv
        self.conv2 = second(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = conv(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return x + h


def _single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of ``(N, L, C)`` tensors with one head (scale ``1/sqrt(C)``); the temporal one has a
    sequence per latent pixel, so the batch is chunked within the kernels' grid limit."""
    return sdpa(q[:, None], k[:, None], v[:, None])[:, 0]


class SpatialAttention(nn.Module):
    """Single-head self-attention over the positions of each frame, with a residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def spatial(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``proj_out(attention(norm(x)))``, no residual."""
        h = self.norm(frames)
        n, c, hh, ww = h.shape
        q, k, v = (layer(h).flatten(2).transpose(1, 2) for layer in (self.q, self.k, self.v))
        out = _single_head_attention(q, k, v).transpose(1, 2).reshape(n, c, hh, ww)
        return self.proj_out(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _, _ = x.shape
        h = self.spatial(x.transpose(1, 2).flatten(0, 1))
        return x + h.unflatten(0, (b, t)).transpose(1, 2)


class SpatialTemporalAttention(SpatialAttention):
    """Spatial attention, then (without a residual in between) LayerNorm and single-head attention
    over the frames at each position; one residual around both."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.q_t = nn.Linear(channels, channels)
        self.k_t = nn.Linear(channels, channels)
        self.v_t = nn.Linear(channels, channels)
        self.proj_out_t = nn.Linear(channels, channels)
        self.norm_t = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, hh, ww = x.shape
        h = self.spatial(x.transpose(1, 2).flatten(0, 1))  # (b t) c h w
        h = h.reshape(b, t, c, hh, ww).permute(0, 3, 4, 1, 2).reshape(b * hh * ww, t, c)  # (b h w) t c
        n = self.norm_t(h)
        h = self.proj_out_t(_single_head_attention(self.q_t(n), self.k_t(n), self.v_t(n)))
        return x + h.reshape(b, hh, ww, t, c).permute(0, 4, 3, 1, 2)


def _attention(channels: int, kind: str) -> nn.Module:
    if kind in ("vanilla", "vanilla-xformers"):
        return SpatialAttention(channels)
    if kind == "spatial-temporal-xformer":
        return SpatialTemporalAttention(channels)
    return nn.Identity()


class Downsample3D(nn.Module):
    """Halve space (and time when ``down_time``): zero pad right/bottom by one, repeat the first frame
    twice in front, a 3x3x3 convolution with stride 2 (or (1, 2, 2))."""

    def __init__(self, channels: int, down_time: bool):
        super().__init__()
        self.down_time = down_time
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, stride=2 if down_time else (1, 2, 2), padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, 1, 0, 1, 0, 0))
        return self.conv(F.pad(x, (0, 0, 0, 0, 2, 0), mode="replicate"))


class Upsample3D(nn.Module):
    """Double space (nearest) and, when ``up_time``, turn ``T`` frames into ``2T - 1``."""

    def __init__(self, channels: int, up_time: bool):
        super().__init__()
        self.factor = 2 if up_time else 1
        self.conv = nn.Conv3d(channels, channels * self.factor, kernel_size=3, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        x = F.pad(x, (1, 1, 1, 1, 0, 0))
        x = self.conv(F.pad(x, (0, 0, 0, 0, 1, 1), mode="replicate"))
        if self.factor == 1:
            return x
        b, _, t, h, w = x.shape
        # channels (n c) -> frames (t n): the first half of the channels is frame 2t, the second 2t + 1
        x = x.reshape(b, self.factor, -1, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, t * self.factor, h, w)
        return x[:, :, 1:]


class _Level(nn.Module):
    """One resolution level (``block``, ``attn`` and optionally ``downsample`` / ``upsample``)."""


class _Middle(nn.Module):
    def __init__(self, channels: int, attn_type: str, **block: Any):
        super().__init__()
        self.block_1 = ResnetBlock3D(channels, channels, **block)
        self.attn_1 = _attention(channels, attn_type)
        self.block_2 = ResnetBlock3D(channels, channels, **block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class CVEncoder(nn.Module):
    def __init__(self, ch: int, ch_mult, num_res_blocks: int, attn_resolutions, dropout: float, in_channels: int,
                 z_channels: int, double_z: bool, attn_type: str, use_3d_conv: bool, half_3d: bool, causal: bool):
        super().__init__()
        conv = _conv_class(use_3d_conv, causal)
        block = dict(dropout=dropout, use_3d_conv=use_3d_conv, half_3d=half_3d, causal=causal)
        self.num_resolutions = len(ch_mult)
        self.conv_in = conv(in_channels, ch, kernel_size=3, stride=1, padding=1)
        widths = [ch] + [ch * m for m in ch_mult]
        res = _BASE_RESOLUTION
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            stage = _Level()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            width = widths[level]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock3D(width, widths[level + 1], **block))
                width = widths[level + 1]
                if res in attn_resolutions:
                    stage.attn.append(_attention(width, attn_type))
            if level != self.num_resolutions - 1:
                stage.downsample = Downsample3D(width, down_time=level % 2 == 0)
                res //= 2
            self.down.append(stage)
        top = widths[-1]
        self.mid = _Middle(top, attn_type, **block)
        self.norm_out = _group_norm(top)
        self.conv_out = conv(top, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class CVDecoder(nn.Module):
    def __init__(self, ch: int, out_ch: int, ch_mult, num_res_blocks: int, attn_resolutions, dropout: float,
                 z_channels: int, attn_type: str, use_3d_conv: bool, half_3d: bool, causal: bool):
        super().__init__()
        conv = _conv_class(use_3d_conv, causal)
        block = dict(dropout=dropout, use_3d_conv=use_3d_conv, half_3d=half_3d, causal=causal)
        self.num_resolutions = len(ch_mult)
        width = ch * ch_mult[-1]
        res = _BASE_RESOLUTION // 2 ** (self.num_resolutions - 1)
        self.conv_in = conv(z_channels, width, kernel_size=3, stride=1, padding=1)
        self.mid = _Middle(width, attn_type, **block)
        levels: list[_Level] = [None] * self.num_resolutions  # type: ignore[list-item]
        for level in reversed(range(self.num_resolutions)):
            stage = _Level()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock3D(width, ch * ch_mult[level], **block))
                width = ch * ch_mult[level]
                if res in attn_resolutions:
                    stage.attn.append(_attention(width, attn_type))
            if level != 0:
                stage.upsample = Upsample3D(width, up_time=level % 2 == 1)
                res *= 2
            levels[level] = stage
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(width)
        self.conv_out = conv(width, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------------
# Tiled inference
# --------------------------------------------------------------------------------------------------


def _starts(size: int, tile: int, stride: int) -> list[int]:
    starts = []
    for start in range(0, size, stride):
        starts.append(start)
        if start + tile >= size:
            break
    return starts


def _blend(a: torch.Tensor, b: torch.Tensor, overlap: int, dim: int) -> None:
    """Blend the first ``overlap`` rows (``dim``) of ``b`` in place from the last ones of ``a``."""
    if overlap <= 0:
        return
    shape = [1] * b.dim()
    shape[dim] = overlap
    weight = (torch.arange(overlap, device=b.device) / overlap).view(shape)
    head = b.narrow(dim, 0, overlap)
    head.copy_((1 - weight) * a.narrow(dim, a.shape[dim] - overlap, overlap) + weight * head)


def _tiled(x: torch.Tensor, fn, tile: int, stride: int, out_overlap: int, out_stride: int) -> torch.Tensor:
    """``fn`` over spatial tiles of a ``(B, C, T, H, W)`` tensor, blended and cut as CV-VAE does."""
    rows_at, cols_at = _starts(x.shape[3], tile, stride), _starts(x.shape[4], tile, stride)
    tiles = [[fn(x[:, :, :, i:i + tile, j:j + tile]) for j in cols_at] for i in rows_at]
    for r, row in enumerate(tiles):
        for c, piece in enumerate(row):
            if r > 0:
                _blend(tiles[r - 1][c], piece, out_overlap, 3)
            if c > 0:
                _blend(row[c - 1], piece, out_overlap, 4)
    rows = []
    for r, row in enumerate(tiles):
        cut = [p if c == len(row) - 1 else p[..., :out_stride] for c, p in enumerate(row)]
        line = torch.cat(cut, dim=4)
        rows.append(line if r == len(tiles) - 1 else line[:, :, :, :out_stride])
    return torch.cat(rows, dim=3)


def _in_pieces(x: torch.Tensor, fn, stride: int | None) -> torch.Tensor:
    """``fn`` over pieces of ``stride + 1`` frames overlapping by one; the first output frame of every
    piece but the first is dropped."""
    if stride is None:
        return fn(x)
    rounds = max(1, math.ceil((x.shape[2] - 1) / stride))
    outs = []
    for n in range(rounds):
        out = fn(x[:, :, n * stride:(n + 1) * stride + 1])
        outs.append(out if n == 0 else out[:, :, 1:])
    return torch.cat(outs, dim=2)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class CVVAEModel(ModelMixin, ConfigMixin):
    """CV-VAE (see the module doc). Config keys and parameter names are those of the released model,
    so ``CVVAEModel.from_pretrained("CV-VAE", subfolder="vae3d")`` reads its folder as it is.

    ``encode(x)``: ``x`` ``(B, 3, N, H, W)`` in ``[-1, 1]`` (or ``(B, 3, H, W)``: one frame) ->
    ``AutoencoderKLOutput`` whose ``latent_dist`` is ``(B, z, 1 + (N - 1) // 4, H / 8, W / 8)``;
    ``decode(z)``: ``(B, z, L, h, w)`` (unscaled latents; ``(B, z, h, w)``: one frame) ->
    ``DecoderOutput`` with ``(B, 3, 4L - 3, 8h, 8w)``. Multiply latents by
    ``config.scaling_factor`` (0.18215) for the diffusion model, as with SD's VAE.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["ResnetBlock3D"]

    @register_to_config
    def __init__(
        self,
        double_z: bool = True,
        z_channels: int = 4,
        in_channels: int = 3,
        out_ch: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (),
        dropout: float = 0.0,
        use_3d_conv: bool = True,
        half_3d: bool = True,
        causal_encoder: bool = True,
        causal_decoder: bool = False,
        encoder_attn_type: str = "vanilla-xformers",
        decoder_attn_type: str = "spatial-temporal-xformer",
        scaling_factor: float = 0.18215,
        force_upcast: bool = True,
        en_de_n_frames_a_time: int | None = 16,
        time_n_compress: int | None = 4,
        spatial_n_compress: int | None = 8,
        tile_spatial_size: int | None = 576,
        num_video_frames: int | None = None,
        tile_overlap_ratio: float | None = 0.2222,
        reshape_z_dim_to_4: bool = False,
        reshape_x_dim_to_4: bool = False,
    ):
        super().__init__()
        for name, kind in (("encoder_attn_type", encoder_attn_type), ("decoder_attn_type", decoder_attn_type)):
            if kind not in ATTENTION_TYPES:
                raise ValueError(f"CVVAEModel {name} {kind!r} is not supported (supported: {', '.join(ATTENTION_TYPES)})")
        if len(ch_mult) < 1 or ch * min(ch_mult) % 32:
            raise ValueError("CVVAEModel channel widths (ch * ch_mult) must be multiples of 32 (GroupNorm(32))")
        self.encoder = CVEncoder(ch, ch_mult, num_res_blocks, tuple(attn_resolutions), dropout, in_channels, z_channels,
                                 double_z, encoder_attn_type, use_3d_conv, half_3d, causal_encoder)
        self.decoder = CVDecoder(ch, out_ch, ch_mult, num_res_blocks, tuple(attn_resolutions), dropout, z_channels,
                                 decoder_attn_type, use_3d_conv, half_3d, causal_decoder)
        built = self.temporal_compression
        if time_n_compress is not None and int(time_n_compress) != built:
            raise ValueError(f"CVVAEModel time_n_compress={time_n_compress} but its {len(ch_mult)} levels compress time {built}x")
        if spatial_n_compress is not None and int(spatial_n_compress) != self.spatial_compression:
            raise ValueError(f"CVVAEModel spatial_n_compress={spatial_n_compress} but its levels compress space "
                             f"{self.spatial_compression}x")
        if en_de_n_frames_a_time is not None and en_de_n_frames_a_time % built:
            raise ValueError(f"CVVAEModel en_de_n_frames_a_time={en_de_n_frames_a_time} is not a multiple of {built}")

    # ---------------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        levels = len(self.config.ch_mult)
        return 2 ** sum(1 for level in range(levels - 1) if level % 2 == 0)  # the downsamplers are 3-D either way

    @property
    def spatial_compression(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def num_latent_frames(self, num_frames: int) -> int:
        return latent_frame_count(num_frames, self.temporal_compression)

    def num_video_frames(self, num_latent_frames: int) -> int:
        return video_frame_count(num_latent_frames, self.temporal_compression)

    def _tiles(self, latent: bool) -> tuple[int, int, int, int] | None:
        size, ratio = self.config.tile_spatial_size, self.config.tile_overlap_ratio
        if size is None:
            return None
        pixel, lat = int(size), int(size) // self.spatial_compression
        if latent:  # decode: latent tiles in, pixel tiles out
            return lat, round(lat * (1 - ratio)), round(pixel * ratio), pixel - round(pixel * ratio)
        return pixel, round(pixel * (1 - ratio)), round(lat * ratio), lat - round(lat * ratio)

    def _spatial(self, x: torch.Tensor, fn, latent: bool) -> torch.Tensor:
        tiles = self._tiles(latent)
        return fn(x) if tiles is None else _tiled(x, fn, *tiles)

    # ---------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        if x.dim() == 4:
            frames = self.config.num_video_frames
            x = x.unflatten(0, (-1, frames)).transpose(1, 2) if frames else x[:, :, None]
        if x.dim() != 5:
            raise ValueError(f"CVVAEModel.encode takes (B, C, T, H, W) videos or (B, C, H, W) images, got {tuple(x.shape)}")
        stride = self.config.en_de_n_frames_a_time
        moments = _in_pieces(x, lambda piece: self._spatial(piece, self.encoder, latent=False), stride)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, num_frames: int | None = None, **_: Any):
        if z.dim() == 4:
            frames = num_frames or (latent_frame_count(self.config.num_video_frames, self.temporal_compression)
                                    if self.config.num_video_frames else None)
            z = z.unflatten(0, (-1, frames)).transpose(1, 2) if frames else z[:, :, None]
        if z.dim() != 5:
            raise ValueError(f"CVVAEModel.decode takes (B, C, T, h, w) or (B, C, h, w) latents, got {tuple(z.shape)}")
        stride = self.config.en_de_n_frames_a_time
        stride = None if stride is None else stride // self.temporal_compression
        x = _in_pieces(z, lambda piece: self._spatial(piece, self.decoder, latent=True), stride)
        if self.config.reshape_x_dim_to_4:
            x = x.transpose(1, 2).flatten(0, 1)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)


# --------------------------------------------------------------------------------------------------
# Strict loading
# --------------------------------------------------------------------------------------------------


def load_cv_vae(reference: str | os.PathLike, dtype: torch.dtype | None = None, trust_pickle: bool = False,
                subfolder: str | None = None) -> CVVAEModel:
    """Load CV-VAE from a folder (``config.json`` + weights; also the released ``CV-VAE`` folder, whose
    ``vae3d`` subfolder is found), strictly: a missing, unexpected or mis-shaped tensor is a one-line
    :class:`~attncraft.errors.ModelLoadError` naming it. Pickled weights need ``trust_pickle``."""
    folder = Path(reference).expanduser()
    if subfolder:
        folder = folder / subfolder
    elif not (folder / "config.json").is_file() and (folder / "vae3d" / "config.json").is_file():
        folder = folder / "vae3d"
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{str(reference)!r} holds no CV-VAE config.json",
                             "pass the CV-VAE folder (its vae3d subfolder holds config.json and the weights)")
    return strict_from_pretrained(CVVAEModel, folder, "CV-VAE", "check that config.json belongs to these weights "
                                  "(re-download the CV-VAE vae3d folder)", dtype, trust_pickle)
