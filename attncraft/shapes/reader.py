"""The reader: a deterministic parser from a Shapes image (or video) back to a scene.

It uses no learned model, only the world's own definitions (palette and shape SDFs), so that it can
judge any generator, including the models trained on this world. It is built to judge content, not
pixel-perfect rendering: the outputs it scores (edits, customizations, video frames, generated
images) are often a little soft, resampled or recompressed, and a referee that fails them for that
measures the wrong thing (``benchmarks/bench_reader_damage.py`` measures it under blur, JPEG and
resizing). And it must say no to what is no scene of the world at all.

1. **Colour segmentation** - every pixel takes the nearest palette entry (an object colour is the
   segment from the colour to its pattern shade, a background a point) if it is closer than a
   threshold; the pixel also learns whether it is on the shade side (a "pattern" pixel). A 3x3 filter
   re-labels pixels that share their class with fewer than 2 neighbours (noise); the background is
   the most frequent background class.
2. **Connected components** of same-colour pixels (4-connectivity); those smaller than a minimum
   area or without an interior (thin lines: the blended rim of another object) are dropped. Every
   pixel within three pixels of a component is unmixed into object colour and background
   (:func:`_coverage`, in a luma-weighted metric: JPEG keeps luma sharp and colour at half
   resolution) into a **soft coverage** map; the mask is the renderer's rule, ``coverage >= 0.5``.
   The soft map keeps a blurred edge whole, so its sum (the area) and centroid survive blur.
3. **Shape by template matching** - the soft map is compared with every shape of the world, drawn
   anti-aliased with the world's own SDFs at the same area and centroid, over rotations (coarse to
   fine, down to 3 degrees) and over Gaussian blurs (:data:`BLUR_SIGMAS`: a soft image is compared
   with equally soft templates). The best template (least squares) gives shape, radius, angle and
   the image's blur; it uses the whole silhouette, not corners.
4. **Attributes** - position = nearest grid anchor of the centroid; size = radius against the
   midpoint of the small and big radii; pattern by correlating each pixel's shade amount with the
   world's stripes, dots and checks drawn on the fitted pose and blurred like the fitted template,
   after the background mixed into the rim is taken out (see :func:`_pattern`).
5. **Plausibility** - a region is no object when it fills or spans too much of the canvas, is cut by
   the canvas edge, has a hole, has a radius no object has, or matches no shape well enough; an
   image is no scene when less than half of it is background. Such regions are not objects: they
   are listed in :attr:`ReadScene.rejected` with the reasons, and the scores
   (:mod:`attncraft.shapes.scoring`) carry them (``plausible`` = 0 and ``reasons``), so a red canvas
   is not "a big red square in the center".
6. **Video** - objects are read per frame and linked frame to frame by optimal assignment on
   centroid distance (gated), giving tracks with per-frame position, radius, angle and colour.
7. **JPEG** - only for an image that shows evidence of JPEG compression (:func:`jpeg_quality`:
   it is nearly unchanged by recompression at some quality, or its luma DCT coefficients sit on that
   quality's quantisation grid; never the case on the clean, blurred or resized renders and generated
   images measured), each object's shape and pattern are re-decided by analysis by synthesis
   (:func:`_refine_jpeg`): every shape of the world (fitted as in step 3, turned by 0 and +-4
   degrees) with each pattern is drawn by the world's renderer, compressed at the image's quality, and the one
   closest to the image wins. JPEG keeps colour at a quarter of the pixels, which is what breaks
   steps 3-4 for small objects differing from the background (or their shade) mostly in hue; the
   synthesis compares like with like. Any other image is read exactly as without this step.

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
from attncraft.shapes.world import (
    ANCHORS, PATTERN_PERIOD, POSITIONS, SHAPES, SIZE_RADIUS, ObjectState, pattern_alpha, shape_sdf,
)  # fmt: skip

__all__ = [
    "DetectedObject",
    "Rejected",
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
    "jpeg_quality",
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

# Plausibility: what an object of the world can look like (see :func:`_region_reasons`, :func:`_finish`).
MAX_AREA_FRACTION = 0.1
"""Largest area of an object (fraction of the canvas): a big circle, the largest object of the world,
covers 4.1 %; a region of more is background-like (a canvas of one colour, a half-and-half canvas)."""
MAX_SPAN_FRACTION = 0.45
"""Largest width or height of an object (fraction of the canvas; a big object spans at most 27 %)."""
MAX_HOLE_PIXELS = 8
MAX_HOLE_FRACTION = 0.15
"""A region whose mask encloses more than this many pixels (and this fraction of its area) that are
not the object has a hole: a ring, a frame, a letter O; no shape of the world has one (a generated
checkered object may show a few dark checks, 7 % of its area at most in the shipped model's images)."""
MIN_BACKGROUND_FRACTION = 0.5
"""Least share of the canvas in the scene's background colour (three big objects leave it 85 %): an
image with less is no scene of the world on a background (noise, a gradient, a photograph)."""
MAX_EDGE_PIXELS = 2
"""Most pixels an object may have on the canvas border (the world keeps every object 2 px inside it
at 64x64); a region cut by the border continues beyond the picture: a stripe, a band, a frame."""
RADIUS_RANGE = (0.5 * SIZE_RADIUS["small"], 1.5 * SIZE_RADIUS["big"])
"""Smallest and largest fitted radius of an object (fraction of the canvas): half a small one and
half again a big one."""
MIN_SHAPE_IOU = 0.6
"""Least soft IoU between a region and its best shape template (blurred as the image is). Lowest values
measured on 300 world renders: 0.83 clean, 0.77 blurred, 0.82 resized, 0.66 after JPEG 75 or 50
(patterned objects whose colour and background differ mostly in chroma, which JPEG keeps at a quarter
of the pixels); on 240 images of the shipped Shapes SD 0.75. An L or a crescent scores under 0.5; a
lumpy blob 0.6-0.7 with its nearest shape (a rounded triangle is a fair reading of it)."""

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
    blur: float = 0.0
    pattern_gain: float = 0.0
    pattern_candidate: str = "plain"
    """Standard deviation (pixels) of the Gaussian blur of the best shape template (0: sharp)."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("color", "shape", "size", "position", "pattern")}
        d.update(
            x=round(self.x, 4), y=round(self.y, 4), radius=round(self.radius, 4), angle=round(self.angle, 1),
            area=int(self.area), shape_iou=round(self.shape_iou, 3),
        )  # fmt: skip
        return d


@dataclass
class Rejected:
    """A region the reader refused to take for an object (see :func:`_plausibility`): what it was
    read as, as far as it got, and why not."""

    color: str
    x: float
    y: float
    area: int
    reasons: list[str]
    shape: str | None = None
    radius: float | None = None
    shape_iou: float | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    def describe(self) -> str:
        what = f"{self.color} {self.shape or 'region'} at ({self.x:.2f}, {self.y:.2f})"
        return f"{what}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"color": self.color, "x": round(self.x, 4), "y": round(self.y, 4), "area": int(self.area)}
        if self.shape is not None:
            d.update(shape=self.shape, radius=round(float(self.radius or 0.0), 4), shape_iou=round(float(self.shape_iou or 0.0), 3))
        d["reasons"] = list(self.reasons)
        return d


@dataclass
class ReadScene:
    """What the reader found: ``objects`` (largest first), the background, the canvas size, and the
    regions it ``rejected`` as no object of the world (too big, too small, filling the canvas, cut by
    its edge, or matching no shape): an image with such a region depicts something else as well."""

    objects: list[DetectedObject]
    background: str | None
    size: tuple[int, int]
    rejected: list[Rejected] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    """What is wrong with the image as a whole (too little of it is background)."""

    @property
    def plausible(self) -> bool:
        return not self.rejected and not self.issues

    @property
    def reasons(self) -> list[str]:
        return list(self.issues) + [r.describe() for r in self.rejected]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"background": self.background, "objects": [o.to_dict() for o in self.objects]}
        if self.rejected:
            d["rejected"] = [r.to_dict() for r in self.rejected]
        if self.issues:
            d["issues"] = list(self.issues)
        return d


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


BLUR_SIGMAS = (0.0, 0.6, 1.0, 1.4)
"""Gaussian blurs (standard deviation, pixels at 64x64) the shape templates are also tried with:
a soft image (a blurred, resized or generated one) is compared with equally soft templates, so
that a blurred cross is not read as the rounder square."""


@lru_cache(maxsize=64)
def _blur_matrices(sigmas: tuple[float, ...], n: int, replicate: bool) -> torch.Tensor:
    """(S, n, n) matrices ``G`` such that ``G @ x`` blurs the n-vector ``x`` with a normalised Gaussian
    of each standard deviation (the identity for 0), with zeros outside ``x`` or (``replicate``) its
    edge values."""
    out = torch.zeros(len(sigmas), n, n, dtype=torch.float32)
    idx = torch.arange(n)
    for si, sg in enumerate(sigmas):
        if sg <= 0:
            out[si] = torch.eye(n)
            continue
        half = int(math.ceil(2.5 * sg))
        offsets = torch.arange(-half, half + 1)
        g = torch.exp(-(offsets.float() ** 2) / (2 * sg * sg))
        g = g / g.sum()
        for o, w in zip(offsets.tolist(), g.tolist()):
            src = idx + o
            if replicate:
                src = src.clamp(0, n - 1)
            else:
                keep = (src >= 0) & (src < n)
                out[si, idx[keep], src[keep]] += w
                continue
            out[si].index_put_((idx, src), torch.full((n,), w), accumulate=True)
    return out


def _blur_templates(tmpl: torch.Tensor, sigmas: tuple[float, ...], replicate: bool = False) -> torch.Tensor:
    """(N, h, w) templates -> (N, S, h, w), each blurred by every Gaussian of ``sigmas`` (separably, as
    two small matrix products: much faster on a CPU than a convolution with S output channels)."""
    h, w = tmpl.shape[-2:]
    gh = _blur_matrices(tuple(sigmas), h, replicate)  # (S, h, h)
    gw = _blur_matrices(tuple(sigmas), w, replicate)  # (S, w, w)
    return gh[None] @ tmpl[:, None] @ gw.transpose(1, 2)[None]


def _match_shapes(
    masks: list[np.ndarray], centroids: list[tuple[float, float]], alternatives: list[dict] | None = None,
    finalists: int = 3,
) -> list[tuple[str, float, float, float, float, float, float]]:
    """Best (shape, radius px, angle deg, soft IoU, origin x px, origin y px, blur px) of each
    component, given as a soft coverage map, compared with anti-aliased templates of the same area and
    centroid, each also blurred by :data:`BLUR_SIGMAS`. The origin is the centre of the shape's SDF, in
    pixels.

    The best template is the one of least squared difference (relative to the map's energy: the
    "fit"); least squares weighs a blurred edge's tails as little as they deserve, where the soft IoU
    (sum of minima over sum of maxima, what is reported, and what :data:`MIN_SHAPE_IOU` judges)
    lets them tip a small blurred cross towards a square.

    Coarse to fine: every shape at 18 degree steps, then the three best shapes of each component
    around their best angle at 6 and then 3 degree steps (about 60 poses instead of 250).

    ``alternatives``, when given, is filled with one dict per component: the best match of each of
    its three finalist shapes, ``{shape: (fit, match tuple)}`` (what :func:`_refine_jpeg` weighs).
    """
    if not masks:
        return []
    unit = _unit_shapes()
    H, W = masks[0].shape
    C = len(masks)
    areas = [float(m.sum()) for m in masks]
    sigmas = tuple(sg * W / 64.0 for sg in BLUR_SIGMAS)
    coarse_sigmas = (sigmas[0], sigmas[-2])  # sharp and medium: enough to rank the shapes
    half = max(int(math.ceil(math.sqrt(a / min(u[0] for u in unit.values())) * 1.05)) + 2 for a in areas)
    half += int(math.ceil(2.5 * max(sigmas)))
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

    def evaluate(s: str, rows: torch.Tensor, ang: torch.Tensor, sigmas: tuple[float, ...] = sigmas, with_iou: bool = False):
        """Fit, origin x, origin y, radius (and soft IoU) of shape ``s`` for components ``rows`` at
        angles ``ang`` (R, T), every angle at every blur: (R, T * len(sigmas))."""
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
        R_, T_ = tmpl.shape[:2]
        tmpl = _blur_templates(tmpl.reshape(R_ * T_, c, c), sigmas).reshape(R_, T_ * len(sigmas), c, c)
        ox = ox.repeat_interleave(len(sigmas), dim=1)
        oy = oy.repeat_interleave(len(sigmas), dim=1)
        obs = crop_t[rows][:, None]
        fit = 1.0 - ((tmpl - obs) ** 2).sum(dim=(2, 3)) / (obs**2).sum(dim=(2, 3)).clamp(min=1e-6)
        if not with_iou:
            return fit, ox, oy, r
        iou = torch.minimum(tmpl, obs).sum(dim=(2, 3)) / torch.maximum(tmpl, obs).sum(dim=(2, 3)).clamp(min=1e-6)
        return fit, ox, oy, r, iou

    everyone = torch.arange(C)
    # best[s] = (iou (C,), angle (C,)) per shape after the coarse pass
    coarse: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for s in SHAPES:
        n_ang = 1 if s == "circle" else max(1, int(round(SYMMETRY[s] / (3 * ANGLE_STEP))))
        ang = (torch.arange(n_ang, dtype=torch.float32) * (SYMMETRY[s] / n_ang))[None].expand(C, -1)
        fit, _, _, _ = evaluate(s, everyone, ang, coarse_sigmas)
        top, arg = fit.max(dim=1)
        coarse[s] = (top, ang[0, arg // len(coarse_sigmas)])
    table = torch.stack([coarse[s][0] for s in SHAPES], dim=1)  # (C, S)
    keep = table.topk(min(finalists, len(SHAPES)), dim=1).indices
    best = [("circle", 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)] * C
    best_fit = [-math.inf] * C
    if alternatives is not None:
        alternatives.extend({} for _ in range(C))
    for si, s in enumerate(SHAPES):
        rows = (keep == si).any(dim=1).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        ang0 = coarse[s][1][rows]
        S_ = len(sigmas)
        if s == "circle":
            fit, ox, oy, r, iou = evaluate(s, rows, ang0[:, None], with_iou=True)
            final_ang = ang0[:, None]
        else:
            # refine around the coarse angle: +-6, +-12 degrees, then +-3 around the best
            ang1 = ang0[:, None] + torch.tensor([0.0, -12.0, -6.0, 6.0, 12.0])[None]
            fit1, _, _, _ = evaluate(s, rows, ang1)
            mid = ang1.gather(1, fit1.argmax(dim=1, keepdim=True) // S_)
            final_ang = mid + torch.tensor([0.0, -3.0, 3.0])[None]
            fit, ox, oy, r, iou = evaluate(s, rows, final_ang, with_iou=True)
        top, arg = fit.max(dim=1)
        for k, i in enumerate(rows.tolist()):
            j = int(arg[k])
            match = (s, float(r[k]), float(final_ang[k, j // S_]) % SYMMETRY[s], float(iou[k, j]),
                     float(ox[k, j]), float(oy[k, j]), sigmas[j % S_])  # fmt: skip
            if alternatives is not None:
                alternatives[len(alternatives) - C + i][s] = (float(top[k]), match)
            if float(top[k]) > best_fit[i] + 1e-6:
                best_fit[i] = float(top[k])
                best[i] = match
    return best


def _template_cover(
    shape: str, r_px: float, angle: float, origin: tuple[float, float], sigma: float, size: tuple[int, int]
) -> np.ndarray:
    """The fitted shape template (anti-aliased, blurred by ``sigma`` pixels) on a (h, w) grid whose
    pixel (0, 0) has its corner at the origin of the coordinates of ``origin``."""
    h, w = size
    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
    rad = math.radians(angle)
    lx = (gx - origin[0]) / r_px
    ly = -(gy - origin[1]) / r_px
    u = math.cos(rad) * lx + math.sin(rad) * ly
    v = -math.sin(rad) * lx + math.cos(rad) * ly
    tmpl = (0.5 - shape_sdf(shape, u, v) * r_px).clamp(0, 1)
    if sigma > 0:
        tmpl = _blur_templates(tmpl[None], (float(sigma),))[0, 0]
    return tmpl.numpy()


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


PATTERN_NCC = 0.3
"""Smallest correlation between an object's shade amounts and a pattern template for a pattern."""
PATTERN_GAIN = 0.4
"""Smallest fitted strength of that pattern (1 = the world's full shade contrast, after the blur
the shape fit found); below it the object is plain, whatever the correlation: compression noise on
a plain object correlates with some template, but weakly."""


AMOUNT_NOISE = 0.02
"""Noise (luma-weighted metric units) of a pixel's colour, for weighing what a pixel says of its shade."""
RIM_ERROR = 0.5
COVER_ERROR = 0.02
"""How wrong the fitted template's coverage of a pixel may be: ``COVER_ERROR`` inside the object,
growing by ``RIM_ERROR * (1 - cover)`` towards the rim (see :func:`_shade_amount`)."""


def _shade_amount(pixels: np.ndarray, c: int, bg_rgb: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Where each pixel lies on colour ``c``'s segment from the colour (0) to its shade (1), unclipped."""
    A = _METRIC.T
    col, sh, bg, px = _COLOR_A[c] @ A, _SHADE_B[c] @ A, bg_rgb.astype(np.float32) @ A, pixels @ A
    d1, d2 = (col - bg).astype(np.float64), (sh - col).astype(np.float64)
    cov = np.maximum(cover, 0.3).astype(np.float64)
    tau2 = (RIM_ERROR * (1.0 - np.clip(cover, 0, 1)) + COVER_ERROR) ** 2
    s2 = AMOUNT_NOISE**2
    # w_i = (s2 I + tau_i^2 d1 d1^T)^-1 d2, scaled so that w_i . d2 = 1
    coef = tau2 * float(d1 @ d2) / (s2 + tau2 * float(d1 @ d1))
    w = d2[None] - coef[:, None] * d1[None]
    w /= (w @ d2)[:, None]
    r = px - bg - cov[:, None] * d1[None]
    return (r * w).sum(1) / cov


def _pattern(
    amount: np.ndarray, mask: np.ndarray, cover: np.ndarray, origin: tuple[float, float], angle: float, shape: str,
    period: float, sigma: float,
) -> tuple[str, float, float, float, str]:
    """(pattern, shade fraction, best correlation, its gain, best candidate) of one object, by
    pattern template matching.

    ``amount`` is the object's shade amount per pixel of its box (:func:`_shade_amount`), ``cover``
    the fitted shape template on the box. The amounts of the well-covered pixels of the mask are
    correlated with the stripes / dots / checks of the world drawn where the world draws them: around
    the fitted shape's origin, at the fitted angle (and its symmetric copies, since a square's angle
    is only known modulo 90 degrees), blurred like the fitted shape template (``sigma`` pixels). A
    small search around that pose (+-6 degrees, +-1/6 period) absorbs fitting errors and imprecise
    generated images; a free search over all phases would confuse a small dotted object (one dot)
    with a small checkered one (a few squares).

    What a pattern must explain is what is left after a constant and the background mixed into the
    object's rim (``1 - cover``, the reason a blurred plain object is darker or lighter at its edge,
    which would otherwise pass for a dot at its centre) are fitted away. The best template must then
    correlate (normalised, at least :data:`PATTERN_NCC`) and be strong enough (least-squares gain,
    at least :data:`PATTERN_GAIN`): a weak correlation on a plain object is compression noise.
    """
    sel = mask & (cover >= 0.6)
    if sel.sum() < 8:
        sel = mask
    ys, xs = np.nonzero(sel)
    z = amount[ys, xs].astype(np.float64)
    frac = float((z >= 0.5).mean()) if len(z) else 0.0
    if len(z) < 6:
        return "plain", frac, 0.0, 0.0, "plain"
    # nuisance: constant and rim mixture; an orthonormal basis of their span
    nuis = np.stack([np.ones_like(z), 1.0 - cover[ys, xs].astype(np.float64)], axis=1)
    qn, rn = np.linalg.qr(nuis)
    qn = qn[:, np.abs(np.diag(rn)) > 1e-6]
    zr = z - qn @ (qn.T @ z)
    zn = float(np.linalg.norm(zr))
    if zn < 1e-9:
        return "plain", frac, 0.0, 0.0, "plain"
    Hb, Wb = amount.shape
    gy, gx = np.mgrid[0:Hb, 0:Wb].astype(np.float32)
    lx = torch.from_numpy(gx.reshape(-1) + 0.5 - origin[0])
    ly = -torch.from_numpy(gy.reshape(-1) + 0.5 - origin[1])
    flat = torch.from_numpy(ys * Wb + xs)
    qt = torch.from_numpy(qn)
    zt = torch.from_numpy(zr)
    best_name, best_score, best_gain = "plain", -1.0, 0.0
    if shape == "circle":  # a circle's silhouette says nothing of its angle: try them all
        angles = [float(a) for a in range(0, 180, 12)]
    else:
        sym = SYMMETRY[shape]
        angles = [angle + k * sym for k in range(int(round(360.0 / sym)))]
    for p, name in ((1, "striped"), (2, "dotted"), (3, "checkered")):
        # a pattern looks the same turned by its own period (dots 90 degrees, stripes and checks 180)
        period_deg = 90.0 if p == 2 else 180.0
        a, pu, pv = _pattern_candidates(p, sorted({round(x % period_deg, 3) for x in angles}))
        rad = torch.deg2rad(a)[:, None]
        cos, sin = torch.cos(rad), torch.sin(rad)
        u = cos * lx[None] + sin * ly[None] + pu[:, None] * period
        v = -sin * lx[None] + cos * ly[None] + pv[:, None] * period
        t = pattern_alpha(p, u, v, period)  # (T, box pixels)
        if sigma > 0:
            t = _blur_templates(t.view(-1, Hb, Wb), (float(sigma),), replicate=True).reshape(len(a), -1)
        t = t[:, flat].double()
        t = t - (t @ qt) @ qt.T
        tn = torch.linalg.vector_norm(t, dim=1).clamp(min=1e-9)
        dot = t @ zt
        ncc = dot / (tn * zn)
        k = int(ncc.argmax())
        if float(ncc[k]) > best_score:
            best_name, best_score, best_gain = name, float(ncc[k]), float(dot[k] / tn[k] ** 2)
    if best_score < PATTERN_NCC or best_gain < PATTERN_GAIN:
        return "plain", frac, best_score, best_gain, best_name
    return best_name, frac, best_score, best_gain, best_name


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]], dtype=np.float32)
"""RGB -> (Y, Cb, Cr), JPEG's colour space."""
CHROMA_WEIGHT = 0.25
"""Weight of the two chroma axes against luma when a pixel's shade amount is measured. JPEG keeps luma
at full resolution but colour at half (4:2:0) and quantises it harder, so near an edge the chroma of a
pixel belongs to its neighbours; weighing it down keeps the measure local."""
_METRIC = (np.diag([1.0, CHROMA_WEIGHT, CHROMA_WEIGHT]) @ _YCBCR).astype(np.float32)
COVER_RESIDUAL = 0.3
"""Largest unmixing residual (in the weighted metric) at which a pixel still counts as a mixture
of the object and the background (beyond it the pixel is something else: coverage 0)."""
MATTE_REACH = 3
"""How far (pixels at 64x64, twice that at 128) beyond its colour component an object's soft
coverage is looked for: a blur of one pixel's standard deviation spreads an edge over about three."""
COVER_CONTRAST = 0.15
"""Contrast (luma-weighted metric) an object keeps with its background in :func:`_cover_metric`."""
COVER_CHROMA = (0.05, 0.25)
"""Chroma weights (lowest, highest) of the metric an object's coverage is unmixed in (see
:func:`_cover_metric`); the weight is as low as the object's contrast with its background allows."""


