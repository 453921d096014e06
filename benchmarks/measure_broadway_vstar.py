"""Measured effects of BroadWay and VSTAR on the Shapes motion model, scored by the Shapes reader.

The model is attncraft's ``TextToVideoPipeline`` (diffusers' ``AnimateDiffPipeline`` with per-frame
prompt schedules) built from the Shapes SD folder (``--model``, default ``assets/models/shapes-sd``)
and a ``MotionAdapter`` folder (``--adapter``, e.g. the Shapes motion adapter
``assets/models/shapes-motion``). Prompts are Shapes video captions of held-out scenes
(training draws scenes from seeds >= 10,000,000; these come from seeds 120 and 121), and video ``i`` of
every row uses the generator seed ``--seed + i``, so rows differ only by the technique.

BroadWay table (``--count`` captions of moving scenes, seed 120): rows ``plain`` and ``broadway``;
columns the reader's motion amount (mean centroid displacement per frame, in canvas widths, over the
tracks the scorer matches), ``motion`` and ``identity`` (:func:`~attncraft.shapes.scoring.score_video`),
and the temporal-attention energy on BroadWay's layers and steps (conditional half) before TSG and
after FME; without BroadWay both are the energy of the unedited maps.

VSTAR table (``--count`` *sequential* captions: some object does two things one after the other,
"moves right, then turns blue"; seed 121): rows ``plain`` (the caption on every frame), ``synopsis``
(the caption's states, :func:`~attncraft.video.synopsis.rule_states` or ``--llm``, spread over the
frames: state ``k`` at anchor ``int(linspace(0, F-1, K)[k])``, linear interpolation between anchors),
``tar`` (the caption, TAR on) and ``synopsis+tar``; columns ``recolor``, ``order``, ``motion``,
``identity`` and ``exact``.

Per-frame text is the pipeline's own: each video of a batch gets a
:class:`~attncraft.video.prompts.PromptSchedule` of its states, every distinct state of the batch is
encoded once, and the interpolated per-frame embeddings reach the UNet in one batched call per
``--batch`` videos (:mod:`attncraft.pipelines.text_to_video`); the techniques go in with the call's
``techniques=[...]``.

Settings: BroadWay with the AnimateDiff preset (tau 7 at 16 frames, alpha 0.6, beta 1.5, first 20 %
of steps) guided from the model's default reference block
(:func:`~attncraft.attention_processors.broadway.default_reference_block`, or ``--broadway-reference``):
the Shapes UNet has two up blocks, and its coarsest, ``up_blocks.0`` at half resolution, plays the
part of SD 1.5's ``up_blocks.1`` (a coarser grid than the blocks it guides). VSTAR preset
``64D4`` (level 0, sigma 4, steps 0..13 of 25). Sampler and guidance: the model folder's defaults
unless given.

Writes ``measure_broadway_vstar.json`` (settings, per-row means, per-video scores), ``.md`` (the
tables for ``benchmarks/RESULTS.md``) and ``examples.png`` (frames 0, F/3, 2F/3 and F-1 of the first
two videos of every row) into ``--out``. Usage (GPU)::

    python benchmarks/measure_broadway_vstar.py --adapter assets/models/shapes-motion --device cuda \\
        --count 200 --batch 50 --workers 12 --out $OUT/measure
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncraft.attention_processors import AttentionTechnique
from attncraft.attention_processors.broadway import BroadWay, default_reference_block, temporal_energy
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from attncraft.devices import DTYPES

ROOT = Path(__file__).resolve().parents[1]
BROADWAY_SEED, VSTAR_SEED = 120, 121
BROADWAY_ROWS = ("plain", "broadway")
VSTAR_ROWS = ("plain", "synopsis", "tar", "synopsis+tar")


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def motion_prompts(count: int) -> list[str]:
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import sample_scenes

    return [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(count, seed=BROADWAY_SEED, motion=True))]


def sequential_prompts(count: int) -> list[str]:
    """Captions of moving scenes in which some object has two motion segments, in draw order."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import sample_scenes

    out: list[str] = []
    drawn = 0
    while len(out) < count:
        scenes = sample_scenes(drawn + 4 * count, seed=VSTAR_SEED, motion=True)  # a prefix-stable draw
        for i in range(drawn, len(scenes)):
            if any(len(o.motions) == 2 for o in scenes[i].objects):
                out.append(caption_scene(scenes[i], seed=i))
                if len(out) == count:
                    break
        drawn = len(scenes)
    return out


