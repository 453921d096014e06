"""Gaussian Fourier features for the style field input (spec §3.2).

``gamma(p) = [p, sin(2 pi p B), cos(2 pi p B)]`` with ``B`` in R^{3 x 256}, entries ~ N(0, sigma^2)
(sigma = 12), so the output has 3 + 2*256 = 515 channels. As in the reference, the 3 rows of ``B``
are sorted by their L2 norm (this only permutes which input channel gets which frequency set).

Deviation from X-Mesh (spec bug 7, decision 6): ``B`` is a registered, non-trainable **buffer**, so
it is saved in the state dict and a saved field reloads faithfully. It is drawn from its own seeded
generator, so it does not depend on how much of the global RNG stream was used before.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FourierFeatures(nn.Module):
    def __init__(self, in_channels: int = 3, mapping_size: int = 256, sigma: float = 12.0, seed: int | None = None):
        super().__init__()
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        b = torch.randn(in_channels, mapping_size, generator=gen) * sigma
        order = torch.argsort(b.norm(dim=1), stable=True)
        self.register_buffer("B", b[order].contiguous())
        self.in_channels = in_channels
        self.mapping_size = mapping_size
        self.sigma = sigma

    @property
    def out_channels(self) -> int:
        return self.in_channels + 2 * self.mapping_size

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        proj = (2.0 * math.pi) * (p @ self.B)
        return torch.cat([p, torch.sin(proj), torch.cos(proj)], dim=-1)
