"""How do the Shapes motion adapter's one-motion videos fail: the wrong way, or not at all?

The reader's ``motion`` score says whether a clause happens; it does not say what happened instead.
This probe generates the motion evaluation's held-out one-motion prompts (``motion_prompts(n, seed=5,
segments=1)``, the same seeds) with the embedded text-to-video model at its default settings, reads
every video, and classifies each motion clause by the reader's track of its object, with the reader's
own thresholds (``scoring.MOVE_MIN``, ``SIZE_RATIO``, ``ROTATE_MIN``):

* ``move``: the largest displacement in each of the four directions (``_best_rise`` of the position
  along it); ``asked`` when the asked one reaches ``MOVE_MIN`` (what the reader scores), else
  ``opposite`` / ``perpendicular`` by the direction that moved most, else ``still``;
* ``grow`` / ``shrink``: the log-radius rise either way: ``asked``, ``opposite`` or ``still``;
* ``rotate``: either sense of rotation (``asked`` for a prompt without a sense when either reaches
  ``ROTATE_MIN``); ``circle`` when the track is a circle (the reader cannot see its rotation);
* ``recolor``: ``asked``, ``other colour`` (the colour changed to another one), ``wrong start`` (the
  first colour is not the stated one) or ``still``;
* ``appear``: ``asked``, ``there from the start`` or ``gone by the end``;
* ``no track``: the reader matched no track to the prompt's object.

The same scenes' world renders are classified too (they should be ``asked`` throughout: a check of the
classifier, not of the model). If ``opposite`` + ``perpendicular`` is large against ``still``, the
adapter makes motion and the caption fails to choose its direction; if ``still`` dominates, it does not
make enough motion at all. A diagnostic, not a target.

    python benchmarks/probe_motion_failures.py --n 256 --device cuda --json $OUT/failures.json   # H200: ~2 min
    python benchmarks/probe_motion_failures.py --n 16                                           # CPU: ~6 min
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CATEGORIES = ("asked", "opposite", "perpendicular", "still", "other colour", "wrong start", "there from the start",
              "gone by the end", "circle", "no track")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _rise(values: list[float]) -> float:
    from attncraft.shapes.scoring import _best_rise

    return _best_rise(values)[0] if values else 0.0


def classify(track, motion, num_frames: int) -> tuple[str, float]:
    """(category, magnitude): the magnitude is the largest change of the clause's kind in any sense,
    in units of the reader's threshold (1.0 = just enough to count)."""
    from attncraft.shapes import scoring

    if track is None:
        return "no track", 0.0
    objs = track.objects
    if motion.kind == "move":
        rises = {d: _rise([o.x * dx + o.y * dy for o in objs]) for d, (dx, dy) in scoring._DIR_VEC.items()}
        best = max(rises, key=rises.get)
        magnitude = rises[best] / scoring.MOVE_MIN
        if rises.get(motion.direction, 0.0) >= scoring.MOVE_MIN:
            return "asked", magnitude
        if rises[best] < scoring.MOVE_MIN:
            return "still", magnitude
        return ("opposite" if best == OPPOSITE.get(motion.direction) else "perpendicular"), magnitude
    if motion.kind in ("grow", "shrink"):
        logs = [math.log(max(o.radius, 1e-6)) for o in objs]
        threshold = math.log(1 + scoring.SIZE_RATIO)
        up, down = _rise(logs), _rise([-v for v in logs])
        asked, other = (up, down) if motion.kind == "grow" else (down, up)
        magnitude = max(up, down) / threshold
        if asked >= threshold:
            return "asked", magnitude
        return ("opposite" if other >= threshold else "still"), magnitude
    if motion.kind == "rotate":
        if track.majority("shape") == "circle":
            return "circle", 0.0
        angles = track.unwrapped_angles()
        ccw, cw = _rise(angles), _rise([-a for a in angles])
        magnitude = max(ccw, cw) / scoring.ROTATE_MIN
        if motion.direction is None:
            return ("asked" if max(ccw, cw) >= scoring.ROTATE_MIN else "still"), magnitude
        asked, other = (cw, ccw) if motion.direction == "clockwise" else (ccw, cw)
        if asked >= scoring.ROTATE_MIN:
            return "asked", magnitude
        return ("opposite" if other >= scoring.ROTATE_MIN else "still"), magnitude
    if motion.kind == "recolor":
        colours = [o.color for o in objs]
        changed = float(len(set(colours)) > 1)
        if scoring._motion_ok(track, motion, num_frames):
            return "asked", changed
        if motion.from_color and colours[0] != motion.from_color:
            return "wrong start", changed
        return ("other colour" if colours[-1] != colours[0] else "still"), changed
    if motion.kind == "appear":
        if scoring._motion_ok(track, motion, num_frames):
            return "asked", 1.0
        return ("there from the start" if track.frames[0] == 0 else "gone by the end"), 0.0
    raise ValueError(f"unknown motion kind {motion.kind!r}")


