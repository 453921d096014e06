"""The reader: a deterministic parser from a Shapes image (or video) back to a scene.

It uses no learned model, only the world's own definitions (palette and shape SDFs), so that it can
judge any generator, including the models trained on this world:

1. **Colour segmentation** - every pixel takes the nearest palette entry (an object colour is the
   segment from the colour to its pattern shade, a background a point) if it is closer than a
   threshold; the pixel also learns whether it is on the shade side (a "pattern" pixel). A 3x3 filter
   re-labels pixels that share their class with fewer than 2 neighbours (noise); the background is
   the most frequent background class.
2. **Connected components** of same-colour pixels (4-connectivity); those smaller than a minimum
   area or without an interior (thin lines: the blended rim of another object) are dropped, holes
   are filled, and the anti-aliased rim is settled by unmixing each rim pixel into object colour
   and background: it belongs to the object when it is at least half object, which is exactly the
   renderer's mask rule (``coverage >= 0.5``). The unmixed coverage also gives a soft mask.
3. **Shape by template matching** - the soft mask is compared (soft IoU) with every shape of the
   world, drawn anti-aliased with the world's own SDFs at the same area and centroid, over rotations
   (coarse to fine, down to 3 degrees). The best template gives shape, radius and angle; it is
   robust to blur and noise because it uses the whole silhouette, not corners.
4. **Attributes** - position = nearest grid anchor of the centroid; size = radius against the
   midpoint of the small and big radii; pattern by correlating the "pattern" pixels with the
   world's stripes, dots and checks drawn on the fitted pose (see :func:`_pattern`).
5. **Video** - objects are read per frame and linked frame to frame by optimal assignment on
   centroid distance (gated), giving tracks with per-frame position, radius, angle and colour.

Why hand-written connected components: scipy (``ndimage.label``) is not a dependency and one small
function does not justify adding it; torch has no labelling op. :func:`connected_components` is the
classic run-based two-pass algorithm: rows are cut into runs of equal class with numpy, a union-find
joins overlapping runs of consecutive rows, so the Python loop is over runs (a few hundred), not
pixels; a 64x64 image takes well under a millisecond.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from attncraft.shapes.palette import BACKGROUND_RGB, BACKGROUNDS, COLOR_RGB, COLORS, SHADE_RGB
from attncraft.shapes.world import ANCHORS, PATTERN_PERIOD, POSITIONS, SHAPES, SIZE_RADIUS, pattern_alpha, shape_sdf

__all__ = [
    "DetectedObject",
    "ReadScene",
    "Track",
    "ReadVideo",
    "to_numpy_image",
    "classify_pixels",
    "connected_components",
    "read_image",
    "read_images",
    "segment",
    "assign",
    "read_video",
    "SYMMETRY",
]

COLOR_THRESHOLD = 0.25
"""Largest RGB distance from a palette entry at which a pixel is still assigned to it."""
MIN_AREA_FRACTION = 0.003
"""Smallest object area, as a fraction of the canvas (12 px at 64x64; a small triangle has ~43)."""
ANGLE_STEP = 6.0
"""Rotation step (degrees) of the template search before its last refinement (which halves it)."""
SIZE_SPLIT = 0.5 * (SIZE_RADIUS["small"] + SIZE_RADIUS["big"])
"""Radius (fraction of the canvas) between small and big."""

SYMMETRY: dict[str, float] = {"circle": 360.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "heart": 360.0, "cross": 90.0}
"""Rotational symmetry period of each shape, in degrees (a circle has every angle)."""

_N_COLORS = len(COLORS)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class DetectedObject:
    """One object found in an image. Coordinates are fractions of the canvas (x right, y down)."""

    color: str
    shape: str
    size: str
    position: str
    pattern: str
    x: float
    y: float
    radius: float
    angle: float
    area: int
    shape_iou: float
    mask: np.ndarray = field(repr=False)
    pattern_fraction: float = 0.0
    pattern_score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("color", "shape", "size", "position", "pattern")}
        d.update(
            x=round(self.x, 4), y=round(self.y, 4), radius=round(self.radius, 4), angle=round(self.angle, 1),
            area=int(self.area), shape_iou=round(self.shape_iou, 3),
        )  # fmt: skip
        return d


@dataclass
class ReadScene:
    objects: list[DetectedObject]
    background: str | None
    size: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}


@dataclass
class Track:
    """One object followed through a video: ``frames[i]`` is the frame index of ``objects[i]``."""

    frames: list[int]
    objects: list[DetectedObject]

    @property
    def first(self) -> DetectedObject:
        return self.objects[0]

    @property
    def last(self) -> DetectedObject:
        return self.objects[-1]

    @property
    def x(self) -> float:
        """Where the track starts (so relations like "above" can be checked on tracks too)."""
        return self.first.x

    @property
    def y(self) -> float:
        return self.first.y

    def majority(self, attr: str) -> str:
        values = [getattr(o, attr) for o in self.objects]
        return max(sorted(set(values)), key=values.count)

    def unwrapped_angles(self) -> list[float]:
        """Angle per seen frame (degrees, counter-clockwise positive), unwrapped: each step is taken
        as the smallest turn modulo the symmetry period of the track's majority shape (so a frame may
        turn by less than half that period: 36 degrees for a star). All zeros for circles."""
        shape = self.majority("shape")
        if shape == "circle":
            return [0.0] * len(self.objects)
        period = SYMMETRY[shape]
        out = [0.0]
        for a, b in itertools.pairwise(self.objects):
            out.append(out[-1] + (b.angle - a.angle + period / 2) % period - period / 2)
        return out

    def rotation(self) -> float:
        """Total signed rotation from the first to the last seen frame (see :meth:`unwrapped_angles`)."""
        return self.unwrapped_angles()[-1]


@dataclass
class ReadVideo:
    frames: list[ReadScene]
    tracks: list[Track]
    background: str | None


# --------------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------------


def to_numpy_image(image: Any) -> np.ndarray:
    """Any image -> (H, W, 3) float32 in [0, 1]. Accepts a torch tensor (3, H, W) or (H, W, 3) in [0, 1]
    (or [-1, 1] when it has negative values), a numpy array (uint8 or float), a PIL image, or a path."""
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3):
            t = t.permute(1, 2, 0)
        elif t.ndim == 3 and t.shape[0] == 3 and t.shape[-1] == 3:
            t = t.permute(1, 2, 0)  # ambiguous 3x3: assume channels first
        if t.min() < 0:
            t = (t + 1) / 2
        arr = t.numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype == np.uint8:
            arr = arr.astype(np.float32) / 255.0
        arr = arr.astype(np.float32)
        if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
            arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"expected an RGB image, got an array of shape {tuple(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


_COLOR_A = np.array([COLOR_RGB[c] for c in COLORS], dtype=np.float32)  # (8, 3)
_SHADE_B = np.array([SHADE_RGB[c] for c in COLORS], dtype=np.float32)
_BG_RGB = np.array([BACKGROUND_RGB[b] for b in BACKGROUNDS], dtype=np.float32)


def classify_pixels(img: np.ndarray, threshold: float = COLOR_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest palette entry of every pixel.

    An object colour is the whole *segment* from the colour to its pattern shade (anti-aliased
    pattern edges are mixtures of the two, and for white the two ends are 0.6 apart); a background
    is a point. Returns ``cls`` (H, W) int: base colour index 0..7, ``8 + b`` for background ``b``,
    -1 when nothing is within ``threshold``; ``shade`` (H, W) bool: the pixel is nearer the shade end
    of its segment (a pattern pixel); ``dist`` (H, W): the distance to the nearest entry.
    """
    p = img.reshape(-1, 1, 3)
    seg = _SHADE_B - _COLOR_A  # (8, 3)
    t = np.clip(((p - _COLOR_A[None]) * seg[None]).sum(-1) / (seg * seg).sum(-1)[None], 0.0, 1.0)  # (P, 8)
    d_obj = np.linalg.norm(p - (_COLOR_A[None] + t[..., None] * seg[None]), axis=-1)
    d_bg = np.linalg.norm(p - _BG_RGB[None], axis=-1)
    d = np.concatenate([d_obj, d_bg], axis=1)
    idx = d.argmin(axis=1)
    dist = d[np.arange(len(idx)), idx]
    cls = np.where(dist <= threshold, idx, -1)
    shade = (idx < _N_COLORS) & (cls >= 0) & (t[np.arange(len(idx)), np.minimum(idx, _N_COLORS - 1)] >= 0.5)
    H, W = img.shape[:2]
    return cls.reshape(H, W).astype(np.int64), shade.reshape(H, W), dist.reshape(H, W)


