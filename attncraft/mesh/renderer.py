"""Differentiable mesh rendering behind one interface, and the default pure-PyTorch backend.

What is reproduced (spec §5.3-5.4, kaolin v0.12 as X-Mesh calls it):

* ``prepare_vertices``: vertices to camera space (``[p, 1] @ M``), perspective projection to the
  image plane in [-1, 1], unit face normals in **camera** space.
* ``dibr_rasterization`` used as X-Mesh uses it: **hard** rasterisation (nearest face per pixel by
  camera depth interpolated with image-space barycentrics), **back-face culling** (a face is drawn
  only if its camera-space normal has z >= 0; like kaolin, this ignores the perspective view
  direction, so a few pixels near concave silhouettes show the background, as in the reference),
  vertex attributes interpolated with image-space
  (not perspective-corrected) barycentrics. Gradients reach the attributes *and* the image-space
  vertex positions through the barycentrics; there are no silhouette gradients (the reference
  ignores DIB-R's soft mask).
* Shading: flat spherical-harmonic lighting with coefficients [1, 1, 1, 1, 0, ...], which reduces to
  ``L(n) = 0.28209479 + 0.48860251 (n_x + n_y + n_z)`` for the camera-space face normal ``n``;
  ``image = clamp(clamp(colour, 0, 1) * L, 0, 1)``; background pixels take the background colour
  (white by default), edges are not anti-aliased.

The torch backend (:class:`TorchRenderer`) works in two steps:

1. *Visibility* (no gradient): for every front-facing face, enumerate the pixel centres inside its
   screen bounding box, test them with precomputed edge functions, and keep the nearest face per
   pixel with one ``scatter_reduce(amin)`` over a 64-bit key ``depth_bits << 32 | face``. Depth is
   positive, so the IEEE bit pattern of a float32 depth orders like the depth itself, and the face
   index breaks ties deterministically. Candidates are processed in chunks of bounded size so big
   triangles at high resolution cannot exhaust memory. Cost is proportional to the summed bounding-box
   areas, i.e. to the covered pixels times the depth complexity, not to faces x pixels.
2. *Shading* (differentiable): for each covered pixel, gather its face's three projected vertices,
   recompute the barycentrics with autograd, interpolate the colours, light and composite.

Everything is batched over views (and over per-view vertex positions/colours when given as (B, V, 3)),
runs the same on CPU and CUDA, and supports float64 for finite-difference checks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from attncraft.mesh.camera import Cameras

SH_BAND0 = 0.28209479
SH_BAND1 = 0.48860251
NEAR = 1e-4
_KEY_EMPTY = torch.iinfo(torch.int64).max


@dataclass
class RenderOutput:
    """``image`` (B, H, W, 3) in [0, 1]; ``mask`` (B, H, W) bool; ``face_index`` (B, H, W), -1 = background."""

    image: torch.Tensor
    mask: torch.Tensor
    face_index: torch.Tensor


def sh_lighting(normals: torch.Tensor) -> torch.Tensor:
    """kaolin's SH lighting for coefficients [1, 1, 1, 1, 0, 0, 0, 0, 0] (spec §5.4)."""
    return SH_BAND0 + SH_BAND1 * normals.sum(dim=-1)


class MeshRenderer(ABC):
    """Common interface of all backends."""

    name = "abstract"

    @abstractmethod
    def render(self, vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None, cameras: Cameras,
               height: int, width: int | None = None, background=(1.0, 1.0, 1.0), lighting: bool = True) -> RenderOutput:
        """Render B = len(cameras) views.

        ``vertices`` (V, 3) or (B, V, 3); ``faces`` (F, 3) long; ``colors`` (V, 3) or (B, V, 3) in
        [0, 1] (``None`` = 0.5 grey); ``background`` an RGB triple or ``None`` (black, no compositing).
        """