# --------------------------------------------------------------------------------------------------
# Attention energy without BroadWay
# --------------------------------------------------------------------------------------------------


class EnergyProbe(AttentionTechnique):
    """Observer: the energy of the unedited temporal maps on BroadWay's layers and steps."""

    name = "energy-probe"
    order = 1000
    edits_maps = False

    def __init__(self, broadway: BroadWay):
        super().__init__(broadway.selector)
        self.broadway = broadway
        self.window = 0
        self.values: list[torch.Tensor] = []

    def on_run_start(self, context) -> None:
        self.window = self.broadway.active_steps(context.inference_steps() or 0)

    def is_active(self, context) -> bool:
        return 0 <= context.step_index < self.window

    def edit_probs(self, call, probs):
        self.values.append(temporal_energy(probs[call.cond_rows()].float()).detach())
        return probs


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_one(item: tuple[np.ndarray, str]) -> dict[str, float]:
    """Reader scores of one video (F, H, W, 3) against its caption, plus the motion amount."""
    from attncraft.shapes.reader import read_video
    from attncraft.shapes.scoring import score_video

    frames, prompt = item
    read = read_video(frames)
    scores = score_video(frames, prompt, read=read)
    steps = []
    for track in read.tracks:
        if len(track.frames) >= max(2, len(read.frames) // 4):
            objs = track.objects
            steps += [math.hypot(b.x - a.x, b.y - a.y) / (fb - fa)
                      for (fa, a), (fb, b) in zip(zip(track.frames, objs), zip(track.frames[1:], objs[1:]))]  # fmt: skip
    scores["motion_amount"] = float(np.mean(steps)) if steps else 0.0
    return scores


def _init_worker() -> None:
    torch.set_num_threads(1)


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys} | {"n": len(rows)}


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def load_pipeline(model: str, adapter: str, device: torch.device, dtype: torch.dtype):
    from diffusers import MotionAdapter

    from attncraft.pipelines.text_to_video import TextToVideoPipeline
    from attncraft.validation import check_input_file

    for folder, what in ((model, "--model"), (adapter, "--adapter")):
        check_input_file(Path(folder) / "config.json" if what == "--adapter" else Path(folder) / "model_index.json", f"{what} folder's config")
    from attncraft.video.motion_text_path import apply_text_path, has_text_path

    motion = MotionAdapter.from_pretrained(adapter, dtype=dtype)
    pipe = TextToVideoPipeline.from_pretrained(model, motion_adapter=motion, dtype=dtype).to(device)
    if has_text_path(adapter):  # the adapter's trained cross-attention changes, as load_text_to_video applies them
        apply_text_path(pipe.unet, adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, sampling, batching and output options every Shapes motion measurement takes."""
    parser.add_argument("--adapter", required=True, help="MotionAdapter folder (e.g. assets/models/shapes-motion)")
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "shapes-sd"), help="SD folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--count", type=int, default=200, help="videos per row")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=None, help="default: the model folder's width")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=25, help="videos per pipeline call")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--workers", type=int, default=0, help="reader processes (0: score in this process)")


def open_run(args):
    """Fill ``args``' size, steps and guidance from the folders' defaults, start the reader processes
    (forked before CUDA starts) and load the pipeline; returns ``(pipe, pool or None, score)`` with
    ``score(videos, prompts)`` the reader's scores of a row. Close the pool when done."""
    defaults = folder_defaults(args.model, args.adapter)
    args.size = args.size or int(defaults.get("width", 64))
    args.steps = args.steps or int(defaults.get("num_inference_steps", 25))
    args.guidance = args.guidance if args.guidance is not None else float(defaults.get("guidance_scale", 7.5))
    pool = mp.get_context("fork").Pool(args.workers, initializer=_init_worker) if args.workers > 0 else None
    dtype = DTYPES[args.dtype]
    pipe = load_pipeline(args.model, args.adapter, torch.device(args.device), dtype)

    def score(videos, prompts):
        items = list(zip(videos, prompts))
        return pool.map(score_one, items, chunksize=4) if pool is not None else [score_one(it) for it in items]

    return pipe, pool, score


def folder_defaults(*folders: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for folder in folders:
        path = Path(folder) / "attncraft_defaults.json"
        if path.is_file():
            out.update(json.loads(path.read_text()))
    return out


def generate_row(pipe, prompts, states, techniques, args, on_batch=None) -> list[np.ndarray]:
    """Videos (F, H, W, 3) in [0, 1] for ``prompts``; ``states`` (a list of state lists) switches on
    per-frame text: video ``i`` then gets its states spread over the frames."""
    from attncraft.video.prompts import PromptSchedule

    device = pipe.unet.device
    videos: list[np.ndarray] = []
    for start in range(0, len(prompts), args.batch):
        batch = prompts[start:start + args.batch]
        generators = [torch.Generator(device=device).manual_seed(args.seed + start + i) for i in range(len(batch))]
        prompt = list(batch) if states is None else [PromptSchedule.from_states(states[start + i]) for i in range(len(batch))]
        out = pipe(prompt, num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                   guidance_scale=args.guidance, generator=generators, output_type="pt", techniques=techniques).frames  # fmt: skip
        videos += [v.permute(0, 2, 3, 1).float().cpu().numpy() for v in out]
        if on_batch is not None:
            on_batch(len(batch))
    return videos


def contact_sheet(path: Path, rows: dict[str, list[np.ndarray]], frames: int) -> None:
    from PIL import Image

    from attncraft.outputs import atomic_path

    picks = sorted({0, frames // 3, (2 * frames) // 3, frames - 1})
    strips = []
    for videos in rows.values():
        for video in videos[:2]:
            strips.append(np.concatenate([video[f] for f in picks], axis=1))
    sheet = (np.clip(np.concatenate(strips, axis=0), 0, 1) * 255).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(sheet).save(tmp)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def _float(value) -> float | None:
    return None if value is None else float(value)


def _cell(value, pattern: str = "{:.4f}") -> str:
    return "-" if value is None else pattern.format(value)


def markdown(results: dict[str, Any], command: str) -> str:
    s = results["settings"]
    lines = [f"### BroadWay and VSTAR on the Shapes motion model ({s['date']}, {s['device']})", "",
             f"Command: `{command}`  ",
             f"Model: `{s['model']}` + adapter `{s['adapter']}`; {s['frames']} frames, {s['size']}x{s['size']}, "
             f"{s['steps']} steps, guidance {s['guidance']}, {s['count']} videos per row (held-out seeds; video i "
             f"uses generator seed {s['seed']} + i in every row); {s['seconds']:.0f} s in all.", ""]  # fmt: skip
    if "broadway" in results:
        lines += ["| BroadWay | videos | motion amount (canvas / frame) | motion | identity | energy before | energy after | s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row, r in results["broadway"].items():
            m = r["means"]
            lines.append(f"| {row} | {m['n']} | {m.get('motion_amount', 0):.4f} | {m.get('motion', 0):.3f} | "
                         f"{m.get('identity', 0):.3f} | {_cell(r['energy_before'])} | {_cell(r['energy_after'])} | {r['seconds']:.0f} |")  # fmt: skip
        lines.append("")
    if "vstar" in results:
        lines += ["| VSTAR | videos | recolor | order | motion | identity | exact | s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for row, r in results["vstar"].items():
            m = r["means"]
            cells = " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in ("recolor", "order", "motion", "identity", "exact"))
            lines.append(f"| {row} | {m['n']} | {cells} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser)
    parser.add_argument("--tables", default="broadway,vstar", help="which tables: broadway, vstar or both")
    parser.add_argument("--broadway-reference", type=int, default=None, help="up block whose maps guide (default: the model's, 0 on Shapes)")
    parser.add_argument("--broadway-steps", type=int, default=None, help="active steps (default: the preset's 20 %%)")
    parser.add_argument("--vstar-preset", default="64D4")
    parser.add_argument("--llm", default=None, help="states from this language model instead of the rules")
    args = parser.parse_args(argv)

    from attncraft.outputs import atomic_path, prepare_output_dir, to_strict_json
    from attncraft.progress import progress_task
    from attncraft.video.synopsis import make_synopsis

    out = prepare_output_dir(args.out)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    tau = min(7, args.frames // 2 - 1)
    BroadWay(tau=tau).check_frames(args.frames)
    started = time.perf_counter()
    pipe, pool, score = open_run(args)
    device = pipe.unet.device
    if args.broadway_reference is None:
        args.broadway_reference = default_reference_block(pipe.unet)

    results: dict[str, Any] = {}
    examples: dict[str, list[np.ndarray]] = {}
    rows_total = len(BROADWAY_ROWS) * ("broadway" in tables) + len(VSTAR_ROWS) * ("vstar" in tables)
    with progress_task("videos", rows_total * args.count) as update:
        done = [0]

        def advance(n):
            done[0] += n
            update(done[0])

        if "broadway" in tables:
            prompts = motion_prompts(args.count)
            results["broadway"] = {}
            for row in BROADWAY_ROWS:
                t0 = time.perf_counter()
                technique = BroadWay(tau=tau, reference_block=args.broadway_reference, num_active_steps=args.broadway_steps,
                                     record_energy=True)
                probe = EnergyProbe(technique)
                videos = generate_row(pipe, prompts, None, [technique] if row == "broadway" else [probe], args, advance)
                scores = score(videos, prompts)
                if row == "broadway":
                    log = technique.energy_log()
                    before = np.mean([r["before"] for r in log]) if log else None
                    after = np.mean([r["after"] for r in log]) if log else None
                else:
                    before = after = float(torch.stack(probe.values).mean()) if probe.values else None
                results["broadway"][row] = {"means": mean_scores(scores), "energy_before": _float(before),
                                            "energy_after": _float(after), "seconds": time.perf_counter() - t0,
                                            "scores": scores}  # fmt: skip
                examples[f"broadway/{row}"] = videos[:2]
            results["broadway_prompts"] = prompts
        if "vstar" in tables:
            prompts = sequential_prompts(args.count)
            language_model = None
            if args.llm:
                from attncraft.video.synopsis import load_language_model

                language_model = load_language_model(args.llm, device=device)
            synopses = [make_synopsis(p, "llm" if args.llm else "rule", language_model=language_model, llm=args.llm).states
                        for p in prompts]  # fmt: skip
            results["vstar"] = {}
            for row in VSTAR_ROWS:
                t0 = time.perf_counter()
                techniques = [TemporalAttentionRegularization(args.vstar_preset)] if "tar" in row else []
                videos = generate_row(pipe, prompts, synopses if "synopsis" in row else None, techniques, args, advance)
                scores = score(videos, prompts)
                results["vstar"][row] = {"means": mean_scores(scores), "seconds": time.perf_counter() - t0, "scores": scores}
                examples[f"vstar/{row}"] = videos[:2]
            results["vstar_prompts"] = prompts
            results["vstar_states"] = synopses
    if pool is not None:
        pool.close()
        pool.join()
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results["settings"] = {
        "date": datetime.date.today().isoformat(), "device": hw, "model": args.model, "adapter": args.adapter,
        "count": args.count, "frames": args.frames, "size": args.size, "steps": args.steps, "guidance": args.guidance,
        "seed": args.seed, "dtype": args.dtype,
        "broadway": BroadWay(tau=tau, reference_block=args.broadway_reference, num_active_steps=args.broadway_steps).settings(),
        "vstar": TemporalAttentionRegularization(args.vstar_preset).settings(), "synopsis": args.llm or "rule",
        "seconds": time.perf_counter() - started, "torch": torch.__version__,
    }  # fmt: skip
    command = "python " + " ".join([Path(sys.argv[0]).name if argv is None else "benchmarks/measure_broadway_vstar.py", *(sys.argv[1:] if argv is None else argv)])
    table = markdown(results, command)
    with atomic_path(out / "measure_broadway_vstar.json") as tmp:
        tmp.write_text(to_strict_json(results, indent=1))
    with atomic_path(out / "measure_broadway_vstar.md") as tmp:
        tmp.write_text(table + "\n")
    contact_sheet(out / "examples.png", examples, args.frames)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