def _majority_filter(cls: np.ndarray) -> np.ndarray:
    """Clean a class map of salt-and-pepper noise: a pixel that shares its class with fewer than 2 of
    its 8 neighbours takes the class held by at least 5 of its 3x3 neighbourhood (if any). Corners,
    thin stripes and dots (which keep at least 2 same-class neighbours) are untouched."""
    H, W = cls.shape
    pad = np.pad(cls, 1, mode="edge")
    stack = np.stack([pad[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3)])
    own = (stack == cls[None]).sum(axis=0)
    lonely = own < 3
    if not lonely.any():
        return cls
    out = cls.copy()
    for c in np.unique(cls):
        count = (stack == c).sum(axis=0)
        out = np.where(lonely & (count >= 5), c, out)
    return out


def connected_components(cls: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Label 4-connected regions of equal value in ``cls`` (where ``valid``, default ``cls >= 0``).

    Returns (labels (H, W) int with 0 = none and 1..n the components, in raster order of their first
    pixel, n). Run-based labelling: numpy finds the horizontal runs of equal class in every row; a
    union-find joins runs of the same class that overlap in consecutive rows (a Python loop over a
    few hundred runs, not over pixels); the labels are painted back with ``np.repeat``. See the
    module docstring for why this is hand-written.
    """
    H, W = cls.shape
    valid = (cls >= 0) if valid is None else valid.astype(bool)
    key = np.where(valid, cls.astype(np.int64), np.iinfo(np.int64).min)
    # a run starts where the key changes along the row (or at the row start)
    starts_mask = np.ones((H, W), dtype=bool)
    starts_mask[:, 1:] = key[:, 1:] != key[:, :-1]
    rows, cols = np.nonzero(starts_mask)
    ends = np.empty_like(cols)
    ends[:-1] = np.where(rows[1:] == rows[:-1], cols[1:], W)
    ends[-1] = W
    run_key = key[rows, cols]
    run_valid = valid[rows, cols]
    n_runs = len(rows)
    parent = list(range(n_runs))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_start = np.searchsorted(rows, np.arange(H + 1))
    cols_l, ends_l = cols.tolist(), ends.tolist()
    key_l, valid_l = run_key.tolist(), run_valid.tolist()
    for y in range(1, H):
        i, i_end = int(row_start[y - 1]), int(row_start[y])  # runs of the row above
        j, j_end = int(row_start[y]), int(row_start[y + 1])  # runs of this row
        while i < i_end and j < j_end:
            if valid_l[i] and valid_l[j] and key_l[i] == key_l[j] and cols_l[i] < ends_l[j] and cols_l[j] < ends_l[i]:
                ri, rj = find(i), find(j)
                if ri != rj:
                    parent[max(ri, rj)] = min(ri, rj)
            if ends_l[i] < ends_l[j]:
                i += 1
            else:
                j += 1
    roots = np.array([find(k) for k in range(n_runs)], dtype=np.int64)
    roots = np.where(run_valid, roots, -1)
    uniq = np.unique(roots[roots >= 0])
    remap = np.zeros(n_runs, dtype=np.int64)
    remap[run_valid] = np.searchsorted(uniq, roots[run_valid]) + 1
    labels = np.repeat(remap, ends - cols).reshape(H, W)
    return labels, len(uniq)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions of ``mask`` that do not touch the image border."""
    inv = ~mask
    labels, n = connected_components(inv.astype(np.int64), valid=inv)
    if n == 0:
        return mask
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    holes = ~np.isin(labels, border) & inv
    return mask | holes


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~mask)


