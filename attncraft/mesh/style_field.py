"""Neural style fields: X-Mesh's (with LayerNorm and TDAM) and the plain Text2Mesh field.

Input (spec §3.1): the normalised vertices ``v``; with ``symmetry`` z is mirrored to |z| (a symmetry
prior about z = 0), with ``standardize`` each channel is z-scored with the unbiased std. ``p`` is
fixed for the whole run. (Deviation: a channel with zero spread, e.g. a flat mesh, is divided by 1
instead of 0 to avoid NaNs; the reference would produce NaNs there.)

:class:`XMeshField` (spec §3.3-3.5):

* Fourier features (515 channels, sigma 12) -> Linear(515, 256) -> ReLU -> LayerNorm, then
  ``depth`` x [Linear(256, 256) -> ReLU -> LayerNorm];
* :class:`~attncraft.mesh.tdam.TDAM` conditioned on the raw CLIP text embedding;
* colour head: ``color_depth`` x [Linear -> ReLU -> LayerNorm] -> Linear(256, 3), ``c = tanh/2``;
* displacement head: same structure, ``d = tanh * norm_ratio / sqrt(3)`` per component (a 3-D
  vector, so ||d|| < norm_ratio);
* the last Linear of both heads is zero-initialised: the model starts as the grey, undisplaced mesh.

:class:`Text2MeshField` is the Text2Mesh baseline: same layers without LayerNorm and TDAM, and a
scalar displacement ``tanh * norm_ratio`` applied along the vertex normal.

:class:`StyledMeshModel` binds a field to a mesh: it predicts per-vertex colours ``0.5 + c`` and
displaced vertices ``v + d`` (X-Mesh: as trained, spec decision 1) or ``v + n d`` (Text2Mesh), then
renormalises them to the unit sphere (mean 0, max radius 1; differentiable) as the reference does
every iteration. ``reference_eval_geometry=True`` reproduces the reference's export/evaluation
geometry ``v + n * d`` (element-wise product of the vertex normal with the 3-D displacement, spec
§3.5 / bug 1) for comparison with published metrics; it is *not* what was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attncraft.mesh.fourier import FourierFeatures
from attncraft.mesh.tdam import TDAM

FIELD_KINDS = ("xmesh", "text2mesh")


def field_input(vertices: torch.Tensor, symmetry: bool = True, standardize: bool = True) -> torch.Tensor:
    """The fixed network input ``p`` (spec §3.1)."""
    p = vertices.clone()
    if symmetry:
        p[:, 2] = p[:, 2].abs()
    if standardize:
        mean = p.mean(dim=0, keepdim=True)
        std = p.std(dim=0, keepdim=True, unbiased=True) if p.shape[0] > 1 else torch.ones_like(mean)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        p = (p - mean) / std
    return p


def _block(width_in: int, width_out: int, layer_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(width_in, width_out), nn.ReLU()]
    if layer_norm:
        layers.append(nn.LayerNorm(width_out))
    return layers


def _trunk(width_in: int, width: int, depth: int, layer_norm: bool) -> nn.Sequential:
    """The shared MLP: one block from the Fourier features, then ``depth`` more."""
    layers = _block(width_in, width, layer_norm)
    for _ in range(depth):
        layers += _block(width, width, layer_norm)
    return nn.Sequential(*layers)


def _head(width: int, depth: int, out: int, layer_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += _block(width, width, layer_norm)
    last = nn.Linear(width, out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class XMeshField(nn.Module):
    """X-Mesh neural style field; ``forward(p, text) -> (c, d)``, c in (-0.5, 0.5), d (V, 3)."""

    kind = "xmesh"
    displacement_along_normal = False

    def __init__(self, text_dim: int = 512, sigma: float = 12.0, width: int = 256, depth: int = 4,
                 color_depth: int = 2, norm_depth: int = 2, norm_ratio: float = 0.1, use_tdam: bool = True,
                 fourier_seed: int | None = None, tdam_rank: int = 30, tdam_reduction: int = 8):
        super().__init__()
        self.fourier = FourierFeatures(3, width, sigma, seed=fourier_seed)
        self.base = _trunk(self.fourier.out_channels, width, depth, True)
        self.tdam = TDAM(width, text_dim, tdam_reduction, tdam_rank) if use_tdam else None
        self.color_head = _head(width, color_depth, 3, True)
        self.displacement_head = _head(width, norm_depth, 3, True)
        self.norm_ratio = norm_ratio

    def features(self, p: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.base(self.fourier(p))
        return self.tdam(h, text) if self.tdam is not None else h

    def forward(self, p: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(p, text)
        color = torch.tanh(self.color_head(h)) / 2.0
        displacement = torch.tanh(self.displacement_head(h)) * (self.norm_ratio / math.sqrt(3.0))
        return color, displacement


class Text2MeshField(nn.Module):
    """Text2Mesh neural style field (no LayerNorm, no TDAM; scalar displacement along the normal)."""

    kind = "text2mesh"
    displacement_along_normal = True

    def __init__(self, text_dim: int = 512, sigma: float = 12.0, width: int = 256, depth: int = 4,
                 color_depth: int = 2, norm_depth: int = 2, norm_ratio: float = 0.1, fourier_seed: int | None = None,
                 **_: object):
        super().__init__()
        self.fourier = FourierFeatures(3, width, sigma, seed=fourier_seed)
        self.base = _trunk(self.fourier.out_channels, width, depth, False)
        self.color_head = _head(width, color_depth, 3, False)
        self.displacement_head = _head(width, norm_depth, 1, False)
        self.norm_ratio = norm_ratio

    def forward(self, p: torch.Tensor, text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.base(self.fourier(p))
        color = torch.tanh(self.color_head(h)) / 2.0
        displacement = torch.tanh(self.displacement_head(h)) * self.norm_ratio
        return color, displacement


def build_style_field(kind: str = "xmesh", text_dim: int = 512, seed: int = 23, **kwargs) -> nn.Module:
    """Build a field deterministically from ``seed`` without disturbing the global RNG state."""
    from attncraft.errors import InputError

    classes = {"xmesh": XMeshField, "text2mesh": Text2MeshField}
    if kind not in classes:
        raise InputError(f"unknown style field {kind!r}", f"pass one of {', '.join(FIELD_KINDS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return classes[kind](text_dim=text_dim, fourier_seed=seed, **kwargs)


def renormalize(vertices: torch.Tensor) -> torch.Tensor:
    """Differentiable unit-sphere renormalisation: subtract the vertex mean, divide by the max radius."""
    centered = vertices - vertices.mean(dim=0, keepdim=True)
    return centered / centered.norm(dim=1).max()


@dataclass
class StyledMesh:
    vertices: torch.Tensor  # (V, 3) displaced and renormalised
    colors: torch.Tensor  # (V, 3) 0.5 + c (the renderer clamps to [0, 1])
    color_offsets: torch.Tensor  # (V, 3) raw colour head output c
    displacement: torch.Tensor  # (V, 3) for X-Mesh, (V, 1) for Text2Mesh


class StyledMeshModel(nn.Module):
    """A style field bound to one mesh (base vertices, normals and the fixed network input)."""

    def __init__(self, field: nn.Module, vertices: torch.Tensor, normals: torch.Tensor | None = None,
                 symmetry: bool = True, standardize: bool = True, prior_color: float = 0.5):
        super().__init__()
        self.field = field
        self.register_buffer("base_vertices", vertices.detach().clone())
        if normals is None:
            normals = torch.zeros_like(vertices)
        self.register_buffer("normals", normals.detach().clone())
        self.register_buffer("p", field_input(vertices.detach(), symmetry, standardize))
        self.prior_color = prior_color

    def forward(self, text: torch.Tensor | None, reference_eval_geometry: bool = False) -> StyledMesh:
        c, d = self.field(self.p, text)
        if getattr(self.field, "displacement_along_normal", False) or reference_eval_geometry:
            moved = self.base_vertices + self.normals * d
        else:
            moved = self.base_vertices + d
        return StyledMesh(renormalize(moved), self.prior_color + c, c, d)
