"""Procedural meshes of the 3-D Shapes world: geometry, painting and batched rendering (torch only).

Geometry: every shape is a grid over a surface coordinate (u around, v from top to bottom), so a
whole batch of different shapes shares one face array and renders in one call of the project's
renderer (:class:`~attncraft.mesh.renderer.TorchRenderer`, per-view vertices and colours):

* **closed** shapes (sphere, cube, cone, cylinder, capsule) are surfaces of revolution sampled on a
  profile curve from the top pole to the bottom pole (corners of the profile fall on grid rows, so
  cylinder rims and cone bases are sharp); the cube is the sphere grid projected onto the cube
  (``p / max|p|``). Topology: ``n_u`` x (``n_v`` - 2) rings plus two pole vertices with fans;
* the **torus** has its own topology (a grid that wraps in both directions).

Variants displace the surface along its normals: ``blobby`` by a sum of three low-frequency plane
waves, ``bumpy`` by three high-frequency ones. Each mesh gets a random anisotropic scale, a yaw and a
small tilt (top stays top), and is normalised to the unit sphere like every loaded mesh
(:func:`attncraft.mesh.io.normalize_to_unit_sphere`).

Painting (per vertex, on the surface coordinate): stripes are bands in v, checks cells in (u, v),
dots discs in (u, v) cells, drawn in the colour's pattern shade or a second colour; a split painting
takes its ``bottom`` colour below a height in object space. Colours are the palette's.

Rendering (:func:`render_mesh_scenes`, for CLIP training and evaluation): random views around the
mesh, X-Mesh's spherical-harmonic lighting most of the time (else a random directional light or none),
the scene's background (jittered a little), renders at 64 or 128 px (box-filtered down), and X-Mesh's
augmentations (random crops and perspective warps filled with the background).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from attncraft.mesh.augment import grids_from_params, sample_crops, sample_homographies, warp
from attncraft.mesh.camera import TRAIN_FOVY, make_cameras
from attncraft.mesh.renderer import TorchRenderer
from attncraft.shapes.mesh_world import MESH_BACKGROUND_RGB, MESH_SHAPES, UNPAINTED, UNPAINTED_RGB, MeshScene
from attncraft.shapes.palette import COLOR_RGB, SHADE_RGB

CLOSED_SHAPES = ("sphere", "cube", "cone", "cylinder", "capsule")
TRAIN_GRID = (48, 34)
"""(n_u, n_v) of the training renders: 1,538 vertices for closed shapes, 48 x 22 for the torus."""
MESH_GRID = (72, 50)
"""(n_u, n_v) of the meshes handed to X-Mesh (:func:`procedural_mesh`: 3,458 vertices)."""
TORUS_RADII = (1.0, 0.42)
"""Major and minor radius of the torus (the default mesh's proportions)."""
PAINT_RGB = {**COLOR_RGB, UNPAINTED: UNPAINTED_RGB}
SHADE_OF = {**SHADE_RGB, UNPAINTED: UNPAINTED_RGB}


# --------------------------------------------------------------------------------------------------
# Topology and base shapes
# --------------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """A batch-shareable mesh layout: ``faces`` (F, 3), surface coordinates ``uv`` (V, 2) in [0, 1]."""

    faces: torch.Tensor
    uv: torch.Tensor
    n_u: int
    n_v: int
    closed: bool

    @property
    def num_vertices(self) -> int:
        return int(self.uv.shape[0])


def _profile(shape: str, n_v: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(r, y, v) of ``n_v`` rows from the top pole (r = 0) to the bottom pole of a surface of revolution.

    The profile is a chain of lines and arcs; rows are shared out over its pieces in proportion to
    their length, so that every corner of the profile is a row.
    """
    if shape == "sphere":
        pieces = [("arc", (0.0, 0.0), 1.0, math.pi / 2, -math.pi / 2)]
    elif shape == "capsule":
        rad, h = 0.5, 0.5
        pieces = [("arc", (0.0, h), rad, math.pi / 2, 0.0), ("line", (rad, h), (rad, -h)),
                  ("arc", (0.0, -h), rad, 0.0, -math.pi / 2)]
    elif shape == "cylinder":
        rad, h = 0.6, 0.6
        pieces = [("line", (0.0, h), (rad, h)), ("line", (rad, h), (rad, -h)), ("line", (rad, -h), (0.0, -h))]
    elif shape == "cone":
        rad, h = 0.7, 0.6
        pieces = [("line", (0.0, h), (rad, -h)), ("line", (rad, -h), (0.0, -h))]
    else:
        raise ValueError(f"no profile for {shape!r}")

    def length(p) -> float:
        if p[0] == "arc":
            return abs(p[4] - p[3]) * p[2]
        return math.dist(p[1], p[2])

    lengths = np.array([length(p) for p in pieces])
    intervals = n_v - 1
    share = lengths / lengths.sum() * intervals
    counts = np.maximum(1, np.floor(share).astype(int))
    while counts.sum() < intervals:
        counts[np.argmax(share - counts)] += 1
    while counts.sum() > intervals:
        counts[np.argmax(counts)] -= 1
    rs, ys = [], []
    for k, (p, c) in enumerate(zip(pieces, counts)):
        t = np.linspace(0.0, 1.0, c + 1)
        if k > 0:
            t = t[1:]
        if p[0] == "arc":
            ang = p[3] + (p[4] - p[3]) * t
            rs.append(p[1][0] + p[2] * np.cos(ang))
            ys.append(p[1][1] + p[2] * np.sin(ang))
        else:
            rs.append(p[1][0] + (p[2][0] - p[1][0]) * t)
            ys.append(p[1][1] + (p[2][1] - p[1][1]) * t)
    r, y = np.concatenate(rs), np.concatenate(ys)
    r[0] = r[-1] = 0.0
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(r), np.diff(y)))])
    return np.abs(r), y, arc / arc[-1]


@lru_cache(maxsize=8)
def _grid_cpu(n_u: int, n_v: int, closed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    i = np.arange(n_u)
    i1 = (i + 1) % n_u
    faces = []
    if closed:
        rings = n_v - 2
        ring = lambda j, k: 1 + (j - 1) * n_u + k  # noqa: E731 - ring j in 1..n_v-2
        bottom = 1 + rings * n_u
        faces.append(np.stack([np.zeros(n_u, int), ring(1, i1), ring(1, i)], 1))
        for j in range(1, rings):
            a, b, c, d = ring(j, i), ring(j, i1), ring(j + 1, i), ring(j + 1, i1)
            faces += [np.stack([a, b, c], 1), np.stack([b, d, c], 1)]
        faces.append(np.stack([np.full(n_u, bottom), ring(rings, i), ring(rings, i1)], 1))
        u = np.concatenate([[0.0], np.tile(i / n_u, rings), [0.0]])
        v_rows = np.arange(1, n_v - 1)
        v = np.concatenate([[0.0], np.repeat(v_rows, n_u), [n_v - 1]]) / (n_v - 1)  # placeholder: row index
    else:
        idx = lambda j, k: (j % n_v) * n_u + k  # noqa: E731
        for j in range(n_v):
            a, b, c, d = idx(j, i), idx(j, i1), idx(j + 1, i), idx(j + 1, i1)
            faces += [np.stack([a, c, b], 1), np.stack([b, c, d], 1)]
        u = np.tile(i / n_u, n_v)
        v = np.repeat(np.arange(n_v) / n_v, n_u)
    return torch.from_numpy(np.concatenate(faces).astype(np.int64)), torch.from_numpy(np.stack([u, v], 1)).float()


def grid(n_u: int, n_v: int, closed: bool = True, device: torch.device | str = "cpu") -> Grid:
    faces, uv = _grid_cpu(n_u, n_v, closed)
    return Grid(faces.to(device), uv.to(device), n_u, n_v, closed)


@lru_cache(maxsize=32)
def _base_cpu(shape: str, n_u: int, n_v: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (V, 3), uv (V, 2)) of one base shape on its grid, before normalisation."""
    closed = shape != "torus"
    _, uv = _grid_cpu(n_u, n_v, closed)
    uv = uv.clone()
    phi = 2 * math.pi * uv[:, 0].double()
    if not closed:
        big, small = TORUS_RADII
        psi = 2 * math.pi * uv[:, 1].double() + math.pi / 2
        ring = big + small * torch.cos(psi)
        pos = torch.stack([ring * torch.cos(phi), small * torch.sin(psi), ring * torch.sin(phi)], 1)
        return pos.float(), uv
    row = torch.round(uv[:, 1] * (n_v - 1)).long()  # the row index the placeholder holds
    prof = "sphere" if shape == "cube" else shape
    r, y, v = (torch.from_numpy(a) for a in _profile(prof, n_v))
    pos = torch.stack([r[row] * torch.cos(phi), y[row], r[row] * torch.sin(phi)], 1)
    if shape == "cube":
        pos = pos / pos.abs().amax(dim=1, keepdim=True)
    uv[:, 1] = v[row].float()
    return pos.float(), uv


_BASE_DEVICE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def base_shapes(names: Sequence[str], g: Grid, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (N, V, 3), uv (N, V, 2)) of the base shapes ``names`` on grid ``g``, on ``device``."""
    kinds = tuple(sorted(set(names)))
    key = (kinds, g.n_u, g.n_v, str(device))
    if key not in _BASE_DEVICE:
        if len(_BASE_DEVICE) > 64:
            _BASE_DEVICE.clear()
        pos, uv = zip(*(_base_cpu(k, g.n_u, g.n_v) for k in kinds))
        _BASE_DEVICE[key] = (torch.stack(pos).to(device), torch.stack(uv).to(device))
    pos, uv = _BASE_DEVICE[key]
    idx = torch.tensor([kinds.index(n) for n in names], device=device)
    return pos[idx], uv[idx]


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of (N, V, 3) vertices, (N, V, 3)."""
    tri = vertices[:, faces]
    cross = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals.index_add_(1, faces[:, k], cross)
    return F.normalize(normals, dim=-1, eps=1e-12)


# --------------------------------------------------------------------------------------------------
# Per-scene randomness
# --------------------------------------------------------------------------------------------------


@dataclass
class RenderStyle:
    """How a batch is rendered. ``"train"``: every randomisation below. ``"render"``: the same random
    views, lighting and backgrounds without the augmentations (no crop or warp). ``"xmesh"``: what
    X-Mesh's guidance sees without augmentation (SH lighting, camera at r = 2 with fovy 60 deg, views
    drawn like X-Mesh's, 64 px). ``"views"``: like ``xmesh`` at a random azimuth."""

    mode: str = "train"
    size: int = 64
    lighting: str | None = None  # None = by mode; "sh" | "directional" | "none"


def _scene_params(scene: MeshScene, style: RenderStyle) -> dict[str, float | list[float]]:
    rng = random.Random(scene.seed)
    g = rng.gauss
    p: dict[str, float | list[float]] = {}
    if scene.variant == "smooth":
        p["amp"], p["freq"] = 0.0, 1.0
    elif scene.variant == "blobby":
        p["amp"], p["freq"] = rng.uniform(0.06, 0.12), rng.uniform(1.5, 3.0)
    else:
        p["amp"], p["freq"] = rng.uniform(0.015, 0.03), rng.uniform(8.0, 13.0)
    p["waves"] = [x for _ in range(3) for x in (g(0, 1), g(0, 1), g(0, 1), rng.uniform(0, 2 * math.pi))]
    p["scale"] = [rng.uniform(0.85, 1.15) for _ in range(3)]
    p["yaw"], p["tilt_x"], p["tilt_z"] = rng.uniform(0, 2 * math.pi), g(0, 0.15), g(0, 0.15)
    p["bands"], p["cells"] = rng.choice((4, 5, 6, 7)), rng.choice((6, 8, 10, 12))
    p["phase_u"], p["phase_v"] = rng.random(), rng.random()
    p["split"] = rng.uniform(-0.25, 0.25)
    p["bg_jitter"] = [g(0, 0.03)] * 3 if scene.background != "white" else [-abs(g(0, 0.03))] * 3
    xmesh_like = style.mode in ("xmesh", "views")
    if xmesh_like:
        p["elev"] = max(-1.2, min(1.2, g(0, math.pi / 4)))
        p["azim"] = g(0, math.pi / 2) if style.mode == "xmesh" else rng.uniform(0, 2 * math.pi)
        p["radius"] = 2.0
    else:
        p["elev"] = max(-1.0, min(1.0, g(0, 0.45)))
        p["azim"] = rng.uniform(0, 2 * math.pi)
        p["radius"] = rng.uniform(1.75, 3.0)
    light = style.lighting
    if light is None:
        light = "sh" if xmesh_like else rng.choices(("sh", "directional", "none"), (0.65, 0.25, 0.10))[0]
    p["light"] = {"sh": 0.0, "directional": 1.0, "none": 2.0}[light]
    p["ambient"], p["diffuse"] = rng.uniform(0.25, 0.55), rng.uniform(0.45, 0.85)
    p["light_dir"] = [g(0, 1), abs(g(0, 1)) + 0.3, g(0, 1)]
    p["hires"] = 0.0 if xmesh_like else float(rng.random() < 0.5)
    p["crop"] = 0.0 if xmesh_like else float(rng.random() < 0.35)
    p["warp"] = 0.0 if xmesh_like else float(rng.random() < 0.5)
    if style.mode == "render":
        p["crop"] = p["warp"] = 0.0
    return p


def _rotation(yaw: torch.Tensor, tx: torch.Tensor, tz: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices R = Rz(tz) Rx(tx) Ry(yaw), applied as p @ R^T."""
    def axis(angle, i, j):
        m = torch.eye(3, dtype=angle.dtype, device=angle.device).repeat(len(angle), 1, 1)
        c, s = torch.cos(angle), torch.sin(angle)
        m[:, i, i], m[:, j, j], m[:, i, j], m[:, j, i] = c, c, -s, s
        return m

    return axis(tz, 0, 1) @ axis(tx, 1, 2) @ axis(yaw, 2, 0)


def _stack(params: list[dict], key: str, device) -> torch.Tensor:
    return torch.tensor([p[key] for p in params], dtype=torch.float32, device=device)


def build_geometry(scenes: Sequence[MeshScene], params: list[dict], g: Grid, device) -> torch.Tensor:
    """(N, V, 3) vertices of ``scenes`` (all of ``g``'s topology), posed and normalised to the unit sphere."""
    base = base_shapes([s.shape for s in scenes], g, device)[0]
    normals = vertex_normals(base, g.faces)
    waves = _stack(params, "waves", device).view(-1, 3, 4)
    dirs = F.normalize(waves[..., :3], dim=-1) * _stack(params, "freq", device)[:, None, None]
    bump = torch.sin(torch.einsum("nvc,nkc->nvk", base, dirs) + waves[:, None, :, 3]).sum(-1) / 3.0
    verts = base + normals * (bump * _stack(params, "amp", device)[:, None])[..., None]
    verts = verts * _stack(params, "scale", device)[:, None, :]
    rot = _rotation(_stack(params, "yaw", device), _stack(params, "tilt_x", device), _stack(params, "tilt_z", device))
    verts = verts @ rot.transpose(1, 2)
    verts = verts - verts.mean(dim=1, keepdim=True)
    return verts / verts.norm(dim=-1).amax(dim=1)[:, None, None]


def paint(scenes: Sequence[MeshScene], params: list[dict], uv: torch.Tensor, height: torch.Tensor) -> torch.Tensor:
    """(N, V, 3) vertex colours: ``uv`` (N, V, 2) surface coordinates, ``height`` (N, V) object-space y."""
    device = uv.device
    main = torch.tensor([PAINT_RGB[s.color] for s in scenes], device=device)
    second = torch.tensor([PAINT_RGB[s.color2] if s.color2 else SHADE_OF[s.color] for s in scenes], device=device)
    bottom = torch.tensor([PAINT_RGB[s.bottom or s.color] for s in scenes], device=device)
    bands = _stack(params, "bands", device)[:, None]
    cells = _stack(params, "cells", device)[:, None]
    fu = uv[..., 0] * cells + _stack(params, "phase_u", device)[:, None]
    fv = uv[..., 1] * bands
    stripe = torch.remainder(torch.floor(2 * fv), 2) == 1
    check = torch.remainder(torch.floor(fu) + torch.floor(fv), 2) == 1
    du, dv = torch.remainder(fu, 1.0) - 0.5, torch.remainder(fv + _stack(params, "phase_v", device)[:, None], 1.0) - 0.5
    dot = du * du + dv * dv < 0.32 ** 2
    kind = torch.tensor([("plain", "striped", "dotted", "checkered").index(s.pattern) for s in scenes], device=device)[:, None]
    alt = torch.where(kind == 1, stripe, torch.where(kind == 2, dot, torch.where(kind == 3, check, torch.zeros_like(dot))))
    colors = torch.where(alt[..., None], second[:, None], main[:, None])
    split = torch.tensor([s.bottom is not None for s in scenes], device=device)[:, None]
    below = split & (height < _stack(params, "split", device)[:, None])
    return torch.where(below[..., None], bottom[:, None], colors)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def background_colors(scenes: Sequence[MeshScene], params: list[dict], device) -> torch.Tensor:
    bg = torch.tensor([MESH_BACKGROUND_RGB[s.background] for s in scenes], device=device)
    return (bg + _stack(params, "bg_jitter", device)).clamp(0.0, 1.0)


@torch.no_grad()
def render_mesh_scenes(scenes: Sequence[MeshScene], device: torch.device | str = "cpu",
                       style: RenderStyle | None = None, grid_size: tuple[int, int] = TRAIN_GRID,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Render ``scenes`` (one mesh each): (N, 3, S, S) float images in [0, 1] (see the module docstring).

    ``generator`` drives the crops and warps (CPU; ``None``: the global RNG); everything else comes
    from each scene's seed.
    """
    style = style or RenderStyle()
    device = torch.device(device)
    n = len(scenes)
    size = style.size
    params = [_scene_params(s, style) for s in scenes]
    renderer = TorchRenderer()
    bg = background_colors(scenes, params, device)
    out = torch.empty(n, 3, size, size, device=device)
    hires = torch.tensor([p["hires"] > 0 for p in params])
    light = torch.tensor([p["light"] for p in params])
    for closed in (True, False):
        for hi in (False, True):
            for mode in (0.0, 1.0, 2.0):
                idx = [k for k in range(n) if (scenes[k].shape != "torus") == closed and bool(hires[k]) == hi
                       and float(light[k]) == mode]
                if not idx:
                    continue
                sub = [scenes[k] for k in idx]
                sp = [params[k] for k in idx]
                n_u, n_v = grid_size
                g = grid(n_u, n_v if closed else max(8, (n_v * 2) // 3), closed, device)
                verts = build_geometry(sub, sp, g, device)
                uv = base_shapes([s.shape for s in sub], g, device)[1]
                colors = paint(sub, sp, uv, verts[..., 1])
                if mode == 1.0:  # a directional light in world space, baked into the vertex colours
                    normals = vertex_normals(verts, g.faces)
                    ldir = F.normalize(_stack(sp, "light_dir", device), dim=-1)
                    lam = (normals * ldir[:, None]).sum(-1).clamp(min=0)
                    shade = _stack(sp, "ambient", device)[:, None] + _stack(sp, "diffuse", device)[:, None] * lam
                    colors = (colors * shade[..., None]).clamp(0, 1)
                res = size * 2 if hi else size
                radius = _stack(sp, "radius", device)
                cams = make_cameras(_stack(sp, "elev", "cpu").double(), _stack(sp, "azim", "cpu").double(), 1.0, TRAIN_FOVY,
                                    device=device)
                cams.world_to_cam = cams.world_to_cam.clone()
                cams.world_to_cam[:, 3] *= radius[:, None]  # translation scales with the distance
                rend = renderer.render(verts, g.faces, colors, cams, res, background=None, lighting=mode == 0.0)
                img = torch.where(rend.mask[..., None], rend.image, bg[idx][:, None, None, :]).permute(0, 3, 1, 2)
                if hi:
                    img = F.avg_pool2d(img, 2)
                out[idx] = img
    crop = torch.tensor([p["crop"] > 0 for p in params])
    warp_on = torch.tensor([p["warp"] > 0 for p in params])
    sel = (crop | warp_on).nonzero().squeeze(1)
    if len(sel):
        m = len(sel)
        crops = sample_crops(m, size, size, (0.35, 0.9), generator)
        full = torch.tensor([[0.0, 0.0, size, size]], dtype=torch.float64).expand(m, 4)
        crops = torch.where(crop[sel][:, None], crops, full)
        hom = sample_homographies(m, size, 0.5, 1.0, generator)
        hom = torch.where(warp_on[sel][:, None, None], hom, torch.eye(3, dtype=torch.float64).expand(m, 3, 3))
        grids, valid = grids_from_params(crops, hom, (size, size), size, device)
        sel_d = sel.to(device)
        out[sel_d] = warp(out[sel_d], grids, valid, bg[sel_d])
    return out.clamp_(0.0, 1.0)


def procedural_mesh(shape: str, variant: str = "smooth", seed: int = 0, grid_size: tuple[int, int] = MESH_GRID,
                    scene: MeshScene | None = None):
    """One unpainted procedural mesh as :class:`~attncraft.mesh.io.MeshData` (for stylisation and tests).

    Uses the same geometry as the training renders (``seed`` drives the variant noise and the
    anisotropic scale; the pose is upright and unrotated, so the front view looks at its side).
    """
    from attncraft.mesh.io import prepare_mesh

    if shape not in MESH_SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(MESH_SHAPES)}")
    scene = scene or MeshScene(shape, UNPAINTED, variant=variant, seed=seed)
    params = _scene_params(scene, RenderStyle())
    params.update(yaw=0.0, tilt_x=0.0, tilt_z=0.0)
    n_u, n_v = grid_size
    g = grid(n_u, n_v if shape != "torus" else max(8, (n_v * 2) // 3), shape != "torus")
    verts = build_geometry([scene], [params], g, "cpu")[0]
    name = shape if variant == "smooth" else f"{variant} {shape}"
    return prepare_mesh(verts.numpy(), g.faces.numpy(), name=f"procedural {name}", source=f"procedural {name} (seed {seed})")


def painted_colors(scene: MeshScene, mesh_vertices: np.ndarray, grid_size: tuple[int, int] = MESH_GRID) -> np.ndarray:
    """Vertex colours of ``scene``'s painting on :func:`procedural_mesh` (same grid): (V, 3) float32."""
    params = _scene_params(scene, RenderStyle())
    n_u, n_v = grid_size
    g = grid(n_u, n_v if scene.shape != "torus" else max(8, (n_v * 2) // 3), scene.shape != "torus")
    uv = _base_cpu(scene.shape, g.n_u, g.n_v)[1][None]
    height = torch.as_tensor(np.asarray(mesh_vertices)[None, :, 1], dtype=torch.float32)
    return paint([scene], [params], uv, height)[0].numpy().astype(np.float32)