# --------------------------------------------------------------------------------------------------
# Shape templates
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _unit_shapes() -> dict[str, tuple[float, float, float]]:
    """(area, centroid x, centroid y) of each shape at radius 1, in the local y-up frame."""
    n = 801
    g = torch.linspace(-1.05, 1.05, n)
    cell = float(g[1] - g[0]) ** 2
    v, u = torch.meshgrid(g, g, indexing="ij")
    out = {}
    for s in SHAPES:
        inside = (shape_sdf(s, u, v) <= 0).double()
        area = float(inside.sum()) * cell
        cx = float((inside * u).sum() / inside.sum())
        cy = float((inside * v).sum() / inside.sum())
        out[s] = (area, cx, cy)
    return out


def _match_shapes(
    masks: list[np.ndarray], centroids: list[tuple[float, float]]
) -> list[tuple[str, float, float, float, float, float]]:
    """Best (shape, radius px, angle deg, IoU, origin x px, origin y px) of each component, given as
    a soft coverage map, by soft IoU (sum of minima over sum of maxima) with anti-aliased templates of
    the same area and centroid. The origin is the centre of the shape's SDF, in pixels.

    Coarse to fine: every shape at 18 degree steps, then the three best shapes of each component
    around their best angle at 6 and then 3 degree steps (about 60 templates instead of 250).
    """
    if not masks:
        return []
    unit = _unit_shapes()
    H, W = masks[0].shape
    C = len(masks)
    areas = [float(m.sum()) for m in masks]
    half = max(int(math.ceil(math.sqrt(a / min(u[0] for u in unit.values())) * 1.05)) + 2 for a in areas)
    c = 2 * half
    crops = np.zeros((C, c, c), dtype=np.float32)
    origins = []
    for i, (m, (mx, my)) in enumerate(zip(masks, centroids)):
        x0, y0 = int(math.floor(mx)) - half, int(math.floor(my)) - half
        origins.append((x0, y0))
        xs0, ys0 = max(x0, 0), max(y0, 0)
        xs1, ys1 = min(x0 + c, W), min(y0 + c, H)
        crops[i, ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0] = m[ys0:ys1, xs0:xs1]
    crop_t = torch.from_numpy(crops)  # (C, c, c)
    grid = torch.arange(c, dtype=torch.float32) + 0.5
    cen = torch.tensor(centroids, dtype=torch.float32)
    org = torch.tensor(origins, dtype=torch.float32)
    area_t = torch.tensor(areas, dtype=torch.float32)

    def evaluate(s: str, rows: torch.Tensor, ang: torch.Tensor):
        """IoU, origin x, origin y of shape ``s`` for components ``rows`` at angles ``ang`` (R, T)."""
        a_unit, ux, uy = unit[s]
        r = torch.sqrt(area_t[rows] / a_unit)  # (R,)
        rad = torch.deg2rad(ang)
        cos, sin = torch.cos(rad), torch.sin(rad)  # (R, T)
        # centre of the template such that its centroid lands on the component's centroid
        ox = cen[rows, 0:1] - r[:, None] * (cos * ux - sin * uy)  # image coords (y down)
        oy = cen[rows, 1:2] + r[:, None] * (sin * ux + cos * uy)
        px = org[rows, 0:1, None, None] + grid[None, None, None, :]  # (R, 1, 1, c)
        py = org[rows, 1:2, None, None] + grid[None, None, :, None]  # (R, 1, c, 1)
        rr = r[:, None, None, None]
        lx = (px - ox[:, :, None, None]) / rr
        ly = -(py - oy[:, :, None, None]) / rr
        cs, sn = cos[:, :, None, None], sin[:, :, None, None]
        tmpl = (0.5 - shape_sdf(s, cs * lx + sn * ly, -sn * lx + cs * ly) * rr).clamp(0, 1)  # (R, T, c, c)
        obs = crop_t[rows][:, None]
        iou = torch.minimum(tmpl, obs).sum(dim=(2, 3)) / torch.maximum(tmpl, obs).sum(dim=(2, 3)).clamp(min=1e-6)
        return iou, ox, oy, r

    everyone = torch.arange(C)
    # best[s] = (iou (C,), angle (C,)) per shape after the coarse pass
    coarse: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in SHAPES:
        n_ang = 1 if s == "circle" else max(1, int(round(SYMMETRY[s] / (3 * ANGLE_STEP))))
        ang = (torch.arange(n_ang, dtype=torch.float32) * (SYMMETRY[s] / n_ang))[None].expand(C, -1)
        iou, _, _, _ = evaluate(s, everyone, ang)
        top, arg = iou.max(dim=1)
        coarse[s] = (top, ang[0, arg])
    table = torch.stack([coarse[s][0] for s in SHAPES], dim=1)  # (C, S)
    keep = table.topk(min(3, len(SHAPES)), dim=1).indices
    best = [("circle", 0.0, 0.0, -1.0, 0.0, 0.0)] * C
    for si, s in enumerate(SHAPES):
        rows = (keep == si).any(dim=1).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        ang0 = coarse[s][1][rows]
        if s == "circle":
            iou, ox, oy, r = evaluate(s, rows, ang0[:, None])
            final_ang = ang0[:, None]
        else:
            # refine around the coarse angle: +-6, +-12 degrees, then +-3 around the best
            ang1 = ang0[:, None] + torch.tensor([0.0, -12.0, -6.0, 6.0, 12.0])[None]
            iou1, _, _, _ = evaluate(s, rows, ang1)
            mid = ang1.gather(1, iou1.argmax(dim=1, keepdim=True))
            final_ang = mid + torch.tensor([0.0, -3.0, 3.0])[None]
            iou, ox, oy, r = evaluate(s, rows, final_ang)
        top, arg = iou.max(dim=1)
        for k, i in enumerate(rows.tolist()):
            if float(top[k]) > best[i][3] + 1e-6:
                j = int(arg[k])
                angle = float(final_ang[k, j]) % SYMMETRY[s]
                best[i] = (s, float(r[k]), angle, float(top[k]), float(ox[k, j]), float(oy[k, j]))
    return best