def project(vertices: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """World vertices (V, 3)/(B, V, 3) -> camera-space (B, V, 3) and image-plane (B, V, 2) coordinates."""
    m = cameras.world_to_cam.to(device=vertices.device, dtype=vertices.dtype)
    cam = vertices @ m[:, :3] + m[:, 3:]  # broadcasts (V,3) against (B,3,3)
    focal = 1.0 / math.tan(cameras.fovy / 2.0)
    depth = (-cam[..., 2]).clamp_min(NEAR)
    img = torch.stack([cam[..., 0] * (focal / cameras.aspect) / depth, cam[..., 1] * focal / depth], dim=-1)
    return cam, img


def face_normals(cam_vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit camera-space face normals (B, F, 3) from camera-space vertices (B, V, 3)."""
    tri = cam_vertices[:, faces]  # (B, F, 3, 3)
    n = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1)
    return torch.nn.functional.normalize(n, dim=-1, eps=1e-20)


@torch.no_grad()
def rasterize_face_ids(img: torch.Tensor, cam: torch.Tensor, normals: torch.Tensor, faces: torch.Tensor,
                       height: int, width: int, max_candidates: int | None = None) -> torch.Tensor:
    """Hard z-buffer: (B, H, W) long index of the nearest visible face per pixel, -1 where empty."""
    device = img.device
    batch = img.shape[0]
    num_faces = faces.shape[0]
    if max_candidates is None:
        max_candidates = 1 << (23 if device.type == "cuda" else 20)
    tri = img[:, faces].float()  # (B, F, 3, 2)
    zdep = (-cam[..., 2])[:, faces].float()  # (B, F, 3), positive in front of the camera
    front = (normals[..., 2] >= 0) & (zdep > NEAR).all(-1)
    ax, ay = tri[..., 0, 0], tri[..., 0, 1]
    bx, by = tri[..., 1, 0], tri[..., 1, 1]
    cx, cy = tri[..., 2, 0], tri[..., 2, 1]
    area = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    front &= area.abs() > 1e-12
    # Pixel centres: x = (2j + 1)/W - 1, y = 1 - (2i + 1)/H  ->  j = (x + 1) W/2 - 1/2, i = (1 - y) H/2 - 1/2.
    cols = (tri[..., 0] + 1.0) * (width / 2.0) - 0.5
    rows = (1.0 - tri[..., 1]) * (height / 2.0) - 0.5
    c0 = torch.ceil(cols.amin(-1)).clamp(min=0)
    c1 = torch.floor(cols.amax(-1)).clamp(max=width - 1)
    r0 = torch.ceil(rows.amin(-1)).clamp(min=0)
    r1 = torch.floor(rows.amax(-1)).clamp(max=height - 1)
    nx = (c1 - c0 + 1).clamp(min=0)
    ny = (r1 - r0 + 1).clamp(min=0)
    counts = torch.where(front, nx * ny, torch.zeros_like(nx)).long().reshape(-1)
    sel = counts.nonzero().squeeze(1)  # flat (b * F + f) of faces with candidate pixels
    zkey = torch.full((batch * height * width,), _KEY_EMPTY, dtype=torch.int64, device=device)
    if sel.numel() == 0:
        return torch.full((batch, height, width), -1, dtype=torch.long, device=device)
    counts = counts[sel]
    # Edge functions w_k = cross(v_{k+1} - p, v_{k+2} - p) / area and the depth plane z = sum_k w_k z_k are
    # affine in the pixel position; expressed in pixel steps from the bounding-box corner they become
    # value = T[2] + col * T[0] + row * T[1] for the 4 outputs (w0, w1, w2, depth): 2 fused ops per candidate.
    inv = 1.0 / area.reshape(-1)[sel]
    pts = tri.reshape(-1, 3, 2)[sel]
    zs = zdep.reshape(-1, 3)[sel]
    px, py = pts[..., 0], pts[..., 1]
    nxt, prv = [1, 2, 0], [2, 0, 1]
    coef_a = (py[:, nxt] - py[:, prv]) * inv[:, None]  # d w_k / d x
    coef_b = (px[:, prv] - px[:, nxt]) * inv[:, None]  # d w_k / d y
    coef_a = torch.cat([coef_a, (coef_a * zs).sum(-1, keepdim=True)], 1)
    coef_b = torch.cat([coef_b, (coef_b * zs).sum(-1, keepdim=True)], 1)
    col0, row0 = c0.reshape(-1)[sel], r0.reshape(-1)[sel]
    x0 = (2.0 * col0 + 1.0) / width - 1.0  # NDC of the bounding-box corner pixel centre
    y0 = 1.0 - (2.0 * row0 + 1.0) / height
    # Values at the corner from vertex offsets relative to it (small numbers: no cancellation, so
    # a pixel centre on a shared edge is not lost to rounding by both faces).
    dx, dy = px - x0[:, None], py - y0[:, None]
    w_corner = (dx[:, nxt] * dy[:, prv] - dy[:, nxt] * dx[:, prv]) * inv[:, None]
    at_corner = torch.cat([w_corner, (w_corner * zs).sum(-1, keepdim=True)], 1)
    table = torch.stack([coef_a * (2.0 / width), coef_b * (-2.0 / height), at_corner], dim=1)  # (S, 3, 4)
    cum = torch.cumsum(counts, 0)
    total = int(cum[-1])
    ints = torch.stack([cum - counts,  # first candidate of each face
                        nx.reshape(-1)[sel].long(),  # bounding-box width
                        (sel // num_faces) * (height * width) + row0.long() * width + col0.long(),  # corner pixel
                        sel % num_faces], dim=1)  # face index
    # Split the faces into chunks whose candidate count stays below max_candidates (one face may exceed
    # it). The common single-chunk case costs one host sync (the total) for the whole rasterisation.
    chunks = [(0, len(counts), 0, total)]
    if total > max_candidates:
        marks = torch.arange(max_candidates, total, max_candidates, device=device)
        cuts = torch.searchsorted(cum, marks, right=False).unique().tolist()
        bounds = [0] + [c for c in cuts if 0 < c < len(counts)] + [len(counts)]
        starts = (cum - counts)[bounds[:-1]].tolist()
        ends = cum[[b - 1 for b in bounds[1:]]].tolist()
        chunks = [(a, b, first, last - first) for a, b, first, last in zip(bounds[:-1], bounds[1:], starts, ends)]
    eps = -1e-6
    for start, stop, first, n_cand in chunks:
        if stop <= start or n_cand <= 0:
            continue
        owner = torch.repeat_interleave(torch.arange(start, stop, device=device), counts[start:stop],
                                        output_size=n_cand)
        meta = ints[owner]
        local = torch.arange(first, first + n_cand, device=device) - meta[:, 0]
        row = torch.div(local, meta[:, 1], rounding_mode="floor")
        col = local - row * meta[:, 1]
        t = table[owner]
        val = torch.addcmul(torch.addcmul(t[:, 2], col.to(t.dtype)[:, None], t[:, 0]), row.to(t.dtype)[:, None], t[:, 1])
        inside = (val[:, :3] >= eps).all(dim=1) & (val[:, 3] > NEAR)
        # Candidates that miss get the empty key, so no filtering (and no host sync) is needed.
        key = torch.where(inside, (val[:, 3].contiguous().view(torch.int32).long() << 32) | meta[:, 3], _KEY_EMPTY)
        pix = meta[:, 2] + row * width + col
        _scatter_min(zkey, pix, key)
    face_id = torch.where(zkey == _KEY_EMPTY, torch.full_like(zkey, -1), zkey & 0xFFFFFFFF)
    return face_id.view(batch, height, width)


def _scatter_min(target: torch.Tensor, index: torch.Tensor, key: torch.Tensor) -> None:
    """``target[index] = min(target[index], key)`` for int64 keys.

    ``scatter_reduce_(amin)`` on int64 is one pass; builds where it is not implemented for int64 fall
    back to comparing depth (the high 32 bits) first and the face index (low bits) second.
    """
    try:
        target.scatter_reduce_(0, index, key, reduce="amin", include_self=True)
        return
    except (RuntimeError, NotImplementedError):
        pass
    hi = (key >> 32).double()
    best_hi = torch.full(target.shape, float("inf"), dtype=torch.float64, device=target.device)
    best_hi = torch.where(target == _KEY_EMPTY, best_hi, (target >> 32).double())
    best_hi.scatter_reduce_(0, index, hi, reduce="amin", include_self=True)
    winner = hi == best_hi[index]
    lo = torch.where(winner, (key & 0xFFFFFFFF).double(), torch.full_like(hi, float("inf")))
    best_lo = torch.where((target >> 32).double() == best_hi, (target & 0xFFFFFFFF).double(),
                          torch.full_like(best_hi, float("inf")))
    best_lo.scatter_reduce_(0, index, lo, reduce="amin", include_self=True)
    found = torch.isfinite(best_hi) & torch.isfinite(best_lo)
    target.copy_(torch.where(found, (best_hi.long() << 32) | best_lo.long(), target))


class TorchRenderer(MeshRenderer):
    """The built-in pure-PyTorch backend (default; CPU and CUDA). See the module docstring."""

    name = "torch"

    def __init__(self, max_candidates: int | None = None):
        self.max_candidates = max_candidates

    def render(self, vertices, faces, colors, cameras, height, width=None, background=(1.0, 1.0, 1.0), lighting=True):
        width = width or height
        faces = faces.to(device=vertices.device, dtype=torch.long)
        batch = len(cameras)
        cam, img = project(vertices, cameras)
        if cam.shape[0] != batch:
            cam, img = cam.expand(batch, -1, -1), img.expand(batch, -1, -1)
        normals = face_normals(cam, faces)
        face_id = rasterize_face_ids(img.detach(), cam.detach(), normals.detach(), faces, height, width,
                                     self.max_candidates)
        return shade(img, normals, faces, colors, face_id, background, lighting, vertices.dtype)


def pixel_centers(height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x (columns) and y (rows, +y up) of pixel centres."""
    x = (2.0 * torch.arange(width, device=device, dtype=dtype) + 1.0) / width - 1.0
    y = 1.0 - (2.0 * torch.arange(height, device=device, dtype=dtype) + 1.0) / height
    return x, y


def shade(img: torch.Tensor, normals: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None,
          face_id: torch.Tensor, background, lighting: bool, dtype: torch.dtype) -> RenderOutput:
    """Differentiable part shared by backends: barycentrics, colour interpolation, lighting, background."""
    batch, height, width = face_id.shape
    device = img.device
    num_verts = img.shape[1]
    flat = face_id.reshape(-1)
    covered = flat >= 0
    idx = covered.nonzero().squeeze(1)
    b = torch.div(idx, height * width, rounding_mode="floor")
    f = flat[idx]
    vid = faces[f]  # (M, 3)
    gidx = b[:, None] * num_verts + vid
    tri = img.reshape(-1, 2)[gidx]  # (M, 3, 2), differentiable w.r.t. vertex positions
    xs, ys = pixel_centers(height, width, device, img.dtype)
    rem = idx % (height * width)
    p = torch.stack([xs[rem % width], ys[torch.div(rem, width, rounding_mode="floor")]], dim=-1)  # (M, 2)
    d = tri - p[:, None, :]  # vertices relative to the pixel centre
    # w_k = cross(v_{k+1} - p, v_{k+2} - p) / cross(v_1 - v_0, v_2 - v_0)
    cross = d[:, [1, 2, 0], 0] * d[:, [2, 0, 1], 1] - d[:, [1, 2, 0], 1] * d[:, [2, 0, 1], 0]
    area = cross.sum(dim=1, keepdim=True)
    bary = cross / area
    if colors is None:
        col = torch.full((idx.numel(), 3), 0.5, device=device, dtype=dtype)
    else:
        colors = colors.to(device=device)
        if colors.dim() == 2:
            vc = colors[vid]
        else:
            vc = colors.reshape(-1, colors.shape[-1])[b[:, None] * colors.shape[1] + vid]
        col = (bary[..., None] * vc).sum(dim=1)
    col = col.clamp(0.0, 1.0)
    if lighting:
        light = sh_lighting(normals.reshape(-1, 3)[b * faces.shape[0] + f])
        col = (col * light[:, None]).clamp(0.0, 1.0)
    bg = torch.zeros(3, device=device, dtype=col.dtype) if background is None else torch.as_tensor(
        background, device=device, dtype=col.dtype)
    image = bg.expand(batch * height * width, 3).index_put((idx,), col)
    return RenderOutput(image.view(batch, height, width, 3), covered.view(batch, height, width),
                        face_id)


def kaolin_status() -> tuple[bool, str]:
    """Whether a *real* kaolin with ``dibr_rasterization`` is importable, and why not.

    PyPI's ``kaolin`` 0.1 is a placeholder whose import raises ImportError; NVIDIA's real wheels live
    on NVIDIA's own index.
    """
    try:
        import kaolin  # type: ignore[import-not-found]
    except ImportError as exc:
        text = " ".join(str(exc).split())
        if "placeholder" in text.lower():
            return False, "the installed 'kaolin' is the PyPI placeholder package (the real wheels are on NVIDIA's index)"
        return False, f"kaolin is not installed ({text[:120]})"
    except Exception as exc:  # noqa: BLE001 - broken installs raise OSError/RuntimeError on import
        return False, f"kaolin failed to import ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    mesh = getattr(getattr(kaolin, "render", None), "mesh", None)
    if mesh is None or not hasattr(mesh, "dibr_rasterization") or not hasattr(mesh, "prepare_vertices"):
        return False, f"kaolin {getattr(kaolin, '__version__', '?')} has no render.mesh.dibr_rasterization"
    return True, f"kaolin {getattr(kaolin, '__version__', '?')}"


def get_renderer(name: str = "auto", *, verbose: bool = False, device: torch.device | str | None = None) -> tuple[MeshRenderer, str]:
    """Return (renderer, message). ``auto``/``torch`` -> :class:`TorchRenderer`; ``kaolin`` -> the kaolin
    backend if a real kaolin is importable (and the device is CUDA), else the torch backend with a
    message saying why.
    """
    from attncraft.errors import InputError

    name = (name or "auto").lower()
    if name in ("auto", "torch", "pytorch"):
        return TorchRenderer(), "renderer: torch (built-in)"
    if name == "kaolin":
        ok, why = kaolin_status()
        if ok and device is not None and torch.device(device).type != "cuda":
            ok, why = False, "kaolin's DIB-R rasteriser needs a CUDA device"
        if ok:
            from attncraft.mesh.kaolin_backend import KaolinRenderer

            return KaolinRenderer(), f"renderer: kaolin ({why})"
        return TorchRenderer(), f"renderer: torch (kaolin unavailable: {why})"
    raise InputError(f"unknown renderer {name!r}", "pass auto, torch or kaolin")
