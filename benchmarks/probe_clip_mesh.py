"""Where a Shapes CLIP misreads painted meshes: confusion matrices of shape and pattern, and accuracy
per mesh variant and per shape, on the held-out meshes of the zero-shot evaluation.

The evaluation (``python -m attncraft.shapes.training evaluate --what clip``) gives one accuracy per
attribute; this diagnostic says which classes the misses go to. It uses the same held-out meshes
(seed 0, one colour, plain or patterned), the same 192 prompts ``"a {pattern} {colour} {shape}"`` and
the same per-attribute argmax of marginalised logits, in the evaluation's first condition (random
views, distance, lighting and backgrounds) or X-Mesh's guidance views (``--condition xmesh``).

Usage (CPU, about a minute): ``python benchmarks/probe_clip_mesh.py --clip assets/models/shapes-clip``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from attncraft.shapes.training.evaluate import CLIP_SEED


def confusion(truth: torch.Tensor, pred: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, n)`` counts: row = true class, column = predicted class."""
    return torch.bincount(truth * n + pred, minlength=n * n).view(n, n)


def table(title: str, names, counts: torch.Tensor) -> list[str]:
    lines = [f"{title} (rows: truth, columns: reading; share of the row)", "",
             "| truth \\ read | " + " | ".join(names) + " | n | right |", "|---" * (len(names) + 3) + "|"]
    for i, name in enumerate(names):
        row = counts[i]
        total = int(row.sum())
        cells = [f"{100 * int(c) / total:.0f} %" if total else "-" for c in row]
        right = f"{100 * int(row[i]) / total:.1f} %" if total else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total} | {right} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    from attncraft.shapes.mesh_world import MESH_SHAPES, VARIANTS
    from attncraft.shapes.models import load_shapes_clip
    from attncraft.shapes.training.evaluate import (
        embed_mesh_renders,
        mesh_eval_conditions,
        mesh_prompt_features,
        read_mesh_attributes,
    )
    from attncraft.shapes.world import PATTERNS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", default="assets/models/shapes-clip", help="a Shapes CLIP folder")
    p.add_argument("--meshes", type=int, default=1000)
    p.add_argument("--condition", choices=["render", "xmesh"], default="render")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if not (Path(args.clip) / "config.json").is_file():
        p.error(f"--clip {args.clip}: no CLIP folder there (no config.json); pass a Shapes CLIP folder")
    device = torch.device(args.device)

    model = load_shapes_clip(args.clip, torch_dtype=torch.float32).to(device).eval()
    _, scenes, style = mesh_eval_conditions(args.meshes)[args.condition]
    with torch.no_grad():
        txt, dims = mesh_prompt_features(model, device)
        img = embed_mesh_renders(model, scenes, style, torch.Generator().manual_seed(CLIP_SEED), device)
        pred, truth = read_mesh_attributes(model, img, txt, dims, scenes, device)
    read_shape, read_pattern = pred["shape"].cpu(), pred["pattern"].cpu()
    shape, pattern = truth["shape"].cpu(), truth["pattern"].cpu()
    variant = [s.variant for s in scenes]

    out = [f"### Painted meshes as read by a Shapes CLIP ({args.clip}, {args.condition} condition, "
           f"{len(scenes)} held-out meshes)", "",
           f"Command: `python benchmarks/probe_clip_mesh.py {' '.join(sys.argv[1:] if argv is None else argv)}`", ""]
    out += table("Shape", MESH_SHAPES, confusion(shape, read_shape, len(MESH_SHAPES)))
    out += table("Pattern", PATTERNS, confusion(pattern, read_pattern, len(PATTERNS)))
    out += ["Accuracy per mesh variant", "", "| variant | n | shape | pattern |", "|---|---|---|---|"]
    for v in VARIANTS:
        idx = torch.tensor([i for i, x in enumerate(variant) if x == v], dtype=torch.long)
        if len(idx):
            out.append(f"| {v} | {len(idx)} | {100 * float((read_shape[idx] == shape[idx]).float().mean()):.1f} % | "
                       f"{100 * float((read_pattern[idx] == pattern[idx]).float().mean()):.1f} % |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