def _sin2(d1: np.ndarray, d2: np.ndarray) -> float:
    """Squared sine of the angle between two colour directions (0: the same direction)."""
    return 1.0 - float(d1 @ d2) ** 2 / max(float((d1 @ d1) * (d2 @ d2)), 1e-12)


def _cover_metric(color: np.ndarray, bg_rgb: np.ndarray, shade_rgb: np.ndarray | None = None) -> np.ndarray:
    """The (3, 3) metric (from RGB) in which an object of ``color`` is unmixed from ``bg_rgb``.

    Luma is sharp and chroma is not (JPEG stores it at half resolution and quantises it hardest), so
    chroma gets the lowest weight that still leaves the object a contrast of
    :data:`COVER_CONTRAST` with its background: a yellow object on navy differs in luma by 0.74 and is
    read from luma; a blue one on brown differs by 0.02 and is read from its colour, which is all there
    is to read (a JPEG of such a pair keeps its shape only at the resolution of its chroma). For a
    patterned object (``shade_rgb`` given) the weight is raised until the background and shade
    directions are told apart again (a red object on navy and its lighter shade differ from the colour
    by the same luma; only chroma separates "less object" from "more pattern").
    """
    d = _YCBCR @ (color - bg_rgb)
    dy, dc = abs(float(d[0])), float(np.linalg.norm(d[1:]))
    cw = math.sqrt(max(0.0, COVER_CONTRAST**2 - dy**2)) / max(dc, 1e-6)
    cw = min(max(cw, COVER_CHROMA[0]), COVER_CHROMA[1])
    if shade_rgb is not None:
        d2 = _YCBCR @ (shade_rgb - color)
        for w in (cw, 0.25, 0.5, 1.0):
            if w < cw:
                continue
            cw = w
            scale = np.array([1.0, w, w])
            if _sin2(scale * d, scale * d2) >= 0.3:
                break
    return (np.diag([1.0, cw, cw]) @ _YCBCR).astype(np.float32)


