"""Measured effect of trained CTGM on the Shapes motion model, scored by the Shapes reader.

The model is diffusers' stock ``AnimateDiffPipeline`` built from the Shapes SD folder (``--model``,
default ``assets/models/shapes-sd``) and a ``MotionAdapter`` folder (``--adapter``); CTGM weights come
from ``--ctgm FILE`` (repeat it for several modes, e.g. TII + TAR and ``all``), applied with
``apply_techniques``. Prompts: the *sequential* captions of VSTAR's table in
``benchmarks/measure_broadway_vstar.py`` (held-out scenes of seed 121 in which some object does two
things one after the other, "moves right, then turns blue"; training draws scenes from seeds >=
10,000,000), so the rows compare with that table. Video ``i`` of every row uses generator seed
``--seed + i``, so rows differ only by what is applied.

Rows: ``plain`` (the caption on every frame); ``ctgm <mode>`` per ``--ctgm`` file; ``synopsis``
(VSTAR's synopsis states spread over the frames, the same per-frame text as VSTAR's table); and
``synopsis + ctgm <mode>`` per file, CTGM and VSTAR's per-frame states on one run (CTGM's TII keeps
frame 0's state and derives the later frames' text from their own states). Columns: the reader's
``recolor``, ``order``, ``motion``, ``identity`` and ``exact`` (:func:`~attncraft.shapes.scoring.score_video`).

Generation, per-frame text and scoring are those of ``measure_broadway_vstar.py`` (imported, not
copied). Writes ``measure_ctgm.json`` (settings, the CTGM files' configurations and training records,
per-row means, per-video scores), ``measure_ctgm.md`` (the table for ``benchmarks/RESULTS.md``) and
``ctgm_examples.png`` (frames 0, F/3, 2F/3 and F-1 of the first two videos of every row) into
``--out``. Usage (GPU, all rows in about 2-4 minutes on one H200)::

    python benchmarks/measure_ctgm.py --adapter assets/models/shapes-motion \\
        --ctgm assets/models/shapes-ctgm/ctgm-tii-tar.safetensors --ctgm assets/models/shapes-ctgm/ctgm-all.safetensors \\
        --device cuda --dtype fp16 --count 200 --batch 100 --workers 12 --out $OUT/measure
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncraft.attention_processors.ctgm import CrossFrameTextGuidance, file_fingerprint, load_ctgm, read_ctgm_metadata

sys.path.insert(0, str(Path(__file__).resolve().parent))
import measure_broadway_vstar as shared  # noqa: E402  (the per-frame text, generation and scoring of VSTAR's table)

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("recolor", "order", "motion", "identity", "exact")


def row_plan(files: list[str], modes: list[str]) -> list[tuple[str, bool, int | None]]:
    """(row name, with synopsis states, index of the CTGM file or None), in table order."""
    rows: list[tuple[str, bool, int | None]] = [("plain", False, None)]
    rows += [(f"ctgm {mode}", False, i) for i, mode in enumerate(modes)]
    rows.append(("synopsis", True, None))
    rows += [(f"synopsis + ctgm {mode}", True, i) for i, mode in enumerate(modes)]
    return rows


def markdown(results: dict[str, Any], command: str) -> str:
    s = results["settings"]
    files = "; ".join(f"`{c['file']}` ({c['mode']}, {c['sites']} sites, {c['steps']} steps)" for c in results["ctgm"])
    lines = [f"### CTGM on the Shapes motion model ({s['date']}, {s['device']})", "",
             f"Command: `{command}`  ",
             f"Model: `{s['model']}` + adapter `{s['adapter']}`; CTGM {files}; {s['frames']} frames, "
             f"{s['size']}x{s['size']}, {s['steps']} steps, guidance {s['guidance']}, {s['dtype']}; {s['count']} "
             f"sequential prompts per row (held-out seed 121, VSTAR's prompt set; video i uses generator seed "
             f"{s['seed']} + i in every row); {s['seconds']:.0f} s in all.", "",
             "| row | videos | " + " | ".join(COLUMNS) + " | s |", "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " | --- |"]  # fmt: skip
    for row, r in results["rows"].items():
        m = r["means"]
        cells = " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in COLUMNS)
        lines.append(f"| {row} | {m['n']} | {cells} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def describe(path: str) -> dict[str, Any]:
    config, training = read_ctgm_metadata(path)
    training = training or {}
    return {"file": path, "sha256_16": file_fingerprint(path), "mode": config.mode, "sites": config.sites,
            "faithful": config.faithful, "steps": training.get("steps"), "training": training}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared.add_run_arguments(parser)
    parser.add_argument("--ctgm", action="append", required=True, help="CTGM weights (.safetensors); repeat per mode")
    parser.add_argument("--llm", default=None, help="synopsis states from this language model instead of the rules")
    args = parser.parse_args(argv)

    from attncraft.outputs import atomic_path, prepare_output_dir, to_strict_json
    from attncraft.progress import progress_task
    from attncraft.video.synopsis import make_synopsis

    out = prepare_output_dir(args.out)
    ctgm_info = [describe(path) for path in args.ctgm]  # every file is checked before any work
    started = time.perf_counter()
    pipe, pool, score = shared.open_run(args)
    device = pipe.unet.device
    ctgms = [load_ctgm(path, pipe.unet, device=device, dtype=pipe.unet.dtype) for path in args.ctgm]

    prompts = shared.sequential_prompts(args.count)
    language_model = None
    if args.llm:
        from attncraft.video.synopsis import load_language_model

        language_model = load_language_model(args.llm, device=device)
    synopses = [make_synopsis(p, "llm" if args.llm else "rule", language_model=language_model, llm=args.llm).states
                for p in prompts]  # fmt: skip
    plan = row_plan(args.ctgm, [c.mode for c in ctgms])
    results: dict[str, Any] = {"rows": {}}
    examples: dict[str, list[np.ndarray]] = {}
    with progress_task("videos", len(plan) * args.count) as update:
        done = [0]

        def advance(n):
            done[0] += n
            update(done[0])

        for row, with_states, index in plan:
            t0 = time.perf_counter()
            techniques = [] if index is None else [CrossFrameTextGuidance(ctgms[index])]
            videos = shared.generate_row(pipe, prompts, synopses if with_states else None, techniques, args, advance)
            scores = score(videos, prompts)
            results["rows"][row] = {"means": shared.mean_scores(scores), "seconds": time.perf_counter() - t0, "scores": scores}
            examples[row] = videos[:2]
    if pool is not None:
        pool.close()
        pool.join()
    results["prompts"], results["states"], results["ctgm"] = prompts, synopses, ctgm_info
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results["settings"] = {
        "date": datetime.date.today().isoformat(), "device": hw, "model": args.model, "adapter": args.adapter,
        "count": args.count, "frames": args.frames, "size": args.size, "steps": args.steps, "guidance": args.guidance,
        "seed": args.seed, "dtype": args.dtype, "synopsis": args.llm or "rule", "torch": torch.__version__,
        "seconds": time.perf_counter() - started,
    }  # fmt: skip
    command = "python " + " ".join(["benchmarks/measure_ctgm.py", *(sys.argv[1:] if argv is None else argv)])
    table = markdown(results, command)
    with atomic_path(out / "measure_ctgm.json") as tmp:
        tmp.write_text(to_strict_json(results, indent=1))
    with atomic_path(out / "measure_ctgm.md") as tmp:
        tmp.write_text(table)
    shared.contact_sheet(out / "ctgm_examples.png", examples, args.frames)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