# --------------------------------------------------------------------------------------------------
# Pattern
# --------------------------------------------------------------------------------------------------


_PHASES = (0.0, 1.0 / 6.0, -1.0 / 6.0)
"""Phase offsets (fractions of the period) searched around the world's canonical phase."""


def _pattern_candidates(pattern: int, angles: list[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(angle deg, phase u, phase v) candidates of ``pattern`` around the given angles."""
    cand = []
    for a in angles:
        for da in (0.0, -6.0, 6.0):
            for pv in _PHASES:
                for pu in (_PHASES if pattern != 1 else (0.0,)):
                    cand.append((a + da, pu, pv))
    t = torch.tensor(cand, dtype=torch.float32)
    return t[:, 0], t[:, 1], t[:, 2]


def _pattern(
    mask: np.ndarray, shade: np.ndarray, origin: tuple[float, float], angle: float, shape: str, period: float
) -> tuple[str, float, float]:
    """(pattern, shade fraction, best correlation) of one object, by pattern template matching.

    The object's "pattern shade" pixels (inside its mask, away from the rim) are correlated with the
    stripes / dots / checks of the world drawn where the world draws them: around the fitted shape's
    origin, at the fitted angle (and its symmetric copies, since a square's angle is only known
    modulo 90 degrees). A small search around that pose (+-6 degrees, +-1/6 period) absorbs fitting
    errors and imprecise generated images; a free search over all phases would confuse a small
    dotted object (one dot) with a small checkered one (a few squares).
    """
    inner = _erode(mask)
    if inner.sum() < 8:
        inner = mask
    ys, xs = np.nonzero(inner)
    z = shade[ys, xs].astype(np.float32)
    frac = float(z.mean()) if len(z) else 0.0
    if frac < 0.08 or frac > 0.92 or len(z) < 4:
        return "plain", frac, 0.0
    zt = torch.from_numpy(z - z.mean())
    zn = float(torch.linalg.vector_norm(zt))
    lx = torch.from_numpy(xs.astype(np.float32) + 0.5 - origin[0])
    ly = -torch.from_numpy(ys.astype(np.float32) + 0.5 - origin[1])
    best_name, best_score = "plain", -1.0
    if shape == "circle":  # a circle's silhouette says nothing of its angle: try them all
        angles = [float(a) for a in range(0, 180, 12)]
    else:
        sym = SYMMETRY[shape]
        angles = [angle + k * sym for k in range(int(round(360.0 / sym)))]
    for p, name in ((1, "striped"), (2, "dotted"), (3, "checkered")):
        a, pu, pv = _pattern_candidates(p, angles)
        rad = torch.deg2rad(a)[:, None]
        cos, sin = torch.cos(rad), torch.sin(rad)
        u = cos * lx[None] + sin * ly[None] + pu[:, None] * period
        v = -sin * lx[None] + cos * ly[None] + pv[:, None] * period
        t = pattern_alpha(p, u, v, period)  # (T, n)
        t = t - t.mean(dim=1, keepdim=True)
        ncc = (t @ zt) / (torch.linalg.vector_norm(t, dim=1) * zn).clamp(min=1e-6)
        score = float(ncc.max())
        if score > best_score:
            best_name, best_score = name, score
    if best_score < 0.25:
        return "plain", frac, best_score
    return best_name, frac, best_score


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _coverage(
    pixels: np.ndarray, color: np.ndarray, shade_rgb: np.ndarray, bg_rgb: np.ndarray, hint: np.ndarray | None
) -> np.ndarray:
    """How much of each rim pixel is object (0..1).

    The renderer draws ``bg + cover * (mix(colour, shade, a) - bg)``: two unknowns (cover, cover * a)
    in three channels, solved by least squares when the colour-to-background and colour-to-shade
    directions differ enough. When they do not (white over gray: both directions are gray), the
    pattern amount ``a`` is taken from ``hint`` (the shade fraction of the pixel's neighbours in the
    object; ``None`` for plain objects, a = 0).
    """
    d1 = color - bg_rgb
    q = pixels - bg_rgb
    if hint is None:
        a = (q @ d1) / max(float(d1 @ d1), 1e-6)
        resid = np.linalg.norm(q - a[:, None] * d1[None], axis=1)
        return np.where(resid < 0.2, a, 0.0)
    d2 = shade_rgb - color
    g = np.array([[d1 @ d1, d1 @ d2], [d1 @ d2, d2 @ d2]], dtype=np.float64)
    sin2 = 1.0 - (d1 @ d2) ** 2 / max(float((d1 @ d1) * (d2 @ d2)), 1e-12)
    if sin2 > 0.1:
        rhs = np.stack([q @ d1, q @ d2], axis=1).astype(np.float64)
        sol = rhs @ np.linalg.inv(g).T
        cover, amount = sol[:, 0], np.clip(sol[:, 1], 0.0, None)
        cover = np.maximum(cover, amount)
        resid = np.linalg.norm(q - cover[:, None] * d1[None] - amount[:, None] * d2[None], axis=1)
        return np.where(resid < 0.2, cover, 0.0)
    ref = color[None] + hint[:, None] * d2[None] - bg_rgb[None]  # per pixel
    a = (q * ref).sum(1) / np.maximum((ref * ref).sum(1), 1e-6)
    resid = np.linalg.norm(q - a[:, None] * ref, axis=1)
    return np.where(resid < 0.2, a, 0.0)


def _neighbour_mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the 3x3 neighbours of each pixel that lie in ``where`` (0 if none)."""
    H, W = values.shape
    v = np.pad(np.where(where, values, 0.0), 1)
    w = np.pad(where.astype(np.float32), 1)
    num = sum(v[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
    den = sum(w[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _matte(
    img: np.ndarray, m: np.ndarray, obj_cls: np.ndarray, c: int, shade: np.ndarray, bg_rgb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Settle the anti-aliased rim of component ``m`` the way the renderer draws its masks: a rim
    pixel belongs to the object when it is at least half object over the background (``cover >= 0.5``).

    The inner rim (component pixels touching the outside) may lose pixels, which happens when
    colour-plus-background mixtures still look like the colour (a white object's rim is gray, the
    colour of its own pattern shade); the outer rim, two pixels deep, may gain them.

    Returns the mask and the soft coverage map (what template matching compares with).
    """
    interior = _erode(m)
    plain = (shade & interior).sum() < 0.08 * max(1, interior.sum())
    color = np.array(COLOR_RGB[COLORS[c]], dtype=np.float32)
    shade_rgb = np.array(SHADE_RGB[COLORS[c]], dtype=np.float32)
    hint_map = None if plain else _neighbour_mean(shade.astype(np.float32), interior if interior.any() else m)
    m = m.copy()
    rim = m & _dilate(~m)
    if rim.any():
        keep = _coverage(img[rim], color, shade_rgb, bg_rgb, None if plain else hint_map[rim]) >= 0.5
        if keep.sum() + interior.sum() >= 4:
            m[rim] = keep
    for _ in range(2):
        ring = _dilate(m) & ~m & (obj_cls != c)
        if not ring.any():
            break
        hint = None if plain else _neighbour_mean(shade.astype(np.float32), m)[ring]
        take = _coverage(img[ring], color, shade_rgb, bg_rgb, hint) >= 0.5
        if not take.any():
            break
        m[ring] = take
    # soft coverage: 1 inside, the unmixed coverage on the rim and one pixel beyond
    inner = _erode(m)
    zone = _dilate(m) & ~inner
    soft = inner.astype(np.float32)
    if zone.any():
        hint = None if plain else _neighbour_mean(shade.astype(np.float32), m)[zone]
        soft[zone] = np.clip(_coverage(img[zone], color, shade_rgb, bg_rgb, hint), 0.0, 1.0)
    return m, soft


def _nearest(value: float) -> int:
    return int(np.argmin([abs(value - a) for a in ANCHORS]))


@dataclass
class _Pending:
    """An image segmented but whose components are not yet matched to shapes."""

    size: tuple[int, int]
    background: str | None
    shade: np.ndarray
    masks: list[np.ndarray]
    softs: list[np.ndarray]
    colors: list[int]
    centroids: list[tuple[float, float]]
    boxes: list[tuple[tuple[slice, slice], int, int]]


def _segment(image: Any, threshold: float, min_area: float) -> _Pending:
    """Steps 1-2 of the module docstring: classes, background, components with their matted masks."""
    img = to_numpy_image(image)
    H, W, _ = img.shape
    cls, shade, _ = classify_pixels(img, threshold)
    cls = _majority_filter(cls)
    shade &= cls < _N_COLORS
    bg_counts = np.bincount(cls[cls >= _N_COLORS] - _N_COLORS, minlength=len(BACKGROUNDS))
    background = BACKGROUNDS[int(bg_counts.argmax())] if bg_counts.sum() > 0 else None
    bg_rgb = np.array(
        BACKGROUND_RGB[background] if background else np.median(img.reshape(-1, 3), axis=0), dtype=np.float32
    )
    obj_cls = np.where((cls >= 0) & (cls < _N_COLORS), cls, -1)
    labels, n = connected_components(obj_cls)
    min_px = max(4, int(round(min_area * H * W)))
    out = _Pending((H, W), background, shade, [], [], [], [], [])
    if not n:
        return out
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    pad = 4
    for lab in np.nonzero(sizes >= min_px)[0]:
        if lab == 0:
            continue
        m = labels == lab
        c = int(obj_cls[m][0])
        # work on the component's padded bounding box: a few hundred pixels instead of the canvas
        ys, xs = np.nonzero(m)
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, H)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, W)
        box = (slice(y0, y1), slice(x0, x1))
        core = int(_erode(m[box]).sum())
        if core < max(3, 0.15 * int(sizes[lab])):
            continue  # a thin line: the anti-aliased rim of another object, not an object
        mc, soft_c = _matte(img[box], _fill_holes(m[box]), obj_cls[box], c, shade[box], bg_rgb)
        total = float(soft_c.sum())
        if total < 1e-6:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        out.centroids.append((float((soft_c * gx).sum()) / total, float((soft_c * gy).sum()) / total))
        full_m = np.zeros((H, W), dtype=bool)
        full_m[box] = mc
        full_s = np.zeros((H, W), dtype=np.float32)
        full_s[box] = soft_c
        out.masks.append(full_m)
        out.softs.append(full_s)
        out.colors.append(c)
        out.boxes.append((box, x0, y0))
    return out


def _finish(p: _Pending, matches: list[tuple[str, float, float, float, float, float]]) -> ReadScene:
    """Steps 3-4: attributes of each matched component."""
    H, W = p.size
    objects = []
    for m, c, (cx, cy), (box, x0, y0), (shape, r_px, angle, iou, ox, oy) in zip(
        p.masks, p.colors, p.centroids, p.boxes, matches
    ):
        radius = r_px / W
        pattern, frac, score = _pattern(m[box], p.shade[box], (ox - x0, oy - y0), angle, shape, PATTERN_PERIOD * W)
        x, y = cx / W, cy / H
        objects.append(
            DetectedObject(
                color=COLORS[c], shape=shape, size="big" if radius >= SIZE_SPLIT else "small",
                position=POSITIONS[3 * _nearest(y) + _nearest(x)], pattern=pattern,
                x=x, y=y, radius=radius, angle=angle, area=int(m.sum()), shape_iou=iou, mask=m,
                pattern_fraction=frac, pattern_score=score,
            )  # fmt: skip
        )
    objects.sort(key=lambda o: -o.area)
    return ReadScene(objects=objects, background=p.background, size=(H, W))


def read_images(images: Any, threshold: float = COLOR_THRESHOLD, min_area: float = MIN_AREA_FRACTION) -> list[ReadScene]:
    """Read a batch of images of one size (a (N, 3, H, W) tensor or a sequence); the shape templates
    of all their objects are matched in one batched call, which is faster than one call per image."""
    pending = [_segment(im, threshold, min_area) for im in images]
    sizes = {p.size for p in pending}
    if len(sizes) > 1:
        return [read_image(im, threshold, min_area) for im in images]
    softs = [s for p in pending for s in p.softs]
    cents = [c for p in pending for c in p.centroids]
    matches = _match_shapes(softs, cents)
    out, k = [], 0
    for p in pending:
        n = len(p.softs)
        out.append(_finish(p, matches[k : k + n]))
        k += n
    return out


def read_image(image: Any, threshold: float = COLOR_THRESHOLD, min_area: float = MIN_AREA_FRACTION) -> ReadScene:
    """Read one image (see :func:`to_numpy_image` for accepted types) into a :class:`ReadScene`.

    ``threshold`` is the largest RGB distance at which a pixel still counts as a palette colour;
    components smaller than ``min_area`` (fraction of the canvas) are ignored. Objects are sorted
    by area, largest first.
    """
    p = _segment(image, threshold, min_area)
    return _finish(p, _match_shapes(p.softs, p.centroids))


def segment(image: Any) -> np.ndarray:
    """(K, H, W) bool masks of the objects the reader finds (largest first)."""
    scene = read_image(image)
    H, W = scene.size
    if not scene.objects:
        return np.zeros((0, H, W), dtype=bool)
    return np.stack([o.mask for o in scene.objects])


# --------------------------------------------------------------------------------------------------
# Videos
# --------------------------------------------------------------------------------------------------


def assign(cost: np.ndarray, max_cost: float = math.inf) -> list[tuple[int, int]]:
    """Optimal one-to-one assignment minimising total cost (exhaustive: fine for a handful of items),
    dropping pairs costlier than ``max_cost``. Returns (row, col) pairs."""
    n, m = cost.shape
    if n == 0 or m == 0:
        return []
    if n > m:
        return [(r, c) for c, r in assign(cost.T, max_cost)]
    capped = np.minimum(cost, max_cost)
    if math.perm(m, n) > 50000:  # greedy fallback for unusually crowded images
        pairs, used_r, used_c = [], set(), set()
        for flat in np.argsort(capped, axis=None):
            r, c = divmod(int(flat), m)
            if r not in used_r and c not in used_c:
                pairs.append((r, c))
                used_r.add(r)
                used_c.add(c)
        return [(r, c) for r, c in pairs if cost[r, c] <= max_cost]
    best, best_perm = math.inf, None
    rows = np.arange(n)
    for perm in itertools.permutations(range(m), n):
        total = capped[rows, perm].sum()
        if total < best:
            best, best_perm = total, perm
    return [(r, c) for r, c in zip(rows.tolist(), best_perm) if cost[r, c] <= max_cost]


def read_video(frames: Any, max_step: float = 0.2) -> ReadVideo:
    """Read every frame of a video ((F, 3, H, W) tensor, (F, H, W, 3) array or a list of images) and
    link objects across frames into :class:`Track` s (a link moves at most ``max_step`` of the canvas
    between consecutive frames in which the object is seen)."""
    if isinstance(frames, torch.Tensor) and frames.ndim == 5 and frames.shape[0] == 1:
        frames = frames[0]
    read = read_images(frames)
    tracks: list[Track] = []
    active: list[int] = []
    for fi, scene in enumerate(read):
        objs = scene.objects
        cost = np.array(
            [[math.hypot(tracks[t].last.x - o.x, tracks[t].last.y - o.y) for o in objs] for t in active],
            dtype=np.float64,
        ).reshape(len(active), len(objs))
        pairs = assign(cost, max_step)
        matched_objs = set()
        still_active = []
        for ti, oi in pairs:
            tracks[active[ti]].frames.append(fi)
            tracks[active[ti]].objects.append(objs[oi])
            matched_objs.add(oi)
            still_active.append(active[ti])
        for oi, o in enumerate(objs):
            if oi not in matched_objs:
                tracks.append(Track([fi], [o]))
                still_active.append(len(tracks) - 1)
        # tracks unseen in this frame stay active (objects may be missed in a frame)
        active = sorted(set(active) | set(still_active))
    bgs = [s.background for s in read if s.background]
    background = max(sorted(set(bgs)), key=bgs.count) if bgs else None
    tracks.sort(key=lambda t: -len(t.frames))
    return ReadVideo(frames=read, tracks=tracks, background=background)