def _coverage(
    pixels: np.ndarray, color: np.ndarray, shade_rgb: np.ndarray, bg_rgb: np.ndarray, hint: np.ndarray | None
) -> np.ndarray:
    """How much of each pixel is object (0..1, not clipped).

    The renderer draws ``bg + cover * (mix(colour, shade, a) - bg)``: two unknowns (cover, cover * a)
    in three channels, solved by least squares in the metric of :func:`_cover_metric` when the
    colour-to-background and colour-to-shade directions differ enough. When they do not (white over
    gray: both directions are gray), the pattern amount ``a`` is taken from ``hint`` (the shade
    fraction of the pixel's neighbours in the object; ``None`` for plain objects, a = 0).
    """
    A = _cover_metric(color, bg_rgb, None if hint is None else shade_rgb).T
    color, shade_rgb, bg_rgb, pixels = color @ A, shade_rgb @ A, bg_rgb @ A, pixels @ A
    d1 = color - bg_rgb
    q = pixels - bg_rgb
    if hint is None:
        a = (q @ d1) / max(float(d1 @ d1), 1e-6)
        resid = np.linalg.norm(q - a[:, None] * d1[None], axis=1)
        return np.where(resid < COVER_RESIDUAL, a, 0.0)
    d2 = shade_rgb - color
    g = np.array([[d1 @ d1, d1 @ d2], [d1 @ d2, d2 @ d2]], dtype=np.float64)
    if _sin2(d1, d2) > 0.1:
        rhs = np.stack([q @ d1, q @ d2], axis=1).astype(np.float64)
        sol = rhs @ np.linalg.inv(g).T
        cover, amount = sol[:, 0], np.clip(sol[:, 1], 0.0, None)
        cover = np.maximum(cover, amount)
        resid = np.linalg.norm(q - cover[:, None] * d1[None] - amount[:, None] * d2[None], axis=1)
        return np.where(resid < COVER_RESIDUAL, cover, 0.0)
    ref = color[None] + hint[:, None] * d2[None] - bg_rgb[None]  # per pixel
    a = (q * ref).sum(1) / np.maximum((ref * ref).sum(1), 1e-6)
    resid = np.linalg.norm(q - a[:, None] * ref, axis=1)
    return np.where(resid < COVER_RESIDUAL, a, 0.0)


