"""The Shapes world: seeded scene descriptions and a vectorised torch renderer.

What it is: a procedural world whose every pixel is known. A :class:`Scene` holds 1 to 3
:class:`SceneObject` (shape, colour, size, position, surface pattern, optional motion over time) on a
named background. :func:`sample_scenes` draws scenes from a seed; :func:`render_scenes` paints them
(images *and* one ground-truth mask per object); :func:`render_video` paints their motion frame by
frame. Captions live in :mod:`attncraft.shapes.captions`, the inverse (image -> scene) in
:mod:`attncraft.shapes.reader`.

Why it looks like this:

* **Signed distance fields** give every shape in one formula of the pixel coordinates, so a batch of
  objects renders with tensor operations only (no per-pixel Python), on CPU or CUDA, with a one-pixel
  anti-aliased edge (what a diffusion model sees) and an exact mask (``sdf <= 0``) for ground truth.
* **Crops**: each object only touches a square window around its centre (22 px at 64x64), so objects
  are drawn on their windows and their contributions added back into the canvas: about 10x less
  work than drawing every object on the whole canvas.
* **A 3x3 grid of anchors** (left/center/right x top/middle/bottom) with a small jitter places the
  objects. Each object takes its own cell, and radius + jitter are bounded so that two objects in
  neighbouring cells never touch (at least ~1.6 px apart at 64x64): no rejection sampling needed,
  sampling stays fast and the reader can separate objects of the same colour.
* **Time** is part of the description: a :class:`Motion` is a segment ``[start, end]`` of the clip
  (0 = first frame, 1 = last) during which an object moves, grows, shrinks, rotates, changes colour or
  appears; segments run one after the other ("moves right, then turns blue").
  :meth:`SceneObject.state` evaluates an object at any time, so every frame has exact ground truth.

Geometry (all fractions of the canvas, so 64x64 and 128x128 show the same scene): anchors at 0.18,
0.5 and 0.82; radius (circumradius of the shape) 0.09 small / 0.135 big; jitter up to 0.012; pattern
period 6/64.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from attncraft.shapes.palette import BACKGROUNDS, COLORS, background_table, color_table, shade_table

__all__ = [
    "SHAPES",
    "COLORS",
    "SIZES",
    "POSITIONS",
    "PATTERNS",
    "BACKGROUNDS",
    "MOTIONS",
    "DIRECTIONS",
    "Motion",
    "SceneObject",
    "Scene",
    "ObjectState",
    "RenderResult",
    "sample_scenes",
    "render_scenes",
    "render_video",
    "sample_and_render",
    "shape_sdf",
    "pattern_alpha",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
SIZES: tuple[str, ...] = ("small", "big")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
"""Row-major over the 3x3 grid: POSITIONS[3 * row + col]."""
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
MOTIONS: tuple[str, ...] = ("move", "grow", "shrink", "rotate", "recolor", "appear")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")

ANCHORS: tuple[float, float, float] = (0.18, 0.5, 0.82)
"""Anchor coordinate (fraction of the canvas) of grid column/row 0, 1, 2."""
CELL = ANCHORS[1] - ANCHORS[0]
"""Distance between two neighbouring anchors (fraction of the canvas)."""
SIZE_RADIUS: dict[str, float] = {"small": 0.09, "big": 0.135}
"""Circumradius of an object of each size (fraction of the canvas)."""
JITTER = 0.012
"""Largest offset of an object from its anchor, per axis (fraction of the canvas)."""
PATTERN_PERIOD = 6.0 / 64.0
"""Period of stripes, dots and checks (fraction of the canvas)."""
DOT_RADIUS = 0.3
"""Radius of a dot, as a fraction of the pattern period."""
MIN_SIZE = 32
"""Smallest canvas the geometry still draws legibly."""

_SHAPE_SET, _COLOR_SET, _SIZE_SET, _PATTERN_SET = frozenset(SHAPES), frozenset(COLORS), frozenset(SIZES), frozenset(PATTERNS)
_POSITION_CELL: dict[str, tuple[int, int]] = {p: divmod(i, 3) for i, p in enumerate(POSITIONS)}

DIRECTION_STEP: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
"""(row, col) step of a move in each direction."""


# --------------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Motion:
    """One segment of an object's change over the clip.

    ``kind`` is one of :data:`MOTIONS`. ``start``/``end`` delimit the segment as fractions of the clip.
    ``move`` uses ``direction`` and ``amount`` (grid cells); ``rotate`` uses ``amount`` (degrees,
    positive = counter-clockwise on screen); ``recolor`` uses ``to_color`` and switches at the middle
    of the segment; ``appear`` makes the object visible from the middle of the segment on;
    ``grow``/``shrink`` go from the small to the big radius (or back) over the segment.
    """

    kind: str
    start: float = 0.0
    end: float = 1.0
    direction: str | None = None
    amount: float = 0.0
    to_color: str | None = None

    def progress(self, t: float) -> float:
        """Fraction of this segment done at clip time ``t`` (0 before, 1 after)."""
        if t <= self.start:
            return 0.0
        if t >= self.end:
            return 1.0
        return (t - self.start) / (self.end - self.start)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "start": self.start, "end": self.end}
        if self.direction is not None:
            d["direction"] = self.direction
        if self.amount:
            d["amount"] = self.amount
        if self.to_color is not None:
            d["to_color"] = self.to_color
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Motion:
        return cls(**d)


class ObjectState(NamedTuple):
    """Where and how an object is at one instant (fractions of the canvas, degrees)."""

    x: float
    y: float
    radius: float
    angle: float
    color: str
    visible: bool


@dataclass(frozen=True)
class SceneObject:
    """One object: what it is, where it starts, and how it changes over time.

    ``position`` is a name from :data:`POSITIONS` (its grid cell); ``offset`` the jitter (x, y) from the
    cell's anchor; ``rotation`` the initial angle in degrees (counter-clockwise on screen); ``size``,
    ``color`` and ``position`` describe the *first* frame of a video.
    """

    shape: str
    color: str
    size: str = "big"
    position: str = "center"
    pattern: str = "plain"
    rotation: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)
    motions: tuple[Motion, ...] = ()

    def __post_init__(self) -> None:
        if not (
            self.shape in _SHAPE_SET and self.color in _COLOR_SET and self.size in _SIZE_SET
            and self.position in _POSITION_CELL and self.pattern in _PATTERN_SET
        ):  # fmt: skip
            for value, allowed, what in (
                (self.shape, SHAPES, "shape"),
                (self.color, COLORS, "color"),
                (self.size, SIZES, "size"),
                (self.position, POSITIONS, "position"),
                (self.pattern, PATTERNS, "pattern"),
            ):
                if value not in allowed:
                    raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
        for m in self.motions:
            if m.kind not in MOTIONS:
                raise ValueError(f"unknown motion {m.kind!r}; expected one of {', '.join(MOTIONS)}")

    @property
    def cell(self) -> tuple[int, int]:
        """(row, col) of the starting grid cell."""
        return _POSITION_CELL[self.position]

    @property
    def final_color(self) -> str:
        color = self.color
        for m in self.motions:
            if m.kind == "recolor" and m.to_color:
                color = m.to_color
        return color

    def state(self, t: float) -> ObjectState:
        """The object at clip time ``t`` in [0, 1] (0 = first frame)."""
        row, col = self.cell
        x = ANCHORS[col] + self.offset[0]
        y = ANCHORS[row] + self.offset[1]
        radius = SIZE_RADIUS[self.size]
        angle = self.rotation
        color = self.color
        visible = True
        for m in self.motions:
            p = m.progress(t)
            if m.kind == "move":
                drow, dcol = DIRECTION_STEP[m.direction or "right"]
                x += dcol * CELL * m.amount * p
                y += drow * CELL * m.amount * p
            elif m.kind == "grow":
                radius = radius + (SIZE_RADIUS["big"] - radius) * p
            elif m.kind == "shrink":
                radius = radius + (SIZE_RADIUS["small"] - radius) * p
            elif m.kind == "rotate":
                angle += m.amount * p
            elif m.kind == "recolor":
                if p >= 0.5 and m.to_color:
                    color = m.to_color
            elif m.kind == "appear":
                visible = p >= 0.5
        return ObjectState(x, y, radius, angle, color, visible)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "position": self.position,
            "pattern": self.pattern,
            "rotation": self.rotation,
            "offset": list(self.offset),
        }
        if self.motions:
            d["motions"] = [m.to_dict() for m in self.motions]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneObject:
        d = dict(d)
        d["offset"] = tuple(d.get("offset", (0.0, 0.0)))
        d["motions"] = tuple(Motion.from_dict(m) for m in d.get("motions", ()))
        return cls(**d)


@dataclass(frozen=True)
class Scene:
    """Up to three objects (in distinct grid cells) on a named background."""

    objects: tuple[SceneObject, ...]
    background: str = "gray"

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= 3:
            raise ValueError(f"a scene holds 1 to 3 objects, got {len(self.objects)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {', '.join(BACKGROUNDS)}")
        cells = {o.position for o in self.objects}
        if len(cells) != len(self.objects):
            raise ValueError("two objects share a grid cell; each object needs its own position")

    @property
    def has_motion(self) -> bool:
        return any(o.motions for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject.from_dict(o) for o in d["objects"]),
            background=d.get("background", "gray"),
        )

    def with_objects(self, objects: Sequence[SceneObject]) -> Scene:
        return replace(self, objects=tuple(objects))


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def _range(num_objects: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (num_objects, num_objects) if isinstance(num_objects, int) else num_objects
    if not 1 <= lo <= hi <= 3:
        raise ValueError(f"num_objects must lie within 1..3 (got {num_objects!r})")
    return lo, hi


def _free_moves(cell: tuple[int, int], taken: set[tuple[int, int]]) -> list[tuple[str, int, list[tuple[int, int]]]]:
    """Moves (direction, cells, path) from ``cell`` along which every cell is inside the grid and free."""
    out = []
    for d, (dr, dc) in DIRECTION_STEP.items():
        path = []
        for k in (1, 2):
            nxt = (cell[0] + dr * k, cell[1] + dc * k)
            if not (0 <= nxt[0] < 3 and 0 <= nxt[1] < 3) or nxt in taken:
                break
            path.append(nxt)
            out.append((d, k, list(path)))
    return out


def _sample_motions(
    rng: random.Random, obj: SceneObject, taken: set[tuple[int, int]], colors: Sequence[str]
) -> tuple[Motion, ...]:
    """One or two motion segments for ``obj``; claims the cells a move passes through in ``taken``."""
    n_seg = 1 if rng.random() < 0.6 else 2
    windows = [(0.0, 1.0)] if n_seg == 1 else [(0.0, 0.5), (0.5, 1.0)]
    size, color, cell = obj.size, obj.color, obj.cell
    motions: list[Motion] = []
    for i, (start, end) in enumerate(windows):
        options = ["recolor"]
        moves = _free_moves(cell, taken)
        if moves:
            options += ["move", "move"]
        options.append("grow" if size == "small" else "shrink")
        if obj.shape != "circle":
            options.append("rotate")
        if n_seg == 1:
            options.append("appear")
        done = {m.kind for m in motions}
        options = [o for o in options if o not in done] or ["recolor"]
        kind = rng.choice(options)
        if kind == "move":
            direction, amount, path = rng.choice(moves)
            taken.update(path)
            cell = path[-1]
            motions.append(Motion("move", start, end, direction=direction, amount=float(amount)))
        elif kind == "grow":
            size = "big"
            motions.append(Motion("grow", start, end))
        elif kind == "shrink":
            size = "small"
            motions.append(Motion("shrink", start, end))
        elif kind == "rotate":
            amount = rng.choice((90.0, 120.0, 150.0)) * rng.choice((-1.0, 1.0))
            motions.append(Motion("rotate", start, end, amount=amount))
        elif kind == "recolor":
            to = rng.choice([c for c in colors if c != color] or [c for c in COLORS if c != color])
            motions.append(Motion("recolor", start, end, to_color=to))
            color = to
        else:  # appear: becomes visible somewhere in the first half of the clip
            t0 = rng.choice((0.2, 0.3, 0.4))
            motions.append(Motion("appear", 0.0, 2 * t0))
    return tuple(motions)


def sample_scenes(
    n: int,
    seed: int = 0,
    num_objects: int | tuple[int, int] = (1, 3),
    patterns: bool = True,
    motion: bool = False,
    *,
    shapes: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
    backgrounds: Sequence[str] | None = None,
    rotations: bool = False,
) -> list[Scene]:
    """Draw ``n`` scenes, deterministically from ``seed``.

    The draw is sequential from one ``random.Random(seed)``, so ``sample_scenes(5, s)`` is the prefix
    of ``sample_scenes(10, s)``. ``patterns=False`` keeps every object plain (otherwise 40 % plain,
    20 % each pattern). ``motion=True`` gives every scene at least one object with one or two motion
    segments (for :func:`render_video`). ``shapes``/``colors``/``backgrounds`` restrict the vocabulary
    (held-out splits); ``rotations=True`` gives static objects a random initial angle.
    """
    lo, hi = _range(num_objects)
    shape_set = tuple(shapes) if shapes else SHAPES
    color_set = tuple(colors) if colors else COLORS
    bg_set = tuple(backgrounds) if backgrounds else BACKGROUNDS
    rng = random.Random(seed)
    rand = rng.random

    def pick(seq):  # faster than rng.choice, same uniform draw
        return seq[int(rand() * len(seq))]

    span = hi - lo + 1
    fancy = PATTERNS[1:]
    j2 = 2 * JITTER
    scenes: list[Scene] = []
    for _ in range(n):
        k = lo + int(rand() * span)
        objs = []
        for c in rng.sample(range(9), k):
            pattern = pick(fancy) if patterns and rand() >= 0.4 else "plain"
            objs.append(
                SceneObject(
                    shape=pick(shape_set),
                    color=pick(color_set),
                    size=SIZES[rand() < 0.5],
                    position=POSITIONS[c],
                    pattern=pattern,
                    rotation=round(rand() * 360.0, 1) if rotations else 0.0,
                    offset=(round((rand() - 0.5) * j2, 4), round((rand() - 0.5) * j2, 4)),
                )
            )
        if motion:
            taken = {o.cell for o in objs}
            movers = [0] + [i for i in range(1, k) if rand() < 0.5]
            for i in movers:
                objs[i] = replace(objs[i], motions=_sample_motions(rng, objs[i], taken, color_set))
        scenes.append(Scene(objects=tuple(objs), background=pick(bg_set)))
    return scenes


# --------------------------------------------------------------------------------------------------
# Signed distance fields (local frame: x right, y up, unit = the object's radius)
# --------------------------------------------------------------------------------------------------


def _box(u: torch.Tensor, v: torch.Tensor, bx: float, by: float) -> torch.Tensor:
    qx = u.abs() - bx
    qy = v.abs() - by
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _star(u: torch.Tensor, v: torch.Tensor, n: int, outer: float, inner: float) -> torch.Tensor:
    """Regular n-pointed star (or polygon, when ``inner = outer * cos(pi / n)``), a vertex pointing up.

    Folds the plane into one half-sector, where the boundary is a single segment from the vertex
    (``outer``, angle 0) to the inner corner (``inner``, angle pi / n).
    """
    sector = 2 * math.pi / n
    theta = torch.atan2(u, v)
    phi = (torch.remainder(theta + sector / 2, sector) - sector / 2).abs()
    rho = torch.sqrt(u * u + v * v)
    qx, qy = rho * torch.cos(phi), rho * torch.sin(phi)
    ax, ay = outer, 0.0
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    bax, bay = bx - ax, by - ay
    pax, pay = qx - ax, qy - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay)).clamp(0, 1)
    d = torch.sqrt((pax - bax * h) ** 2 + (pay - bay * h) ** 2)
    inside = (bax * pay - bay * pax) > 0
    return torch.where(inside, -d, d)


_HEART_SCALE = 1.43
_HEART_SHIFT = 0.53


def _heart(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inigo Quilez's exact heart SDF, centred on its circumcircle and scaled to radius ~1."""
    x = u.abs() / _HEART_SCALE
    y = v / _HEART_SCALE + _HEART_SHIFT
    upper = torch.sqrt((x - 0.25) ** 2 + (y - 0.75) ** 2) - math.sqrt(2.0) / 4.0
    m = 0.5 * (x + y).clamp(min=0)
    lower = torch.sqrt(torch.minimum(x * x + (y - 1.0) ** 2, (x - m) ** 2 + (y - m) ** 2)) * torch.sign(x - y)
    return torch.where(x + y > 1.0, upper, lower) * _HEART_SCALE


