"""Does the Shapes motion adapter carry a weak direction signal that guidance can bring out?

Held-out one-motion prompts of the motion evaluation (``motion_prompts(n, seed=5, segments=1)``, the
same videos' seeds), generated twice by the embedded text-to-video model at its default settings: with
the default (empty) negative prompt, and with the caption of the same scene with its motion turned the
other way as the negative prompt ("... moves left ..." against "... moves right ..."), so that classifier-free
guidance pushes along the difference of the two motions only. Scored by the reader (motion, per kind,
frame colour/shape, identity). A diagnostic, not a technique: if the second row moves the stated way far
more often, the adapter's prediction does depend on the motion words, weakly, and the motion modules
can read them.

    python benchmarks/probe_motion_negative.py --n 48      # CPU, about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from attncraft.loading import load_text_to_video
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.training.motion import swap_motions
    from attncraft.shapes.training.motion_eval import (MOTION_KINDS, generate_videos, motion_prompts, score_one_video,
                                                       summarize_videos)

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--seed", type=int, default=5, help="the prompt set (the motion evaluation's: 5)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's, 25)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.n < 1 or args.batch < 1 or (args.steps is not None and args.steps < 1):
        p.error(f"--n {args.n} --batch {args.batch} --steps {args.steps}: each must be at least 1")
    loaded = load_text_to_video("shapes", device=args.device)
    pipe, defaults = loaded.pipeline, loaded.defaults
    guidance = float(defaults.get("guidance_scale", 7.5))
    steps = args.steps or int(defaults.get("num_inference_steps", 25))
    scenes, prompts = motion_prompts(args.n, args.seed, 1)
    reversed_ = [caption_scene(swap_motions(s), seed=i) for i, s in enumerate(scenes)]
    rows = {}
    for name, negatives in (("default negative prompt", None), ("the motion turned the other way as negative", reversed_)):
        videos = generate_videos(pipe, prompts, 16, steps, guidance, args.batch, args.seed * 1000, negative=negatives)
        rows[name] = summarize_videos([score_one_video(item) for item in zip(list(videos), prompts)])
        print(f"{name}: {len(prompts)} videos", file=sys.stderr, flush=True)
    kinds = [k for k in MOTION_KINDS if any(f"n_{k}" in r for r in rows.values())]
    print(f"### Motion with a reversed-motion negative prompt ({args.n} held-out one-motion prompts, seed {args.seed}, "
          f"guidance {guidance:g}, {steps} steps, {args.device})")
    print()
    print("| negative prompt | n | motion | " + " | ".join(kinds) + " | frame colour/shape | identity |")
    print("|---" * (5 + len(kinds)) + "|")
    for name, r in rows.items():
        per = " | ".join(f"{100 * r[k]:.0f} % ({r[f'n_{k}']})" if k in r else "-" for k in kinds)
        print(f"| {name} | {r['n']} | {100 * r['motion']:.1f} % | {per} | {100 * r.get('frame_color_shape', 0):.1f} % | "
              f"{100 * r.get('identity', 0):.1f} % |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