def _neighbour_mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the 3x3 neighbours of each pixel that lie in ``where`` (0 if none)."""
    H, W = values.shape
    v = np.pad(np.where(where, values, 0.0), 1)
    w = np.pad(where.astype(np.float32), 1)
    num = sum(v[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
    den = sum(w[dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _matte(
    img: np.ndarray, m: np.ndarray, c: int, shade: np.ndarray, bg_rgb: np.ndarray, others: np.ndarray, reach: int
) -> tuple[np.ndarray, np.ndarray]:
    """Soft coverage and mask of component ``m`` (colour ``c``), the way the renderer draws them.

    Every pixel within ``reach`` of the component (and not next to another object) is unmixed into
    object colour and background (:func:`_coverage`); the component's interior counts as fully
    covered. The soft coverage is what template matching compares with; it keeps a blurred edge
    whole, so its sum (the area) and centroid do not change under blur. The mask is the renderer's
    rule, ``cover >= 0.5``, restricted to the pixels connected to the component, holes filled; the
    number of hole pixels is returned too (no object of the world has a hole: a ring is no circle).
    """
    interior = _erode(m)
    plain = (shade & interior).sum() < 0.08 * max(1, interior.sum())
    color = np.array(COLOR_RGB[COLORS[c]], dtype=np.float32)
    shade_rgb = np.array(SHADE_RGB[COLORS[c]], dtype=np.float32)
    zone = _fill_holes(m)
    for _ in range(reach):
        zone = _dilate(zone)
    zone &= ~interior & ~others
    soft = interior.astype(np.float32)
    if zone.any():
        hint = None if plain else _neighbour_mean(shade.astype(np.float32), interior if interior.any() else m)[zone]
        soft[zone] = np.clip(_coverage(img[zone], color, shade_rgb, bg_rgb, hint), 0.0, 1.0)
    mask = soft >= 0.5
    labels, n = connected_components(mask.astype(np.int64), valid=mask)
    if n > 1:
        touching = np.unique(labels[mask & m])
        mask = np.isin(labels, touching[touching > 0])
    if mask.sum() < 4:
        mask = m.copy()
    filled = _fill_holes(mask)
    return filled, soft, int(filled.sum() - mask.sum())


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------


JPEG_QUALITIES = tuple(range(20, 100, 5))
"""JPEG qualities :func:`jpeg_quality` recognises an image as saved with (PIL's, 4:2:0)."""
JPEG_EVIDENCE = 0.8
"""Recompression evidence: an image is taken for a JPEG of quality q when saving it again at q
changes it by less than this share of what saving it at the highest quality of
:data:`JPEG_QUALITIES` changes (a JPEG is nearly a fixed point of its own quality). Images that were
never JPEG-compressed change least at the highest quality: the ratio was never under 0.98 on 300
world renders and 240 generated images, clean, blurred or resized."""
JPEG_GRID_EVIDENCE = 0.11
"""Quantisation evidence: the mean distance (in quantisation steps, 0..0.5) of the luma DCT
coefficients of the image's 8x8 blocks from the nearest multiple of the luma quantisation table of
quality q, over the coefficients of at least one step with a step of at least 5. A JPEG of quality
q keeps its coefficients on that grid (0.01-0.2, half of them under 0.075); any other image has them
anywhere (0.14-0.26 on the same images, clean, blurred or resized, the least over every quality)."""


@lru_cache(maxsize=1)
def _luma_tables() -> dict[int, np.ndarray]:
    """PIL's luma quantisation table (natural order) of each quality of :data:`JPEG_QUALITIES`."""
    import io

    from PIL import Image

    out = {}
    for q in JPEG_QUALITIES:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf) as im:
            out[q] = np.array(im.quantization[0], dtype=np.float64)
    return out