def shape_sdf(shape: int | str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance (in object radii; negative inside) of ``shape`` at local points (u, v).

    Every shape fits inside the unit circle (its circumradius is at most 1), which is what makes
    the grid placement overlap-free.
    """
    s = SHAPES[shape] if isinstance(shape, int) else shape
    if s == "circle":
        return torch.sqrt(u * u + v * v) - 0.85
    if s == "square":
        return _box(u, v, 0.70, 0.70)
    if s == "triangle":
        return _star(u, v, 3, 1.0, 1.0 * math.cos(math.pi / 3))
    if s == "star":
        return _star(u, v, 5, 1.0, 0.5)
    if s == "heart":
        return _heart(u, v)
    if s == "cross":
        return torch.minimum(_box(u, v, 0.92, 0.32), _box(u, v, 0.32, 0.92))
    raise ValueError(f"unknown shape {shape!r}")


def pattern_alpha(pattern: int, pu: torch.Tensor, pv: torch.Tensor, period: float) -> torch.Tensor:
    """Coverage (0..1, anti-aliased) of the pattern shade at local pixel coordinates (pu, pv)."""
    if pattern == 1:  # striped: horizontal bands in the object's frame, one through the centre
        s = period * ((torch.remainder(pv / period, 1.0) - 0.5).abs() - 0.25)
        return (0.5 + s).clamp(0, 1)
    if pattern == 2:  # dotted: a dot at every period, one at the object's centre
        fx = torch.remainder(pu / period + 0.5, 1.0) - 0.5
        fy = torch.remainder(pv / period + 0.5, 1.0) - 0.5
        d = torch.sqrt(fx * fx + fy * fy) * period - DOT_RADIUS * period
        return (0.5 - d).clamp(0, 1)
    if pattern == 3:  # checkered: squares of half a period, four of them meeting at the centre
        sx = period * ((torch.remainder(pu / period + 0.25, 1.0) - 0.5).abs() - 0.25)
        sy = period * ((torch.remainder(pv / period + 0.25, 1.0) - 0.5).abs() - 0.25)
        signed = torch.minimum(sx.abs(), sy.abs()) * torch.sign(sx * sy)
        return (0.5 + signed).clamp(0, 1)
    return torch.zeros_like(pu)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class RenderResult:
    """Rendered scenes and their ground truth.

    ``images``: (N, 3, H, W) float32 in [0, 1] (video: (N, F, 3, H, W)); ``masks``: (N, 3, H, W) bool,
    one per object slot in ``scene.objects`` order, all-False for absent objects (video: (N, F, 3, H, W),
    all-False while an object is not yet visible). ``states`` (video only): per scene, per frame, per
    object, the :class:`ObjectState` the frame was drawn from.
    """

    images: torch.Tensor
    masks: torch.Tensor
    scenes: list[Scene]
    states: list[list[list[ObjectState]]] | None = None

    def __len__(self) -> int:
        return len(self.scenes)


_SHAPE_INDEX = {s: i for i, s in enumerate(SHAPES)}
_COLOR_INDEX = {c: i for i, c in enumerate(COLORS)}
_PATTERN_INDEX = {p: i for i, p in enumerate(PATTERNS)}
_BG_INDEX = {b: i for i, b in enumerate(BACKGROUNDS)}


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < MIN_SIZE or size > 1024:
        raise ValueError(f"canvas size must be an integer in {MIN_SIZE}..1024 (64 or 128 recommended), got {size!r}")


def _draw(
    backgrounds: list[int],
    slots: list[list[tuple[ObjectState, int, int] | None]],
    size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw B canvases. ``slots[b][k]`` is (state, shape index, pattern index) or None (absent/invisible).

    All objects of all canvases are drawn in one pass on their crops, sorted by shape so that each
    SDF runs on one contiguous slice. Because objects never overlap, the canvas is the background
    plus the sum of each object's premultiplied contribution ``cover * (rgb - background)``, added with
    ``index_add_``: crops may overlap each other, their contributions do not.

    Returns images (B, 3, H, W) float32 and masks (B, 3, H, W) bool.
    """
    B, K, HW = len(slots), 3, size * size
    crop = min(size, int(math.ceil(2 * SIZE_RADIUS["big"] * size)) + 4)
    bg_all = background_table(device)
    bg_idx = torch.tensor(backgrounds, device=device, dtype=torch.long)
    canvas = bg_all[bg_idx][:, None, :].expand(B, HW, 3).reshape(B * HW, 3).clone()
    masks = torch.zeros(B * K * HW, dtype=torch.bool, device=device)
    items = [(st[1], b, k, st) for b, row in enumerate(slots) for k, st in enumerate(row) if st is not None]
    if not items:
        return canvas.view(B, size, size, 3).permute(0, 3, 1, 2).contiguous(), masks.view(B, K, size, size)
    items.sort(key=lambda it: it[0])
    floats = torch.tensor(
        [[st[0].x * size, st[0].y * size, st[0].radius * size, math.radians(st[0].angle)] for _, _, _, st in items],
        dtype=torch.float32,
    ).to(device)
    ints = torch.tensor(
        [[b, k, _COLOR_INDEX[st[0].color], st[2]] for _, b, k, st in items], dtype=torch.long
    ).to(device)
    cx, cy, r, ang = floats.unbind(1)
    b_of, k_of, color_idx, pattern_t = ints.unbind(1)
    x0 = (torch.floor(cx).long() - crop // 2).clamp(0, size - crop)
    y0 = (torch.floor(cy).long() - crop // 2).clamp(0, size - crop)
    grid = torch.arange(crop, device=device)
    xs = x0[:, None] + grid[None, :]  # (M, c) integer pixel columns
    ys = y0[:, None] + grid[None, :]
    rr = r[:, None, None]
    lx = (xs[:, None, :].float() + 0.5 - cx[:, None, None]) / rr  # (M, 1, c): local frame, y up
    ly = -(ys[:, :, None].float() + 0.5 - cy[:, None, None]) / rr  # (M, c, 1)
    cos, sin = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    u = cos * lx + sin * ly
    v = -sin * lx + cos * ly
    # one SDF call per shape, on contiguous slices (items are sorted by shape)
    pieces, start = [], 0
    shape_ids = [it[0] for it in items]
    for s in sorted(set(shape_ids)):
        stop = start + shape_ids.count(s)
        pieces.append(shape_sdf(s, u[start:stop], v[start:stop]))
        start = stop
    sdf = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    alpha = torch.zeros_like(sdf)
    period = PATTERN_PERIOD * size
    for p in sorted({it[3][2] for it in items} - {0}):
        sel = (pattern_t == p).nonzero().squeeze(1)
        alpha[sel] = pattern_alpha(p, u[sel] * rr[sel], v[sel] * rr[sel], period)
    cover = (0.5 - sdf * rr).clamp(0, 1)[..., None]  # (M, c, c, 1)
    alpha = alpha[..., None]
    colors, shades = color_table(device), shade_table(device)
    rgb = colors[color_idx][:, None, None, :] * (1 - alpha) + shades[color_idx][:, None, None, :] * alpha
    contribution = cover * (rgb - bg_all[bg_idx[b_of]][:, None, None, :])
    pix = ys[:, :, None] * size + xs[:, None, :]  # (M, c, c)
    flat = (b_of[:, None, None] * HW + pix).reshape(-1)
    canvas.index_add_(0, flat, contribution.reshape(-1, 3))
    masks[((b_of * K + k_of)[:, None, None] * HW + pix).reshape(-1)] = (sdf <= 0).reshape(-1)
    images = canvas.view(B, size, size, 3).permute(0, 3, 1, 2).contiguous()
    return images.clamp_(0, 1), masks.view(B, K, size, size)


def render_scenes(scenes: Sequence[Scene], size: int = 64, device: str | torch.device = "cpu") -> RenderResult:
    """Render the first frame of each scene: images (N, 3, H, W) in [0, 1] and masks (N, 3, H, W).

    Objects that only appear later in a video (``appear`` motion) are not drawn (their mask is empty).
    """
    _check_size(size)
    device = torch.device(device)
    slots = []
    for scene in scenes:
        row: list[tuple[ObjectState, int, int] | None] = [None, None, None]
        for k, obj in enumerate(scene.objects):
            state = obj.state(0.0) if obj.motions else ObjectState(
                ANCHORS[obj.cell[1]] + obj.offset[0], ANCHORS[obj.cell[0]] + obj.offset[1],
                SIZE_RADIUS[obj.size], obj.rotation, obj.color, True,
            )  # fmt: skip
            if state.visible:
                row[k] = (state, _SHAPE_INDEX[obj.shape], _PATTERN_INDEX[obj.pattern])
        slots.append(row)
    if not slots:
        return RenderResult(
            torch.zeros(0, 3, size, size, device=device), torch.zeros(0, 3, size, size, dtype=torch.bool, device=device), []
        )
    images, masks = _draw([_BG_INDEX[s.background] for s in scenes], slots, size, device)
    return RenderResult(images, masks, list(scenes))


def frame_times(num_frames: int) -> list[float]:
    """Clip time of each frame: evenly from 0 (first frame) to 1 (last frame)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if num_frames == 1:
        return [0.0]
    return [f / (num_frames - 1) for f in range(num_frames)]


def render_video(
    scenes: Sequence[Scene], num_frames: int = 16, size: int = 64, device: str | torch.device = "cpu"
) -> RenderResult:
    """Render every scene's motion: images (N, F, 3, H, W) and per-frame masks (N, F, 3, H, W).

    ``states[n][f][k]`` is the exact :class:`ObjectState` of object ``k`` in frame ``f``.
    """
    _check_size(size)
    device = torch.device(device)
    times = frame_times(num_frames)
    slots, bgs, states = [], [], []
    for scene in scenes:
        scene_states = []
        shape_pat = [(_SHAPE_INDEX[o.shape], _PATTERN_INDEX[o.pattern]) for o in scene.objects]
        for t in times:
            frame = [o.state(t) for o in scene.objects]
            scene_states.append(frame)
            row: list[tuple[ObjectState, int, int] | None] = [None, None, None]
            for k, st in enumerate(frame):
                if st.visible:
                    row[k] = (st, *shape_pat[k])
            slots.append(row)
            bgs.append(_BG_INDEX[scene.background])
        states.append(scene_states)
    n = len(scenes)
    if n == 0:
        z = torch.zeros(0, num_frames, 3, size, size, device=device)
        return RenderResult(z, z.bool(), [], [])
    images, masks = _draw(bgs, slots, size, device)
    return RenderResult(
        images.view(n, num_frames, 3, size, size),
        masks.view(n, num_frames, 3, size, size),
        list(scenes),
        states,
    )


def sample_and_render(
    n: int,
    seed: int = 0,
    size: int = 64,
    device: str | torch.device = "cpu",
    **sample_kwargs: Any,
) -> RenderResult:
    """``render_scenes(sample_scenes(n, seed, **sample_kwargs), size, device)`` in one call."""
    return render_scenes(sample_scenes(n, seed=seed, **sample_kwargs), size=size, device=device)
