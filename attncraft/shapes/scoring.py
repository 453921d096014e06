"""Ground-truth metrics of the Shapes world: how well an image or video matches its prompt.

* :func:`score_image` - per-attribute accuracy of one image against a prompt (object count, colour,
  shape, size, position, pattern, background, relations), with prompt objects matched to the
  reader's objects by an optimal assignment (so "a red circle and a blue square" is scored the same
  whichever object the generator drew first).
* :func:`score_video` - the same on the first frame, plus motion: each motion clause (direction of a
  move, growth, shrinking, rotation and its sense, colour change, appearance, staying still), their
  order in time ("moves right, then turns blue"), and identity consistency across frames.
* :func:`mask_iou` - IoU of any 2-D map (an attention map at any resolution) with a ground-truth mask.

A prompt may be a caption string, a :class:`~attncraft.shapes.captions.ParsedScene` or a
:class:`~attncraft.shapes.world.Scene` (then every attribute is checked). Scores are floats in [0, 1];
a key is present only when the prompt asks for that attribute.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attncraft.shapes.captions import ParsedMotion, ParsedObject, ParsedScene, parse_caption
from attncraft.shapes.reader import DetectedObject, ReadScene, ReadVideo, Track, assign, read_image, read_images, read_video
from attncraft.shapes.world import CELL, Scene, SIZE_RADIUS

__all__ = ["Scores", "expected_scene", "score_image", "score_images", "score_video", "score_videos", "mask_iou"]

IMAGE_ATTRS = ("color", "shape", "size", "position", "pattern")
RELATION_MARGIN = 0.05
"""Centroids must differ by this much (fraction of the canvas) for "above"/"left of" to hold."""
MOVE_MIN = 0.5 * CELL
"""A move counts when the object travels at least half a grid cell in the asked direction."""
ROTATE_MIN = 30.0
"""A rotation counts from 30 degrees on."""
SIZE_RATIO = 0.5 * (SIZE_RADIUS["big"] / SIZE_RADIUS["small"] - 1.0)
"""Relative radius change (half of small->big) that counts as growing or shrinking."""


class Scores(dict):
    """A score dictionary (attribute -> float in [0, 1]) that also says why the image is implausible.

    ``reasons`` lists, for every region the reader rejected as no object of the world (see
    :class:`~attncraft.shapes.reader.ReadScene`), what it was and why ("red region at (0.50, 0.50):
    fills 100 % of the canvas ..."); it is empty when ``scores["plausible"] == 1``. ``rejected`` holds
    the same regions as dictionaries. Both are plain attributes: the mapping itself stays floats only
    (means, JSON and tables work on it as before).
    """

    def __init__(self, *args: Any, reasons: Sequence[str] = (), rejected: Sequence[dict] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reasons = list(reasons)
        self.rejected = list(rejected)


def expected_scene(prompt: str | ParsedScene | Scene) -> ParsedScene:
    """The prompt as a :class:`ParsedScene` (a :class:`Scene` states every attribute)."""
    if isinstance(prompt, ParsedScene):
        return prompt
    if isinstance(prompt, Scene):
        objs = []
        for o in prompt.objects:
            motions = tuple(
                ParsedMotion(
                    m.kind,
                    direction=m.direction if m.kind == "move" else ("counterclockwise" if m.amount > 0 else "clockwise")
                    if m.kind == "rotate" else None,
                    to_color=m.to_color,
                )  # fmt: skip
                for m in o.motions
            )
            objs.append(ParsedObject(o.shape, o.color, o.size, o.position, o.pattern, motions, static=prompt.has_motion and not o.motions))
        return ParsedScene(tuple(objs), prompt.background)
    return parse_caption(str(prompt))


def _expected(obj: ParsedObject, attr: str, assume_plain: bool) -> str | None:
    value = getattr(obj, attr)
    if attr == "pattern" and value is None and assume_plain:
        return "plain"
    return value


def _match(
    expected: Sequence[ParsedObject],
    found: Sequence[Any],
    getter,
    assume_plain: bool,
    relations: Sequence[tuple[int, str, int]] = (),
) -> dict[int, int]:
    """Optimal prompt-object -> detection assignment, by the number of attributes that disagree
    (and, when the prompt states relations, the relations that fail: with two identical objects,
    "A above B" decides which one is A)."""
    found = list(found)[:8]
    cost = np.zeros((len(expected), len(found)))
    for i, e in enumerate(expected):
        for j, f in enumerate(found):
            c = 0.0
            for attr, w in (("shape", 1.0), ("color", 1.0), ("position", 0.6), ("size", 0.4), ("pattern", 0.4)):
                want = _expected(e, attr, assume_plain)
                if want is not None and getter(f, attr) != want:
                    c += w
            cost[i, j] = c
    if not relations or not found:
        return dict(assign(cost))
    n, m = cost.shape
    best, best_map = math.inf, {}
    for k in range(min(n, m), 0, -1):  # as many matches as possible, then the cheapest
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                mapping = dict(zip(rows, cols))
                total = sum(cost[r, c] for r, c in mapping.items())
                total += 0.5 * sum(
                    not (i in mapping and j in mapping and _relation_holds(found[mapping[i]], rel, found[mapping[j]]))
                    for i, rel, j in relations
                )
                if total < best - 1e-9:
                    best, best_map = total, mapping
        if best_map:
            break
    return best_map


def _relation_holds(a: DetectedObject | Track, rel: str, b: DetectedObject | Track) -> bool:
    if rel == "above":
        return a.y < b.y - RELATION_MARGIN
    if rel == "below":
        return a.y > b.y + RELATION_MARGIN
    if rel == "left of":
        return a.x < b.x - RELATION_MARGIN
    if rel == "right of":
        return a.x > b.x + RELATION_MARGIN
    return False


def _attribute_scores(
    expected: ParsedScene, found: list[Any], getter, assume_plain: bool
) -> tuple[dict[str, float], dict[int, int]]:
    pairs = _match(expected.objects, found, getter, assume_plain, expected.relations)
    scores: dict[str, float] = {"count": float(len(found) == len(expected.objects))}
    all_ok = [True] * len(expected.objects)
    for attr in IMAGE_ATTRS:
        hits = []
        for i, e in enumerate(expected.objects):
            want = _expected(e, attr, assume_plain)
            if want is None:
                continue
            ok = i in pairs and getter(found[pairs[i]], attr) == want
            hits.append(ok)
            all_ok[i] &= ok
        if hits:
            scores[attr] = float(np.mean(hits))
    for i in range(len(expected.objects)):
        all_ok[i] &= i in pairs
    scores["objects"] = float(np.mean(all_ok)) if all_ok else 0.0
    return scores, pairs


def score_image(
    image: Any, prompt: str | ParsedScene | Scene, assume_plain: bool = True, read: ReadScene | None = None
) -> Scores:
    """Per-attribute accuracy of ``image`` against ``prompt``.

    Keys: ``count`` (1 if the reader finds as many objects as the prompt names), ``color``, ``shape``,
    ``size``, ``position``, ``pattern`` (fraction of prompt objects, among those whose attribute the
    prompt states, that the matched object gets right; an unmatched prompt object is wrong),
    ``background``, ``relation`` (fraction of stated relations that hold), ``objects`` (fraction of
    prompt objects with every stated attribute right), ``plausible`` (1 if the reader rejected no region
    as no object of the world: a canvas-filling or background-like region, one too big or too small,
    cut by the canvas edge, or like no shape; the result's ``reasons`` say which and why) and ``exact``
    (1 if count and everything hold).
    With ``assume_plain`` an object whose pattern the prompt does not state must be plain, which is
    what :func:`~attncraft.shapes.captions.caption_scene` means by default. ``read`` reuses a
    :func:`~attncraft.shapes.reader.read_image` result of the same image.
    """
    expected = expected_scene(prompt)
    scene = read if read is not None else read_image(image)
    found = scene.objects
    scores, pairs = _attribute_scores(expected, found, getattr, assume_plain)
    if expected.background is not None:
        scores["background"] = float(scene.background == expected.background)
    if expected.relations:
        holds = [
            i in pairs and j in pairs and _relation_holds(found[pairs[i]], rel, found[pairs[j]])
            for i, rel, j in expected.relations
        ]
        scores["relation"] = float(np.mean(holds))
    scores["plausible"] = float(scene.plausible)
    scores["exact"] = float(all(v == 1.0 for v in scores.values()))
    return Scores(scores, reasons=scene.reasons, rejected=[r.to_dict() for r in scene.rejected])


def _mean_dicts(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def score_images(images: Any, prompts: Sequence[str | ParsedScene | Scene], assume_plain: bool = True) -> dict[str, float]:
    """Mean of :func:`score_image` over a batch (each key averaged over the images that have it)."""
    reads = read_images(images)
    return _mean_dicts([score_image(None, p, assume_plain, read=r) for r, p in zip(reads, prompts)])


# --------------------------------------------------------------------------------------------------
# Video
# --------------------------------------------------------------------------------------------------


def _track_attr(track: Track, attr: str) -> str:
    """Attributes of a track as a prompt means them: colour, size and position of its first frame;
    shape and pattern by majority over the frames."""
    if attr in ("shape", "pattern"):
        return track.majority(attr)
    return getattr(track.first, attr)


_DIR_VEC = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def _series(track: Track, motion: ParsedMotion) -> list[float] | None:
    """Per-frame progress of ``motion`` along its own axis (position along the direction, radius,
    unwrapped angle in the asked sense); ``None`` for motions without a continuous measure."""
    objs = track.objects
    if motion.kind == "move" and motion.direction in _DIR_VEC:
        dx, dy = _DIR_VEC[motion.direction]
        return [o.x * dx + o.y * dy for o in objs]
    if motion.kind in ("grow", "shrink"):
        sign = 1.0 if motion.kind == "grow" else -1.0
        return [sign * math.log(max(o.radius, 1e-6)) for o in objs]
    if motion.kind == "rotate":
        angles = track.unwrapped_angles()
        sign = -1.0 if motion.direction == "clockwise" else 1.0
        if motion.direction is None and angles and angles[-1] < angles[0]:
            sign = -1.0
        return [sign * a for a in angles]
    return None


def _best_rise(values: list[float]) -> tuple[float, int, int]:
    """Largest increase values[j] - values[i] with i <= j, and (i, j)."""
    best, bi, bj = 0.0, 0, 0
    lo, lo_i = math.inf, 0
    for j, v in enumerate(values):
        if v < lo:
            lo, lo_i = v, j
        if v - lo > best:
            best, bi, bj = v - lo, lo_i, j
    return best, bi, bj


def _event_frame(track: Track, motion: ParsedMotion) -> float | None:
    """Frame at which ``motion`` is half done (for ordering motions in time)."""
    frames = track.frames
    if motion.kind == "appear":
        return float(frames[0])
    if motion.kind == "recolor":
        for f, o in zip(frames, track.objects):
            if o.color == motion.to_color:
                return float(f)
        return None
    values = _series(track, motion)
    if not values:
        return None
    rise, i, j = _best_rise(values)
    if rise <= 0:
        return None
    for k in range(i, j + 1):
        if values[k] - values[i] >= rise / 2:
            return float(frames[k])
    return None


def _motion_ok(track: Track, motion: ParsedMotion, num_frames: int) -> bool:
    """Does ``motion`` happen somewhere in the track (a move of at least half a cell in the asked
    direction, a radius change of half the small-to-big ratio, a rotation of 30 degrees...)?"""
    first, last = track.first, track.last
    if motion.kind == "move":
        return motion.direction in _DIR_VEC and _best_rise(_series(track, motion) or [])[0] >= MOVE_MIN
    if motion.kind in ("grow", "shrink"):
        return _best_rise(_series(track, motion) or [])[0] >= math.log(1 + SIZE_RATIO)
    if motion.kind == "rotate":
        if track.majority("shape") == "circle":
            return False
        return _best_rise(_series(track, motion) or [])[0] >= ROTATE_MIN
    if motion.kind == "recolor":
        if motion.from_color and first.color != motion.from_color:
            return False
        return last.color == motion.to_color and first.color != motion.to_color
    if motion.kind == "appear":
        return track.frames[0] > 0 and track.frames[-1] == num_frames - 1
    return False


def _static_ok(track: Track) -> bool:
    first = track.first
    travel = max(math.hypot(o.x - first.x, o.y - first.y) for o in track.objects)
    radii = [o.radius for o in track.objects]
    colors = {o.color for o in track.objects}
    return (
        travel < 0.3 * CELL
        and max(radii) < first.radius * (1 + SIZE_RATIO / 2)
        and min(radii) > first.radius / (1 + SIZE_RATIO / 2)
        and len(colors) == 1
        and abs(track.rotation()) < ROTATE_MIN / 2
    )


def score_video(
    frames: Any, prompt: str | ParsedScene | Scene, assume_plain: bool = True, read: ReadVideo | None = None
) -> Scores:
    """Per-attribute accuracy of a video ((F, 3, H, W) tensor, (F, H, W, 3) array or list of images)
    against a (motion) prompt.

    Keys as :func:`score_image` for the objects' first appearance (``count`` counts tracks seen in at
    least a quarter of the frames), plus ``motion`` (fraction of motion clauses that happen), one key
    per motion kind asked (``move``, ``grow``, ``shrink``, ``rotate``, ``recolor``, ``appear``,
    ``static``), ``order`` (fraction of "A, then B" pairs whose B happens after A) and ``identity``
    (fraction of frames in which each matched track keeps its shape and pattern, and is seen at all
    from its first appearance on), and ``plausible`` (fraction of frames in which the reader rejected no
    region; ``reasons`` name the frames and regions).
    """
    expected = expected_scene(prompt)
    rv = read if read is not None else read_video(frames)
    num_frames = len(rv.frames)
    tracks = [t for t in rv.tracks if len(t.frames) >= max(2, num_frames // 4)]
    scores, pairs = _attribute_scores(expected, tracks, _track_attr, assume_plain)
    if expected.background is not None:
        scores["background"] = float(rv.background == expected.background)
    if expected.relations:  # on the tracks' first positions
        scores["relation"] = float(np.mean([
            i in pairs and j in pairs and _relation_holds(tracks[pairs[i]], rel, tracks[pairs[j]])
            for i, rel, j in expected.relations
        ]))  # fmt: skip
    per_kind: dict[str, list[bool]] = {}
    order, identity = [], []
    for i, e in enumerate(expected.objects):
        track = tracks[pairs[i]] if i in pairs else None
        for m in e.motions:
            per_kind.setdefault(m.kind, []).append(track is not None and _motion_ok(track, m, num_frames))
        if e.static:
            per_kind.setdefault("static", []).append(track is not None and _static_ok(track))
        for a, b in zip(e.motions, e.motions[1:]):
            ta = _event_frame(track, a) if track else None
            tb = _event_frame(track, b) if track else None
            order.append(ta is not None and tb is not None and ta < tb)
        if track is not None:
            shape, pattern = track.majority("shape"), track.majority("pattern")
            same = sum(o.shape == shape and o.pattern == pattern for o in track.objects)
            identity.append(same / (num_frames - track.frames[0]))
        else:
            identity.append(0.0)
    motions = [ok for oks in per_kind.values() for ok in oks]
    if motions:
        scores["motion"] = float(np.mean(motions))
    for kind, oks in per_kind.items():
        scores[kind] = float(np.mean(oks))
    if order:
        scores["order"] = float(np.mean(order))
    scores["identity"] = float(np.mean(identity)) if identity else 0.0
    scores["plausible"] = float(np.mean([f.plausible for f in rv.frames])) if rv.frames else 1.0
    scores["exact"] = float(all(v == 1.0 for v in scores.values()))
    reasons = [f"frame {i}: {r}" for i, f in enumerate(rv.frames) for r in f.reasons]
    rejected = [{"frame": i, **r.to_dict()} for i, f in enumerate(rv.frames) for r in f.rejected]
    return Scores(scores, reasons=reasons, rejected=rejected)


def score_videos(videos: Any, prompts: Sequence[str | ParsedScene | Scene], assume_plain: bool = True) -> dict[str, float]:
    """Mean of :func:`score_video` over a batch of videos."""
    return _mean_dicts([score_video(v, p, assume_plain) for v, p in zip(videos, prompts)])


# --------------------------------------------------------------------------------------------------
# Maps
# --------------------------------------------------------------------------------------------------


def mask_iou(map: Any, mask: Any, threshold: float | None = 0.5, normalize: bool = True) -> float:
    """IoU between a 2-D map (any resolution, e.g. a 16x16 attention map) and a boolean mask.

    The map is resized to the mask's resolution (bilinear, ``align_corners=False``), min-max
    normalised to [0, 1] when ``normalize`` (a constant map normalises to all zeros), and
    binarised at ``threshold``; with ``threshold=None`` the ``k`` highest pixels are kept, ``k`` the
    mask's area (a threshold-free measure). Two empty masks have IoU 1.
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool().cpu()
    a = torch.as_tensor(np.asarray(map) if not isinstance(map, torch.Tensor) else map).detach().float().cpu()
    if a.ndim != 2 or m.ndim != 2:
        raise ValueError(f"mask_iou needs 2-D map and mask, got shapes {tuple(a.shape)} and {tuple(m.shape)}")
    if a.shape != m.shape:
        a = torch.nn.functional.interpolate(a[None, None], size=tuple(m.shape), mode="bilinear", align_corners=False)[0, 0]
    if threshold is None:
        k = int(m.sum())
        pred = torch.zeros_like(m)
        if k:
            pred.view(-1)[torch.topk(a.reshape(-1), k).indices] = True
    else:
        if normalize:
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(a)
        pred = a >= threshold
    inter = int((pred & m).sum())
    union = int((pred | m).sum())
    return 1.0 if union == 0 else inter / union