def _grid_distance(a: np.ndarray, table: np.ndarray) -> float:
    """:data:`JPEG_GRID_EVIDENCE`'s statistic of the uint8 image ``a`` for one luma table (1.0 when
    fewer than 20 coefficients count)."""
    k = np.arange(8)
    dct = np.sqrt(2 / 8) * np.cos(np.pi * (2 * k[None] + 1) * k[:, None] / 16)
    dct[0] /= np.sqrt(2)
    y = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) - 128.0
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    blocks = y[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    coef = (dct[None] @ blocks @ dct.T[None]).reshape(-1, 64)[:, 1:] / table[None, 1:]
    counted = (np.abs(coef) > 0.5) & (table[None, 1:] >= 5)
    n = int(counted.sum())
    return float((np.abs(coef - np.round(coef)) * counted).sum() / n) if n >= 20 else 1.0


def jpeg_quality(image: Any) -> int | None:
    """The quality (one of :data:`JPEG_QUALITIES`) an image was JPEG-compressed with, or None when
    it shows no evidence of it. The quality is the one whose recompression changes the image least
    (below the highest); the evidence is :data:`JPEG_EVIDENCE` or :data:`JPEG_GRID_EVIDENCE`."""
    from attncraft.shapes.damage import jpeg, to_uint8

    a = to_uint8(image)
    err = np.array([np.abs(jpeg(a, q).astype(np.int16) - a).mean() for q in JPEG_QUALITIES])
    if err[-1] <= 0:
        return None
    k = int(err[:-1].argmin())
    q = JPEG_QUALITIES[k]
    if err[k] < JPEG_EVIDENCE * err[-1] or _grid_distance(a, _luma_tables()[q]) < JPEG_GRID_EVIDENCE:
        return q
    return None


JPEG_ANGLES = (0.0, -4.0, 4.0)
"""Turns (degrees) of each finalist's fitted angle that :func:`_refine_jpeg` also draws."""


def _state(match: tuple, color: str, size: int) -> ObjectState:
    """The world's drawing state of an object of ``color`` matched as ``match`` (see _match_shapes)."""
    _, r_px, angle, _, ox, oy, _ = match
    return ObjectState(ox / size, oy / size, r_px / size, angle, color, True)


def _refine_jpeg(p: _Pending, objects: list[DetectedObject], alts: list[tuple]) -> None:
    """Step 7 (JPEG images only): re-decide each object's shape and pattern by analysis by synthesis.

    JPEG keeps colour at a quarter of the pixels and quantises it hardest, so a small object whose
    colour differs from the background (or from its pattern shade) mostly in hue loses the corners
    and stripes the template matching and pattern correlation look for. Here every shape of the world
    (fitted to the object as in :func:`_match_shapes`, with all six shapes refined, and turned by
    :data:`JPEG_ANGLES`) is drawn with every pattern by the world's renderer, with the other objects as
    read, compressed at the image's own quality (all candidates stacked in one image, each on whole
    16x16 macroblocks around the object, which JPEG codes independently), and compared with the image
    around the object (squared RGB error, away from the other objects); the object takes the candidate that reproduces the image
    best, and keeps its reading where that is its own. Objects are re-decided one after another,
    largest first, each with the others as decided so far.
    """
    from attncraft.shapes.damage import jpeg
    from attncraft.shapes.world import PATTERNS, _draw

    H, W = p.size
    if H != W or p.background is None or p.image is None or p.jpeg_quality is None:
        return
    obs = p.image.astype(np.float32)
    bg = BACKGROUNDS.index(p.background)
    poses = [match for _, _, match in alts]
    patterns = [PATTERNS.index(o.pattern) for o in objects]
    fits: list[dict] = []  # every shape's best match, for every object
    _match_shapes([p.softs[ci] for _, ci, _ in alts], [p.centroids[ci] for _, ci, _ in alts], fits, finalists=len(SHAPES))
    for i in sorted(range(len(objects)), key=lambda i: -objects[i].area):
        o, (box, ci, current) = objects[i], alts[i]
        others = sorted((j for j in range(len(objects)) if j != i), key=lambda j: math.hypot(objects[j].x - o.x, objects[j].y - o.y))[:2]
        rest = [(_state(poses[j], objects[j].color, W), SHAPES.index(poses[j][0]), patterns[j]) for j in others]
        region = np.zeros((H, W), dtype=bool)
        region[box] = True
        for j in others:
            region &= ~_dilate(objects[j].mask)
        # JPEG codes 16x16 macroblocks independently (but for chroma upsampling at their borders):
        # compress only the macroblocks around the object
        ys = slice(box[0].start // 16 * 16, min(H, -(-box[0].stop // 16) * 16))
        xs = slice(box[1].start // 16 * 16, min(W, -(-box[1].stop // 16) * 16))
        seen, where = obs[ys, xs], region[ys, xs]

        def errors(cands: list[tuple[tuple, int]]) -> list[float]:
            slots = [[(_state(m, o.color, W), SHAPES.index(m[0]), pat), *rest, *([None] * (2 - len(rest)))] for m, pat in cands]
            images, _ = _draw([bg] * len(slots), slots, W, torch.device("cpu"))
            arr = (images[:, :, ys, xs].permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
            n, h, w, _ = arr.shape
            hp = -(-h // 16) * 16  # the candidates stacked in one image, each on whole macroblocks
            tiles = np.pad(arr, ((0, 0), (0, hp - h), (0, 0), (0, 0)), mode="edge").reshape(n * hp, w, 3)
            sim = jpeg(tiles, p.jpeg_quality).reshape(n, hp, w, 3)[:, :h].astype(np.float32)
            return ((sim - seen[None]) ** 2 * where[None, :, :, None]).sum(axis=(1, 2, 3)).tolist()

        shapes = [current] + [
            (m[0], m[1], (m[2] + da) % SYMMETRY[m[0]], *m[3:])
            for _, m in fits[i].values() if not _object_reasons(m[1] / W, m[3], m[0])
            for da in ((0.0,) if m[0] == "circle" else JPEG_ANGLES)
        ]  # fmt: skip
        cands = [(current, patterns[i])] + [(m, pat) for m in shapes for pat in range(len(PATTERNS))]
        errs = errors(cands)
        k = int(np.argmin(errs))
        if errs[k] >= errs[0]:
            continue
        m, pat = cands[k]
        poses[i], patterns[i] = m, pat
        o.shape, o.radius, o.angle, o.shape_iou, o.blur = m[0], m[1] / W, m[2], m[3], m[6]
        o.size = "big" if o.radius >= SIZE_SPLIT else "small"
        o.pattern = PATTERNS[pat]


def _region_reasons(m: np.ndarray) -> list[str]:
    """Why a colour region (before shape matching) is no object: too big, too wide, cut by the edge."""
    H, W = m.shape
    reasons = []
    area = float(m.sum()) / (H * W)
    if area > MAX_AREA_FRACTION:
        reasons.append(f"fills {100 * area:.0f} % of the canvas (an object at most {100 * MAX_AREA_FRACTION:.0f} %)")
    ys, xs = np.nonzero(m)
    span = max((int(xs.max()) - int(xs.min()) + 1) / W, (int(ys.max()) - int(ys.min()) + 1) / H)
    if span > MAX_SPAN_FRACTION:
        reasons.append(f"spans {100 * span:.0f} % of the canvas (an object at most {100 * MAX_SPAN_FRACTION:.0f} %)")
    edge = int(m[0].sum() + m[-1].sum() + m[1:-1, 0].sum() + m[1:-1, -1].sum())
    if edge > MAX_EDGE_PIXELS:
        reasons.append(f"cut by the canvas edge ({edge} pixels on it)")
    return reasons


def _object_reasons(radius: float, iou: float, shape: str) -> list[str]:
    """Why a matched region is no object: a radius no object has, or no shape it resembles."""
    reasons = []
    lo, hi = RADIUS_RANGE
    if radius < lo:
        reasons.append(f"too small (radius {100 * radius:.1f} % of the canvas, at least {100 * lo:.1f} %)")
    if radius > hi:
        reasons.append(f"too big (radius {100 * radius:.1f} % of the canvas, at most {100 * hi:.1f} %)")
    if iou < MIN_SHAPE_IOU:
        reasons.append(f"matches no shape (best: {shape}, IoU {iou:.2f} < {MIN_SHAPE_IOU})")
    return reasons


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
    crops: list[np.ndarray]
    bg_rgb: np.ndarray | None = None
    rejected: list[Rejected] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    jpeg_quality: int | None = None
    image: np.ndarray | None = None


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
    out = _Pending((H, W), background, shade, [], [], [], [], [], [], bg_rgb)
    if background is not None and (obj_cls >= 0).any():
        out.image = (img * 255.0).round().astype(np.uint8)
        out.jpeg_quality = jpeg_quality(out.image)
    bg_share = float(bg_counts.max()) / (H * W) if bg_counts.sum() > 0 else 0.0
    if bg_share < MIN_BACKGROUND_FRACTION:
        out.issues.append(
            f"only {100 * bg_share:.0f} % of the canvas is background"
            + (f" ({background})" if background else "")
            + f"; a scene is at least {100 * MIN_BACKGROUND_FRACTION:.0f} % background"
        )
    if not n:
        return out
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    reach = max(1, int(round(MATTE_REACH * W / 64)))
    pad = reach + 2
    kept = []
    for lab in np.nonzero(sizes >= min_px)[0]:
        if lab == 0:
            continue
        m = labels == lab
        if int(_erode(m).sum()) < max(3, 0.15 * int(sizes[lab])):
            continue  # a thin line: the anti-aliased rim of another object, not an object
        kept.append((lab, m))
    occupied = np.isin(labels, [lab for lab, _ in kept])
    objects = []
    for lab, m in kept:
        reasons = _region_reasons(m)
        if reasons:
            ys, xs = np.nonzero(m)
            out.rejected.append(Rejected(
                COLORS[int(obj_cls[m][0])], (float(xs.mean()) + 0.5) / W, (float(ys.mean()) + 0.5) / H, int(m.sum()),
                reasons, mask=m,
            ))  # fmt: skip
        else:
            objects.append((lab, m))
    kept = objects
    for lab, m in kept:
        c = int(obj_cls[m][0])
        # work on the component's padded bounding box: a few hundred pixels instead of the canvas
        ys, xs = np.nonzero(m)
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, H)
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, W)
        box = (slice(y0, y1), slice(x0, x1))
        others = _dilate(occupied[box] & ~m[box])
        mc, soft_c, holes = _matte(img[box], m[box], c, shade[box], bg_rgb, others, reach)
        total = float(soft_c.sum())
        if total < 1e-6:
            continue
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        cx, cy = float((soft_c * gx).sum()) / total, float((soft_c * gy).sum()) / total
        if holes > max(MAX_HOLE_PIXELS, MAX_HOLE_FRACTION * int(mc.sum())):
            full_m = np.zeros((H, W), dtype=bool)
            full_m[box] = mc
            out.rejected.append(Rejected(
                COLORS[c], cx / W, cy / H, int(mc.sum()),
                [f"has a hole ({holes} pixels, {100 * holes / max(1, int(mc.sum())):.0f} % of its area)"], mask=full_m,
            ))  # fmt: skip
            continue
        out.centroids.append((cx, cy))
        full_m = np.zeros((H, W), dtype=bool)
        full_m[box] = mc
        full_s = np.zeros((H, W), dtype=np.float32)
        full_s[box] = soft_c
        out.masks.append(full_m)
        out.softs.append(full_s)
        out.colors.append(c)
        out.boxes.append((box, x0, y0))
        out.crops.append(img[box])
    return out


def _finish(
    p: _Pending, matches: list[tuple[str, float, float, float, float, float, float]], alternatives: list[dict] | None = None
) -> ReadScene:
    """Steps 3-4: attributes of each matched component (and step 7 for a JPEG image)."""
    H, W = p.size
    objects = []
    alts = []
    rejected = list(p.rejected)
    for ci, (m, c, (cx, cy), (box, x0, y0), crop, (shape, r_px, angle, iou, ox, oy, sigma)) in enumerate(zip(
        p.masks, p.colors, p.centroids, p.boxes, p.crops, matches
    )):
        radius = r_px / W
        x, y = cx / W, cy / H
        reasons = _object_reasons(radius, iou, shape)
        if reasons:
            rejected.append(Rejected(COLORS[c], x, y, int(m.sum()), reasons, shape, radius, iou, m))
            continue
        origin = (ox - x0, oy - y0)
        cover = _template_cover(shape, r_px, angle, origin, sigma, crop.shape[:2])
        amount = _shade_amount(crop.reshape(-1, 3), c, p.bg_rgb, cover.reshape(-1)).reshape(cover.shape)
        pattern, frac, score, gain, cand = _pattern(
            amount, m[box], cover, origin, angle, shape, PATTERN_PERIOD * W, sigma
        )
        objects.append(
            DetectedObject(
                color=COLORS[c], shape=shape, size="big" if radius >= SIZE_SPLIT else "small",
                position=POSITIONS[3 * _nearest(y) + _nearest(x)], pattern=pattern,
                x=x, y=y, radius=radius, angle=angle, area=int(m.sum()), shape_iou=iou, mask=m,
                pattern_fraction=frac, pattern_score=score, blur=sigma, pattern_gain=gain, pattern_candidate=cand,
            )  # fmt: skip
        )
        alts.append((box, ci, matches[ci]))
    if p.jpeg_quality is not None and p.image is not None and objects:
        _refine_jpeg(p, objects, alts)
    objects.sort(key=lambda o: -o.area)
    rejected.sort(key=lambda o: -o.area)
    return ReadScene(objects=objects, background=p.background, size=(H, W), rejected=rejected, issues=list(p.issues))


def read_images(images: Any, threshold: float = COLOR_THRESHOLD, min_area: float = MIN_AREA_FRACTION) -> list[ReadScene]:
    """Read a batch of images of one size (a (N, 3, H, W) tensor or a sequence); the shape templates
    of all their objects are matched in one batched call, which is faster than one call per image."""
    pending = [_segment(im, threshold, min_area) for im in images]
    sizes = {p.size for p in pending}
    if len(sizes) > 1:
        return [read_image(im, threshold, min_area) for im in images]
    softs = [s for p in pending for s in p.softs]
    cents = [c for p in pending for c in p.centroids]
    alternatives: list[dict] = []
    matches = _match_shapes(softs, cents, alternatives)
    out, k = [], 0
    for p in pending:
        n = len(p.softs)
        out.append(_finish(p, matches[k : k + n], alternatives[k : k + n]))
        k += n
    return out


def read_image(image: Any, threshold: float = COLOR_THRESHOLD, min_area: float = MIN_AREA_FRACTION) -> ReadScene:
    """Read one image (see :func:`to_numpy_image` for accepted types) into a :class:`ReadScene`.

    ``threshold`` is the largest RGB distance at which a pixel still counts as a palette colour;
    components smaller than ``min_area`` (fraction of the canvas) are ignored. Objects are sorted
    by area, largest first.
    """
    p = _segment(image, threshold, min_area)
    alternatives: list[dict] = []
    return _finish(p, _match_shapes(p.softs, p.centroids, alternatives), alternatives)


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
