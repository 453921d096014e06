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
    from attncraft.mesh.procedural import RenderStyle, render_mesh_scenes
    from attncraft.shapes.mesh_world import MESH_SHAPES, VARIANTS, sample_mesh_scenes, zero_shot_mesh_prompts
    from attncraft.shapes.models import load_shapes_clip
    from attncraft.shapes.training.clip import clip_features
    from attncraft.shapes.training.data import to_unit, tokenize
    from attncraft.shapes.world import PATTERNS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", default="assets/models/shapes-clip", help="a Shapes CLIP folder")
    p.add_argument("--meshes", type=int, default=1000)
    p.add_argument("--condition", choices=["render", "xmesh"], default="render")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    model = load_shapes_clip(args.clip, torch_dtype=torch.float32).to(device).eval()
    prompts, dims = zero_shot_mesh_prompts()
    kw = dict(two_colour=False, splits=False, unpainted=False)
    if args.condition == "render":
        scenes, style = sample_mesh_scenes(args.meshes, CLIP_SEED, **kw), RenderStyle("render")
    else:
        scenes = sample_mesh_scenes(args.meshes, CLIP_SEED + 1, backgrounds=("white",), **kw)
        style = RenderStyle("xmesh")
    gen = torch.Generator().manual_seed(CLIP_SEED)
    with torch.no_grad():
        txt = clip_features(model, input_ids=torch.from_numpy(tokenize(prompts)).long().to(device))
        feats = []
        for i in range(0, len(scenes), 250):
            img = render_mesh_scenes(scenes[i:i + 250], device=device, style=style, generator=gen)
            feats.append(clip_features(model, pixel_values=to_unit((img * 255).round().to(torch.uint8))))
        logits = (model.logit_scale.float().exp() * torch.cat(feats) @ txt.t()).view(-1, *dims)
    read_shape = torch.logsumexp(logits, dim=(1, 2)).argmax(1).cpu()
    read_pattern = torch.logsumexp(logits, dim=(1, 3)).argmax(1).cpu()
    shape = torch.tensor([MESH_SHAPES.index(s.shape) for s in scenes])
    pattern = torch.tensor([PATTERNS.index(s.pattern) for s in scenes])
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
