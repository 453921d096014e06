#!/usr/bin/env python
"""X-Mesh's convergence claim, measured on ground truth: TDAM against the Text2Mesh field.

The paper claims that the text-guided dynamic attention (TDAM) makes the style field converge
faster than Text2Mesh's text-independent field. This script runs both fields on the same meshes,
prompts and seeds and records, every ``--eval-every`` iterations (after that update, as the
reference labels its exports):

* the **ground-truth colour fraction** (:mod:`attncraft.mesh.metrics`): share of the visible surface
  (8 fixed views, albedo) whose vertex colour is the prompt's palette colour;
* the **CLIP evaluation score** of the guiding CLIP (:mod:`attncraft.mesh.evaluation`: 24 fixed
  views, no augmentation), and from it the **ITS** with a threshold calibrated for that CLIP:
  half way between the score of the untouched gray mesh and the score of the mesh painted all over
  in the prompt's palette colour, averaged over the procedural meshes x prompts (the reference's
  fixed 0.22 belongs to open_clip ViT-B-32 and means nothing for another CLIP);
* the ground-truth ITS: the first evaluation at which the colour fraction reaches 0.5 (and 0.9).

Meshes: 10 procedural meshes (six shapes and four noisy variants, :mod:`attncraft.mesh.procedural`;
the prompt names the shape: "a red torus") and, with ``--mit30 DIR``, the MIT-30 meshes found in
``DIR/meshes`` (the prompt uses the generic noun: "a red object"); 6 colour prompts; 3 seeds; both
fields. All runs of one mesh topology and field are stepped together
(:class:`attncraft.mesh.multirun.BatchedXMesh`). Iterations, learning rate and the other settings
are the command-line options (defaults: the settings of the measurement in benchmarks/RESULTS.md).

Writes ``claim.json`` (every curve), ``claim.md`` (the Markdown block for benchmarks/RESULTS.md) and
``xmesh_claim.png`` (score against iteration, mean and interquartile band of each field) into ``--out``.

GPU run (one H200; expected under 5 minutes: the MIT-30 part stops starting meshes after
``--budget-minutes``):

    python benchmarks/bench_xmesh_claim.py --clip assets/models/shapes-clip --mit30 .mit30 --device cuda --budget-minutes 3.2 --out $OUT/claim

(``.mit30`` from ``python tools/pack_mit30.py ../shared/data/mit30 .mit30``: 4.2 MB for the 11 meshes.)

CPU check (seconds): ``python benchmarks/bench_xmesh_claim.py --smoke --device cpu --out /tmp/claim``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
PROCEDURAL = (("sphere", "smooth", 0), ("torus", "smooth", 0), ("cube", "smooth", 0), ("cone", "smooth", 0),
              ("cylinder", "smooth", 0), ("capsule", "smooth", 0), ("sphere", "blobby", 1), ("cube", "bumpy", 2),
              ("cylinder", "blobby", 3), ("torus", "bumpy", 4))
FIELDS = ("xmesh", "text2mesh")
FIELD_LABEL = {"xmesh": "X-Mesh (TDAM)", "text2mesh": "Text2Mesh field"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="default", help="guiding CLIP folder (default: the shipped shapes CLIP)")
    p.add_argument("--mit30", default=None, help="MIT-30 meshes: NAME.npz (tools/pack_mit30.py) or meshes/NAME.obj; "
                   "skipped when absent")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--views", type=int, default=5)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--background", default="1,1,1", help="R,G,B in 0-1 (default white, as the reference)")
    p.add_argument("--geoloss", action="store_true", help="add the geometry-only loss (off: colour prompts)")
    p.add_argument("--budget-minutes", type=float, default=4.6, help="skip remaining MIT-30 meshes past this")
    p.add_argument("--meshes", type=int, default=None, help="only the first N procedural meshes (a quick check)")
    p.add_argument("--prompts", type=int, default=None, help="only the first N colour prompts (a quick check)")
    p.add_argument("--smoke", action="store_true", help="CPU check: 2 meshes, 2 prompts, 1 seed, tiny field")
    args = p.parse_args(argv)
    return args


def build_meshes(args):
    """[(set, name, noun, MeshData)] for the procedural set and the MIT-30 meshes found."""
    import numpy as np

    from attncraft.mesh.io import load_mesh, prepare_mesh
    from attncraft.mesh.procedural import procedural_mesh

    grid = (24, 14) if args.smoke else None
    items = PROCEDURAL[:2] if args.smoke else PROCEDURAL[: args.meshes]
    meshes = []
    for shape, variant, seed in items:
        kw = {"grid_size": grid} if grid else {}
        mesh = procedural_mesh(shape, variant, seed, **kw)
        name = shape if variant == "smooth" else f"{variant} {shape}"
        meshes.append(("procedural", name, shape, mesh))
    skipped = []
    if args.mit30:
        folder = Path(args.mit30)
        files = sorted(folder.glob("*.npz")) or sorted((folder / "meshes").glob("*.obj")) or sorted(folder.glob("*.obj"))
        if not files:
            skipped.append(f"MIT-30: no meshes in {folder} (absent: only the procedural set was measured)")
        for path in files[:1] if args.smoke else files:
            if path.suffix == ".npz":  # packed by tools/pack_mit30.py: loads without trimesh
                with np.load(path) as data:
                    mesh = prepare_mesh(data["vertices"], data["faces"], name=path.stem, source=str(path),
                                        device=args.device_type, max_vertices=10**7)
            else:
                mesh = load_mesh(path, device=args.device_type, max_vertices=10**7)
            meshes.append(("MIT-30", path.stem, "object", mesh))
    return meshes, skipped


def group_runs(meshes, prompts_per_mesh, seeds):
    """Runs grouped by (face array, field): [(field, [(mesh index, prompt, colour, seed)])].

    Both fields of one topology are adjacent, so a time budget that stops the MIT-30 part early
    leaves whole pairs (never a TDAM curve without its Text2Mesh partner)."""
    import numpy as np

    by_faces: dict = {}
    for m, (_, _, _, mesh) in enumerate(meshes):
        key = (mesh.faces.shape, hash(np.ascontiguousarray(mesh.faces).tobytes()))
        by_faces.setdefault(key, []).append(m)
    groups = []
    for members in by_faces.values():
        runs = [(m, p, c, s) for m in members for (p, c) in prompts_per_mesh[m] for s in seeds]
        groups += [(field, runs) for field in FIELDS]
    return groups


def calibrate(meshes, prompts_per_mesh, guide, renderer, settings, device):
    """Scores of the untouched (gray) and the ground-truth painted mesh for each (mesh, prompt)."""
    import torch

    from attncraft.mesh.multirun import BatchedXMesh
    from attncraft.shapes.palette import COLOR_RGB

    out = {}
    for m, (_, _, _, mesh) in enumerate(meshes):
        prompts = [p for p, _ in prompts_per_mesh[m]]
        b = BatchedXMesh(mesh, prompts, [0] * len(prompts), guide, renderer, settings, device)
        verts = b.base_vertices
        gray = torch.full_like(verts, 0.5)
        paint = torch.stack([torch.tensor(COLOR_RGB[c], device=device).expand_as(verts[0]) for _, c in prompts_per_mesh[m]])
        s0 = b.scores_of(verts, gray).tolist()
        s1 = b.scores_of(verts, paint).tolist()
        for k, (p, _) in enumerate(prompts_per_mesh[m]):
            out[(m, p)] = (s0[k], s1[k])
    return out


def first_reaching(curve, threshold, cap):
    """ITS of one recorded curve (the reference's rule: first evaluation strictly above the threshold)."""
    from attncraft.mesh.benchmark import its_from_curve

    return its_from_curve(curve, threshold, cap)


def run_group(field, runs, meshes, guide, renderer, settings, args, device, log):
    import torch

    from attncraft.mesh.multirun import BatchedXMesh

    s = type(settings)(**{**settings.to_dict(), "field": field})
    b = BatchedXMesh([meshes[m][3] for m, _, _, _ in runs], [p for _, p, _, _ in runs], [sd for *_, sd in runs],
                     guide, renderer, s, device)
    asked = [c for _, _, c, _ in runs]
    curves = {"iteration": [], "clip": [], "color": [], "train": []}
    t0 = time.perf_counter()

    def record(label, train=None):
        curves["iteration"].append(label)
        curves["clip"].append(b.evaluation_scores().tolist())
        curves["color"].append(b.color_fractions(asked).tolist())
        curves["train"].append(None if train is None else train.tolist())

    record(None)
    for i in range(s.iterations):
        train = b.step()
        if i % args.eval_every == 0 or i == s.iterations - 1:
            record(i, train)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    log(f"  {field:9s} {len(runs):4d} runs x {s.iterations} iterations: {seconds:.1f} s "
        f"({1000 * seconds / max(1, s.iterations):.1f} ms per batched iteration)")
    return curves, seconds


def summarize(records, threshold, cap):
    """Per (set, field): final means, ITS; and the paired TDAM - Text2Mesh differences."""
    def mean_sd(values):
        values = [v for v in values if v is not None]
        if not values:
            return float("nan"), float("nan")
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    table = {}
    for rec in records:
        key = (rec["set"], rec["field"])
        table.setdefault(key, []).append(rec)
    rows = {}
    for (set_name, field), recs in table.items():
        final_clip = [r["clip"][-1][1] for r in recs]
        final_color = [r["color"][-1][1] for r in recs]
        its_clip = [first_reaching(r["clip"][1:], threshold, cap) for r in recs]
        its_half = [first_reaching(r["color"][1:], 0.5 - 1e-9, cap) for r in recs]
        its_most = [first_reaching(r["color"][1:], 0.9 - 1e-9, cap) for r in recs]
        rows[(set_name, field)] = {
            "runs": len(recs), "final_clip": mean_sd(final_clip), "final_color": mean_sd(final_color),
            "its_clip": mean_sd(its_clip), "its_clip_reached": sum(i < cap for i in its_clip) / len(recs),
            "its_color_half": mean_sd(its_half), "its_color_half_reached": sum(i < cap for i in its_half) / len(recs),
            "its_color_most": mean_sd(its_most), "its_color_most_reached": sum(i < cap for i in its_most) / len(recs),
        }
    paired = {}
    by_key = {(r["set"], r["field"], r["mesh"], r["prompt"], r["seed"]): r for r in records}
    for set_name in sorted({r["set"] for r in records}):
        diffs = {"final_color": [], "final_clip": [], "its_color_half": [], "auc_color": []}
        for (s_, f_, mesh, prompt, seed), rec in by_key.items():
            if s_ != set_name or f_ != "xmesh" or (s_, "text2mesh", mesh, prompt, seed) not in by_key:
                continue
            other = by_key[(s_, "text2mesh", mesh, prompt, seed)]
            diffs["final_color"].append(rec["color"][-1][1] - other["color"][-1][1])
            diffs["final_clip"].append(rec["clip"][-1][1] - other["clip"][-1][1])
            diffs["its_color_half"].append(first_reaching(rec["color"][1:], 0.5 - 1e-9, cap)
                                           - first_reaching(other["color"][1:], 0.5 - 1e-9, cap))
            diffs["auc_color"].append(statistics.fmean(v for _, v in rec["color"][1:])
                                      - statistics.fmean(v for _, v in other["color"][1:]))
        paired[set_name] = {}
        for k, d in diffs.items():
            if not d:
                continue
            m, sd = mean_sd(d)
            half = 1.96 * sd / math.sqrt(len(d)) if len(d) > 1 else float("nan")
            paired[set_name][k] = {"pairs": len(d), "mean": m, "ci95": (m - half, m + half),
                                   "xmesh_better": sum(x > 0 for x in d) / len(d) if k != "its_color_half"
                                   else sum(x < 0 for x in d) / len(d)}
    return rows, paired


def fmt(ms, digits=3):
    m, sd = ms
    return "-" if math.isnan(m) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def markdown(args, rows, paired, threshold, calib_stats, timings, hardware, skipped, total_s, n_runs, colours, n_seeds):
    cap = args.iterations
    lines = [f"### X-Mesh convergence: TDAM vs the Text2Mesh field on ground truth ({datetime.date.today().isoformat()})",
             "", f"- hardware: {hardware}",
             f"- command: `python {' '.join(sys.argv)}`",
             f"- {n_runs} runs: meshes x {len(colours)} colour prompts ({', '.join(colours)}) x {n_seeds} seeds x 2 fields; "
             f"{args.iterations} iterations at lr {args.lr} (x0.9 every 100), {args.views} views at "
             f"{args.resolution} px, 1 + 4 augmentations, geometry loss {'on' if args.geoloss else 'off'}, "
             f"background {args.background}; evaluations after updates 0, {args.eval_every}, ...",
             f"- ITS threshold for this CLIP: **{threshold:.4f}** = mean over the procedural meshes x prompts of "
             f"(untouched-mesh score + painted-mesh score) / 2 (untouched {calib_stats[0]:.4f}, painted "
             f"{calib_stats[1]:.4f}); runs that never reach it count as {cap}",
             f"- wall time {total_s:.0f} s ({', '.join(timings)})", ""]
    if skipped:
        lines += [f"- skipped: {'; '.join(skipped)}", ""]
    lines += ["| meshes | field | runs | final colour fraction | final CLIP eval score | ITS (CLIP, calibrated) | reached "
              "| ITS (colour >= 0.5) | reached | ITS (colour >= 0.9) | reached |",
              "|---|---|---:|---|---|---|---:|---|---:|---|---:|"]
    for (set_name, field), r in sorted(rows.items()):
        lines.append(f"| {set_name} | {FIELD_LABEL[field]} | {r['runs']} | {fmt(r['final_color'])} | {fmt(r['final_clip'])} | "
                     f"{fmt(r['its_clip'], 0)} | {100 * r['its_clip_reached']:.0f} % | {fmt(r['its_color_half'], 0)} | "
                     f"{100 * r['its_color_half_reached']:.0f} % | {fmt(r['its_color_most'], 0)} | "
                     f"{100 * r['its_color_most_reached']:.0f} % |")
    lines += ["", "Paired differences, X-Mesh minus Text2Mesh (same mesh, prompt and seed; mean and 95 % interval; "
              "share of pairs where X-Mesh is better):", "", "| meshes | measure | pairs | mean difference | 95 % interval | X-Mesh better |",
              "|---|---|---:|---:|---|---:|"]
    names = {"final_color": "final colour fraction", "final_clip": "final CLIP eval score",
             "its_color_half": "ITS (colour >= 0.5), iterations", "auc_color": "mean colour fraction over the run"}
    for set_name, d in paired.items():
        for k, v in d.items():
            lines.append(f"| {set_name} | {names[k]} | {v['pairs']} | {v['mean']:+.3f} | "
                         f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] | {100 * v['xmesh_better']:.0f} % |")
    lines += ["", "![score against iteration](xmesh_claim.png)", ""]
    return "\n".join(lines)


def plot(path, records, threshold, iterations):
    """Two columns (colour fraction, CLIP eval score) per mesh set; mean line and interquartile band."""
    from PIL import Image, ImageDraw

    sets = sorted({r["set"] for r in records}, key=lambda s: s != "procedural")
    colours = {"xmesh": (214, 39, 40), "text2mesh": (31, 119, 180)}
    panel_w, panel_h, margin = 460, 260, 56
    img = Image.new("RGB", (2 * panel_w + 3 * margin, len(sets) * (panel_h + margin + 20) + margin + 30), "white")
    draw = ImageDraw.Draw(img)
    for row, set_name in enumerate(sets):
        for col, (metric, title) in enumerate((("color", "ground-truth colour fraction"), ("clip", "CLIP eval score"))):
            x0 = margin + col * (panel_w + margin)
            y0 = margin + row * (panel_h + margin + 20)
            recs = [r for r in records if r["set"] == set_name]
            values = [v for r in recs for _, v in r[metric]] + ([threshold] if metric == "clip" else [])
            lo, hi = (0.0, 1.0) if metric == "color" else (min(values), max(values))
            if hi - lo < 1e-6:
                hi = lo + 1.0
            sx = lambda it: x0 + panel_w * ((-1 if it is None else it) + 1) / (iterations + 1)  # noqa: E731
            sy = lambda v: y0 + panel_h * (1 - (v - lo) / (hi - lo))  # noqa: E731
            draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], outline=(0, 0, 0))
            draw.text((x0, y0 - 16), f"{set_name}: {title}", fill=(0, 0, 0))
            for k in range(5):
                v = lo + (hi - lo) * k / 4
                draw.line([x0 - 4, sy(v), x0, sy(v)], fill=(0, 0, 0))
                draw.text((x0 - 48, sy(v) - 6), f"{v:.2f}", fill=(0, 0, 0))
            for it in [None, *range(0, iterations + 1, max(1, iterations // 5))]:
                draw.line([sx(it), y0 + panel_h, sx(it), y0 + panel_h + 4], fill=(0, 0, 0))
                draw.text((sx(it) - 8, y0 + panel_h + 6), "init" if it is None else str(it), fill=(0, 0, 0))
            if metric == "clip":
                draw.line([x0, sy(threshold), x0 + panel_w, sy(threshold)], fill=(120, 120, 120))
                draw.text((x0 + 4, sy(threshold) - 14), "ITS threshold", fill=(120, 120, 120))
            for field in FIELDS:
                mine = [r[metric] for r in recs if r["field"] == field]
                if not mine:
                    continue
                its = [it for it, _ in mine[0]]
                q = []
                for k in range(len(its)):
                    vals = sorted(c[k][1] for c in mine)
                    q.append((vals[len(vals) // 4], vals[(3 * len(vals)) // 4]))
                band = [(sx(it), sy(a)) for it, (a, _) in zip(its, q)] + [(sx(it), sy(b)) for it, (_, b) in
                                                                           reversed(list(zip(its, q)))]
                layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
                ImageDraw.Draw(layer).polygon(band, fill=(*colours[field], 60))
                img.paste(Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB"))
                draw = ImageDraw.Draw(img)
            for field in FIELDS:
                mine = [r[metric] for r in recs if r["field"] == field]
                if mine:
                    its = [it for it, _ in mine[0]]
                    means = [statistics.fmean(c[k][1] for c in mine) for k in range(len(its))]
                    draw.line([(sx(it), sy(m)) for it, m in zip(its, means)], fill=colours[field], width=3)
    ly = img.height - 26
    for k, field in enumerate(FIELDS):
        draw.rectangle([margin + 260 * k, ly, margin + 260 * k + 24, ly + 10], fill=colours[field])
        draw.text((margin + 260 * k + 30, ly - 1), f"{FIELD_LABEL[field]} (mean, interquartile band)", fill=(0, 0, 0))
    draw.text((img.width - 300, ly - 1), "x: iteration (the value after that update)", fill=(0, 0, 0))
    img.save(path)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from attncraft.mesh.clip_guidance import ClipGuide, load_clip
    from attncraft.mesh.renderer import TorchRenderer
    from attncraft.mesh.stylize import StylizeSettings

    t_start = time.perf_counter()
    device = torch.device(args.device)
    args.device_type = device.type
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    model, tok, label = load_clip(args.clip if not args.smoke or args.clip != "default" else "random:test", device)
    guide = ClipGuide(model, tok, label, autocast_dtype=torch.bfloat16 if device.type == "cuda" else None)
    log(f"clip: {label}")
    background = tuple(float(v) for v in args.background.split(","))
    if args.smoke:
        args.views, args.resolution = 2, 32
    settings = StylizeSettings(iterations=args.iterations, learning_rate=args.lr, views=args.views,
                               resolution=args.resolution, geoloss=args.geoloss, background=background, seed=23,
                               **({"width": 32} if args.smoke else {}))
    meshes, skipped = build_meshes(args)
    colours = COLORS[:2] if args.smoke else COLORS[: args.prompts]
    seeds = list(range(1 if args.smoke else args.seeds))
    prompts_per_mesh = [[(f"a {c} {noun}", c) for c in colours] for (_, _, noun, _) in meshes]
    renderer = TorchRenderer()
    calib = calibrate(meshes, prompts_per_mesh, guide, renderer, settings, device)
    proc = [v for (m, _), v in calib.items() if meshes[m][0] == "procedural"]
    calib_stats = (statistics.fmean(a for a, _ in proc), statistics.fmean(b for _, b in proc))
    threshold = statistics.fmean((a + b) / 2 for a, b in proc)
    log(f"ITS threshold {threshold:.4f} (untouched {calib_stats[0]:.4f}, painted {calib_stats[1]:.4f})")
    records, timings = [], []
    budget_s = 60 * args.budget_minutes
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    else:
        hardware = f"CPU {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"

    def write_outputs(final):
        """claim.md / claim.json / xmesh_claim.png from the groups done so far (rewritten after each group,
        so a run stopped from outside still leaves every finished curve)."""
        rows, paired = summarize(records, threshold, args.iterations)
        total_s = time.perf_counter() - t_start
        notes = skipped + ([] if final else ["run stopped before the end: the groups after the last one listed are missing"])
        md = markdown(args, rows, paired, threshold, calib_stats, timings, hardware, notes, total_s, len(records),
                      colours, len(seeds))
        payload = {"settings": {**settings.to_dict(), "eval_every": args.eval_every}, "clip": label,
                   "threshold": threshold, "calibration_means": calib_stats,
                   "rows": {f"{k[0]}|{k[1]}": v for k, v in rows.items()}, "paired": paired, "skipped": notes,
                   "complete": final, "seconds": total_s, "records": records}
        for name, text in (("claim.md", md), ("claim.json", json.dumps(payload))):
            tmp = out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(out / name)
        tmp = out / ".xmesh_claim.tmp.png"
        plot(tmp, records, threshold, args.iterations)
        tmp.replace(out / "xmesh_claim.png")
        return md

    over_budget: set[int] = set()  # topologies (by their run list) whose pair was not started
    for field, runs in group_runs(meshes, prompts_per_mesh, seeds):
        set_name = meshes[runs[0][0]][0]
        if set_name == "MIT-30" and (id(runs) in over_budget or
                                     (field == FIELDS[0] and time.perf_counter() - t_start > budget_s)):
            over_budget.add(id(runs))
            skipped.append(f"{meshes[runs[0][0]][1]} ({field}): time budget of {args.budget_minutes} min reached")
            continue
        names = sorted({meshes[m][1] for m, *_ in runs})
        log(f"{set_name}: {', '.join(names)}")
        curves, seconds = run_group(field, runs, meshes, guide, renderer, settings, args, device, log)
        timings.append(f"{field} on {len(names)} {set_name} mesh{'es' if len(names) > 1 else ''}: {seconds:.0f} s")
        for k, (m, prompt, colour, seed) in enumerate(runs):
            records.append({"set": set_name, "mesh": meshes[m][1], "prompt": prompt, "asked_color": colour, "seed": seed,
                            "field": field, "vertices": meshes[m][3].num_vertices,
                            "calibration": calib[(m, prompt)],
                            "clip": [[it, c[k]] for it, c in zip(curves["iteration"], curves["clip"])],
                            "color": [[it, c[k]] for it, c in zip(curves["iteration"], curves["color"])],
                            "train": [[it, c[k]] for it, c in zip(curves["iteration"], curves["train"]) if c is not None]})
        write_outputs(final=False)
    print(write_outputs(final=True))

if __name__ == "__main__":
    main()