def classify_video(item: tuple[np.ndarray, str]) -> list[tuple[str, str, float]]:
    """[(kind, category, magnitude)] for each motion clause of the video's prompt (one object)."""
    from attncraft.shapes.reader import read_video
    from attncraft.shapes.scoring import _attribute_scores, _track_attr, expected_scene

    frames, prompt = item
    expected = expected_scene(prompt)
    read = read_video(list(frames))
    num_frames = len(read.frames)
    tracks = [t for t in read.tracks if len(t.frames) >= max(2, num_frames // 4)]
    _, pairs = _attribute_scores(expected, tracks, _track_attr, True)
    out = []
    for i, obj in enumerate(expected.objects):
        track = tracks[pairs[i]] if i in pairs else None
        for m in obj.motions:
            category, magnitude = classify(track, m, num_frames)
            out.append((m.kind, category, magnitude))
    return out


def table(rows: dict[str, list[list[tuple[str, str, float]]]]) -> list[str]:
    from attncraft.shapes.training.motion_eval import MOTION_KINDS

    lines = ["| videos | kind | n | " + " | ".join(CATEGORIES) + " | median magnitude |",
             "|---" * (4 + len(CATEGORIES)) + "|"]
    for name, videos in rows.items():
        clauses = [c for v in videos for c in v]
        for kind in ("all", *MOTION_KINDS):
            chosen = [c for c in clauses if kind == "all" or c[0] == kind]
            if not chosen:
                continue
            counts = Counter(c[1] for c in chosen)
            cells = [f"{100 * counts[c] / len(chosen):.1f} %" if counts[c] else "" for c in CATEGORIES]
            magnitude = np.median([c[2] for c in chosen]) if kind in ("move", "grow", "shrink", "rotate") else None
            lines.append(f"| {name} | {kind} | {len(chosen)} | " + " | ".join(cells)
                         + f" | {'' if magnitude is None else f'{magnitude:.2f}'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    from attncraft.loading import load_text_to_video
    from attncraft.shapes.training.evaluate import Scorer
    from attncraft.shapes.training.motion_eval import MOTION_ONE_SEED, generate_videos, motion_prompts, world_renders

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16, help="held-out one-motion prompts (the evaluation's set)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--adapter", default="shapes", help="motion adapter folder (default: the embedded one)")
    p.add_argument("--sd", default=None, help="base model folder (default: the embedded Shapes SD)")
    p.add_argument("--workers", type=int, default=1, help="reader processes (forked before CUDA starts)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if min(args.n, args.batch, args.workers) < 1:
        p.error(f"--n {args.n} --batch {args.batch} --workers {args.workers}: each must be at least 1")
    scorer = Scorer(args.workers if args.workers > 1 else 0)  # forked before CUDA starts, one torch thread each
    adapter = None if args.adapter == "shapes" else args.adapter
    dtype = torch.float16 if torch.device(args.device).type == "cuda" else torch.float32  # as the evaluation
    loaded = load_text_to_video(args.sd or "shapes", adapter, device=args.device, dtype=dtype)
    pipe, defaults = loaded.pipeline, loaded.defaults
    pipe.set_progress_bar_config(disable=True)
    guidance = float(defaults.get("guidance_scale", 7.5))
    steps = int(defaults.get("num_inference_steps", 25))
    frames = int(defaults.get("num_frames", 16))
    scenes, prompts = motion_prompts(args.n, MOTION_ONE_SEED, 1)
    videos = generate_videos(pipe, prompts, frames, steps, guidance, args.batch, MOTION_ONE_SEED * 1000)
    print(f"generated {len(videos)} videos", file=sys.stderr, flush=True)
    renders = world_renders(scenes, frames)
    rows = {"generated": scorer.map(classify_video, list(zip(list(videos), prompts))),
            "world renders": scorer.map(classify_video, list(zip(list(renders), prompts)))}
    scorer.close()
    lines = [f"### How one-motion videos fail ({args.n} held-out prompts, seed {MOTION_ONE_SEED}, {loaded.label}, "
             f"guidance {guidance:g}, {steps} steps, {frames} frames, {args.device})", "",
             "Share of motion clauses per category; magnitude: the largest change of the clause's kind in any "
             "direction, in units of the reader's threshold.", "", *table(rows)]
    print("\n".join(lines))
    if args.json:
        record = {"n": args.n, "model": loaded.label, "sd": args.sd, "adapter": args.adapter, "guidance": guidance, "steps": steps,
                  "frames": frames, "prompts": prompts, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
