"""TDAM: X-Mesh's Text-guided Dynamic Attention Module (spec §3.4, ``XMesh.py:13-100``).

TDAM re-weights the per-vertex features ``h`` (V x 256) of the style field with a channel gate and
then a spatial (per-vertex) gate, like CBAM, except that the gate MLPs have **weights generated
from the text embedding** ``t`` (1 x 512, the raw unnormalised CLIP ``encode_text`` output):

* :class:`DynamicLinear` (d_in -> d_out, rank k = 30): ``U = reshape(W_u t + b_u)`` in
  R^{(d_in+1) x k}, ``P = U V_p`` with a learnable ``V_p`` in R^{k x d_out} that is **zero-initialised**;
  ``W = P[:d_in]``, ``b = P[d_in]``, ``y = h W + b``. (The reference's einsum over a text batch of
  1 is the same product.)
* Channel gate: ``a_c = sigmoid(mean_over_vertices(DL2(relu(DL1(h)))))`` (1 x 256), ``h <- h * a_c``.
* Spatial gate: ``a_s = sigmoid(mean_over_channels(DL4(relu(DL3(h)))))`` (V x 1), ``h <- h * a_s``.
* DL1/DL3: 256 -> 32, DL2/DL4: 32 -> 256 (reduction ratio 8). No max-pooling (``pool_types`` is unused
  in the reference).

Because ``V_p = 0``, every dynamic layer outputs exactly 0 at initialisation, both gates are
sigmoid(0) = 0.5, and TDAM multiplies the features by exactly 0.25 (bit-exact: 0.5 and 0.25 are
powers of two). Parameter count with the MIT-30 settings: 8,943,480 (93 % of the field).

The text embedding is cast to the field's dtype (fp32); the reference's fp16 text embedding on CUDA
adds rounding that is not reproduced (spec decision 5).
"""

from __future__ import annotations

import torch
from torch import nn


class DynamicLinear(nn.Module):
    """A linear layer whose weight and bias are a rank-k function of the text embedding."""

    def __init__(self, in_features: int, out_features: int, text_dim: int = 512, rank: int = 30):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.generator = nn.Linear(text_dim, (in_features + 1) * rank)
        self.basis = nn.Parameter(torch.zeros(rank, out_features))  # V_p, zero-initialised

    def weights(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of shapes (d_in, d_out) and (d_out,) generated from ``text`` (1, text_dim)."""
        u = self.generator(text.reshape(1, -1)).reshape(self.in_features + 1, self.rank)
        p = u @ self.basis
        return p[: self.in_features], p[self.in_features]

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        w, b = self.weights(text)
        return torch.addmm(b, h, w)


class ChannelGate(nn.Module):
    def __init__(self, channels: int = 256, text_dim: int = 512, reduction: int = 8, rank: int = 30):
        super().__init__()
        self.fc1 = DynamicLinear(channels, channels // reduction, text_dim, rank)
        self.fc2 = DynamicLinear(channels // reduction, channels, text_dim, rank)

    def attention(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(h, text)), text).mean(dim=0, keepdim=True))

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return h * self.attention(h, text)


class SpatialGate(nn.Module):
    def __init__(self, channels: int = 256, text_dim: int = 512, reduction: int = 8, rank: int = 30):
        super().__init__()
        self.fc1 = DynamicLinear(channels, channels // reduction, text_dim, rank)
        self.fc2 = DynamicLinear(channels // reduction, channels, text_dim, rank)

    def attention(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(h, text)), text).mean(dim=1, keepdim=True))

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return h * self.attention(h, text)


class TDAM(nn.Module):
    """Channel gate then spatial gate, both conditioned on the text embedding."""

    def __init__(self, channels: int = 256, text_dim: int = 512, reduction: int = 8, rank: int = 30):
        super().__init__()
        self.channel = ChannelGate(channels, text_dim, reduction, rank)
        self.spatial = SpatialGate(channels, text_dim, reduction, rank)

    def forward(self, h: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text = text.to(dtype=h.dtype)
        return self.spatial(self.channel(h, text), text)
