#!/usr/bin/env python
"""The reader under mild damage: accuracy on world renders, verdicts on generated images.

Two measurements, both with the named damages of :mod:`attncraft.shapes.damage` (Gaussian blur
radius 1, JPEG 75 and 50, resizing to 3/4 and back, bicubic and bilinear):

1. **World renders** (held-out scenes, ``--render-seed``, 1-3 objects, patterns, every background):
   per attribute, the reader's score against the scene itself (every attribute stated) and
   ``exact`` (count, colour, shape, size, position, pattern and background of every object right).
   Targets: ``exact`` >= 97 % under blur, JPEG 75 and resizing, >= 90 % under JPEG 50, 100 % clean.
2. **Generated images** of the shipped Shapes SD (``--generated N``: half one-object prompts from
   seed 1, half two-object prompts from seed 2, the model card's prompt sets; its default sampler,
   CPU is fine): the share of images the reader passes (every stated attribute of every object and
   every stated relation right), clean and under each damage, and how often a damaged image gets
   the same verdict as the clean one. Generation is slow on a CPU (seconds per image), so the images
   are cached in ``--cache`` (an ``.npz`` with the prompts and the settings) and reused.

It imports only the public reader API (``read_images``, ``score_image``), so the same command run on
an older tree (with ``attncraft/shapes/damage.py`` copied in) gives the "before" column.

    python benchmarks/bench_reader_damage.py --renders 500 --generated 240 --cache outputs/reader_generated.npz

Prints a Markdown block (date, hardware, command, tables) for the model card.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attncraft.shapes.damage import DAMAGES, to_uint8
from attncraft.shapes.reader import read_images
from attncraft.shapes.scoring import score_image
from attncraft.shapes.world import render_scenes, sample_scenes

ATTRS = ("count", "color", "shape", "size", "position", "pattern", "background", "exact")
ONE_SEED, TWO_SEED = 1, 2


def image_ok(score: dict[str, float]) -> bool:
    """The model card's "all attributes of every object" (any stated relation must hold too)."""
    return score.get("objects", 0.0) == 1.0 and score.get("relation", 1.0) == 1.0


def render_table(n: int, seed: int, size: int, damages: list[str]) -> list[tuple[str, dict[str, float]]]:
    scenes = sample_scenes(n, seed=seed)
    clean = [to_uint8(t) for t in render_scenes(scenes, size=size).images]
    rows = []
    for name in damages:
        imgs = [DAMAGES[name](a) for a in clean]
        scores = [score_image(None, s, read=r) for s, r in zip(scenes, read_images(imgs))]
        rows.append((name, {k: float(np.mean([s[k] for s in scores if k in s])) for k in ATTRS}))
    return rows


def generated_images(n: int, steps: int, cache: Path | None, batch: int) -> tuple[np.ndarray, list[str]]:
    """``n`` images of the shipped Shapes SD (half one-object, half two-object held-out prompts)."""
    from attncraft.shapes.captions import caption_scene

    n_one = n // 2
    prompts = [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(n_one, seed=ONE_SEED, num_objects=1))]
    prompts += [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(n - n_one, seed=TWO_SEED, num_objects=2))]
    settings = f"n={n} steps={steps} batch={batch}"
    if cache is not None and cache.exists():
        data = np.load(cache, allow_pickle=False)
        if str(data["settings"]) == settings and list(data["prompts"]) == prompts:
            return data["images"], prompts
        print(f"[bench] {cache} holds other settings ({data['settings']}); generating anew", file=sys.stderr)
    from attncraft.progress import progress_bar
    from attncraft.shapes.models import load_shapes_sd_pipeline, shapes_sd_defaults

    pipe = load_shapes_sd_pipeline()
    pipe.set_progress_bar_config(disable=True)
    guidance = float(shapes_sd_defaults().get("guidance_scale", 3.0))
    out = []
    for i in progress_bar(range(0, n, batch), "generating", enabled=True):
        gen = torch.Generator().manual_seed(1000 + i)
        res = pipe(prompt=prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                   height=64, width=64, generator=gen, output_type="np")  # fmt: skip
        out.append((np.clip(res.images, 0, 1) * 255).round().astype(np.uint8))
    images = np.concatenate(out)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez_compressed(tmp, images=images, prompts=np.array(prompts), settings=np.array(settings))
        os.replace(tmp, cache)
    return images, prompts


def generated_table(images: np.ndarray, prompts: list[str], damages: list[str]) -> list[tuple[str, dict[str, float]]]:
    verdicts = {}
    for name in damages:
        imgs = [DAMAGES[name](a) for a in images]
        verdicts[name] = [image_ok(score_image(None, p, read=r)) for p, r in zip(prompts, read_images(imgs))]
    n_one = len(prompts) // 2
    ref = verdicts.get("clean")
    rows = []
    for name in damages:
        v = np.array(verdicts[name])
        row = {"one": float(v[:n_one].mean()), "two": float(v[n_one:].mean()), "all": float(v.mean())}
        if ref is not None:
            row["same"] = float((v == np.array(ref)).mean())
        rows.append((name, row))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renders", type=int, default=500, help="world renders per damage (0: skip)")
    ap.add_argument("--render-seed", type=int, default=20, help="held-out scene seed of the renders")
    ap.add_argument("--sizes", default="64", help="canvas sizes of the renders, comma-separated (64,128)")
    ap.add_argument("--generated", type=int, default=0, help="generated images (0: skip)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--cache", type=Path, default=None, help=".npz cache of the generated images")
    ap.add_argument("--damages", default=",".join(DAMAGES), help="comma-separated names")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    damages = [d.strip() for d in args.damages.split(",") if d.strip()]
    for d in damages:
        if d not in DAMAGES:
            ap.error(f"unknown damage {d!r}; expected one of {', '.join(DAMAGES)}")
    t0 = time.time()
    lines = [
        f"### Reader under damage ({datetime.date.today().isoformat()}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__})",
        "",
        "Command: `python benchmarks/bench_reader_damage.py " + " ".join(sys.argv[1:] if argv is None else argv) + "`",
        "",
    ]
    if args.renders:
        for size in (int(s) for s in args.sizes.split(",")):
            lines += [f"World renders, {size}x{size}, n = {args.renders} per row (seed {args.render_seed}):", "",
                      "| damage | " + " | ".join(ATTRS) + " |", "|---" * (len(ATTRS) + 1) + "|"]  # fmt: skip
            for name, row in render_table(args.renders, args.render_seed, size, damages):
                lines.append(f"| {name} | " + " | ".join(f"{100 * row[k]:.1f} %" for k in ATTRS) + " |")
            lines.append("")
    if args.generated:
        images, prompts = generated_images(args.generated, args.steps, args.cache, args.batch)
        n_one = len(prompts) // 2
        lines += [f"Generated images of the shipped Shapes SD ({n_one} one-object + {len(prompts) - n_one} "
                  f"two-object held-out prompts, {args.steps} steps): share the reader passes, and share whose "
                  "verdict equals the clean image's:", "",
                  "| damage | one object | two objects | all | same verdict as clean |", "|---|---|---|---|---|"]  # fmt: skip
        for name, row in generated_table(images, prompts, damages):
            same = f"{100 * row['same']:.1f} %" if "same" in row else "-"
            lines.append(f"| {name} | {100 * row['one']:.1f} % | {100 * row['two']:.1f} % | {100 * row['all']:.1f} % | {same} |")
        lines.append("")
    lines.append(f"Wall time {time.time() - t0:.0f} s.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
