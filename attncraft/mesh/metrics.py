"""Ground-truth metrics of a stylisation whose prompt is in the Shapes vocabulary.

No learned model is involved; the prompt is parsed (:func:`attncraft.shapes.mesh_world.parse_mesh_prompt`)
and the stylised mesh's exported **vertex colours** are compared with the palette:

* **colour fraction**: the mesh is rendered without lighting (its albedo: interpolated vertex
  colours) from the 24 MES views, and every covered pixel takes the nearest entry of the palette
  table (the 8 colours, their 8 pattern shades, the unpainted gray 0.5 and black), or "other" when
  none is within :data:`COLOR_THRESHOLD` (the reader's). The colour fraction is the share of covered
  pixels, over all views, that are the asked colour: the fraction of the *visible* surface, weighted
  by how much of it the views see. 1.0 for a mesh painted in the palette colour, 0 for another colour;
  a pale or muddy tint of the colour (what a guide that does not read colour produces) is not it.
  For a patterned prompt the pattern's colour (the shade, or the second colour) counts too;
* **pattern** (when the prompt asks for one): the share of the asked colour's pixels that are in its
  pattern shade or the prompt's second colour (``two_tone``: 0 for a plain mesh, about one half for
  stripes or checks), and what the Shapes reader makes of turntable renders (8 azimuths, albedo on the
  world's gray background, 64 px, the mesh at a big world object's size, :data:`READER_DISTANCE`): the share of views whose largest object has the asked colour, and
  that object's mean pattern-shade fraction (``reader_pattern_fraction``; a plain object has 0).
  The reader's pattern *type* (stripes vs dots vs checks) is not used: it correlates with the 2-D
  world's patterns at the world's period, drawn flat, which a pattern on a curved surface at the
  mesh's own scale never matches (measured: painted procedural meshes read as "plain" in every view,
  while their colour and shade fraction are read right).

:func:`batched_color_fractions` does the colour fraction for many meshes of one topology at once
(the convergence benchmark, :mod:`attncraft.mesh.multirun`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attncraft.mesh.camera import EVAL_FOVY, EVAL_RADIUS, make_cameras, mes_views, turntable_views
from attncraft.mesh.renderer import TorchRenderer
from attncraft.shapes.mesh_world import UNPAINTED, UNPAINTED_RGB, ParsedMeshPrompt, parse_mesh_prompt
from attncraft.shapes.palette import COLOR_RGB, COLORS, SHADE_RGB

COLOR_THRESHOLD = 0.25
"""Largest RGB distance at which a pixel still counts as a table entry (the reader's threshold)."""
TABLE_NAMES: tuple[str, ...] = (*COLORS, *(f"{c} shade" for c in COLORS), UNPAINTED, "black")
TABLE_RGB = torch.tensor([*(COLOR_RGB[c] for c in COLORS), *(SHADE_RGB[c] for c in COLORS), UNPAINTED_RGB,
                          (0.0, 0.0, 0.0)])
OTHER = len(TABLE_NAMES)


def classify_colors(pixels: torch.Tensor) -> torch.Tensor:
    """Index into :data:`TABLE_NAMES` of the nearest entry of each RGB pixel (..., 3); :data:`OTHER` if none is near."""
    table = TABLE_RGB.to(device=pixels.device, dtype=pixels.dtype)
    dist = torch.cdist(pixels.reshape(-1, 3), table)
    best, idx = dist.min(dim=1)
    return torch.where(best <= COLOR_THRESHOLD, idx, torch.full_like(idx, OTHER)).view(pixels.shape[:-1])


def _albedo_cameras(device, elev=None, azim=None, radius=EVAL_RADIUS):
    if elev is None:
        elev, azim = mes_views()
    return make_cameras(elev, azim, radius, EVAL_FOVY, device=device)


@torch.no_grad()
def class_histograms(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor, resolution: int = 96,
                     renderer=None, views: int | None = None) -> torch.Tensor:
    """Covered-pixel counts per table entry over the 24 MES views (albedo), (B, len(TABLE_NAMES) + 1).

    ``vertices`` / ``colors`` are (V, 3) or (B, V, 3) (B meshes of one topology); ``views`` uses N of
    the 24 MES views, evenly spread over their list (so over elevations and azimuths).
    """
    renderer = renderer or TorchRenderer()
    if vertices.dim() == 2:
        vertices, colors = vertices[None], colors[None]
    cams = _albedo_cameras(vertices.device)
    if views is not None and views < len(cams):
        pick = torch.linspace(0, len(cams) - 1, views).round().long().to(cams.world_to_cam.device)
        cams = type(cams)(cams.world_to_cam[pick], cams.fovy, cams.aspect)
    k = len(cams)
    n = vertices.shape[0]
    counts = torch.zeros(n, OTHER + 1, device=vertices.device)
    per = max(1, (1024 if vertices.device.type == "cuda" else 96) // k)  # meshes per renderer call
    for b0 in range(0, n, per):
        b1 = min(n, b0 + per)
        m = b1 - b0
        wc = cams.world_to_cam.repeat(m, 1, 1)
        cam_b = type(cams)(wc, cams.fovy, cams.aspect)
        v = vertices[b0:b1].repeat_interleave(k, dim=0)
        c = colors[b0:b1].clamp(0, 1).repeat_interleave(k, dim=0)
        out = renderer.render(v, faces, c, cam_b, resolution, background=None, lighting=False)
        cls = classify_colors(out.image.float())
        cls = torch.where(out.mask, cls, torch.full_like(cls, OTHER + 1))  # background: dropped below
        one_hot = torch.nn.functional.one_hot(cls.view(m, -1), OTHER + 2)[..., : OTHER + 1].sum(1)
        counts[b0:b1] = one_hot.float()
    return counts


def color_fraction_from_counts(counts: torch.Tensor, color: str) -> torch.Tensor:
    """Share of covered pixels that are ``color`` (a palette colour or ``gray``), from :func:`class_histograms`."""
    total = counts.sum(-1).clamp(min=1)
    return counts[..., TABLE_NAMES.index(color)] / total


@torch.no_grad()
def batched_color_fractions(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor, asked: Sequence[str],
                            resolution: int = 64, renderer=None, views: int | None = 8) -> torch.Tensor:
    """Colour fraction of B meshes (B, V, 3) of one topology, each against its asked colour: (B,)."""
    counts = class_histograms(vertices, faces, colors, resolution, renderer, views)
    idx = torch.tensor([TABLE_NAMES.index(c) for c in asked], device=counts.device)
    return counts.gather(1, idx[:, None])[:, 0] / counts.sum(-1).clamp(min=1)


READER_DISTANCE = 3.5
"""Camera distance of the reader's turntable views, in units of the evaluation distance: the unit-sphere
mesh then spans about a quarter of the canvas, a big object of the 2-D world (the reader refuses a region
larger than any object of the world as background-like)."""


def _reader_views(vertices, faces, colors, parsed: ParsedMeshPrompt, frames: int = 8, size: int = 64) -> dict[str, float]:
    from attncraft.shapes.palette import BACKGROUND_RGB
    from attncraft.shapes.reader import read_image

    elev, azim = turntable_views(frames, 15.0)
    cams = _albedo_cameras(vertices.device, elev, azim, radius=EVAL_RADIUS * READER_DISTANCE)
    supersample = 4  # rendered at 4x and box-filtered, as the world draws its anti-aliased objects
    big = TorchRenderer().render(vertices, faces, colors.clamp(0, 1), cams, size * supersample,
                                 background=BACKGROUND_RGB["gray"], lighting=False).image
    images = torch.nn.functional.avg_pool2d(big.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1).cpu().numpy()
    hits, fractions = 0, []
    for img in images:
        objects = read_image(img).objects
        if not objects:
            continue
        biggest = max(objects, key=lambda o: o.area)
        if biggest.color == parsed.color:
            hits += 1
            fractions.append(biggest.pattern_fraction)
    return {"reader_color_views": hits / frames,
            "reader_pattern_fraction": float(np.mean(fractions)) if fractions else 0.0}


@torch.no_grad()
def mesh_metrics(vertices, faces, colors, prompt: str | ParsedMeshPrompt, resolution: int = 96,
                 reader: bool = True) -> dict[str, Any] | None:
    """Ground-truth metrics of one stylised mesh against ``prompt``; ``None`` when the prompt asks for no
    palette colour (see the module docstring for what each number means)."""
    parsed = parse_mesh_prompt(prompt) if isinstance(prompt, str) else prompt
    if parsed.color is None:
        return None
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    c = torch.as_tensor(np.asarray(colors), dtype=torch.float32)
    counts = class_histograms(v, f, c, resolution)[0]
    total = float(counts.sum().clamp(min=1))
    shares = {name: float(counts[i]) / total for i, name in enumerate(TABLE_NAMES) if counts[i] > 0}
    if counts[OTHER] > 0:
        shares["other"] = float(counts[OTHER]) / total
    out: dict[str, Any] = {"prompt_color": parsed.color, "color_fraction": shares.get(parsed.color, 0.0),
                           "colors": dict(sorted(shares.items(), key=lambda kv: -kv[1]))}
    if parsed.bottom is not None:
        out["bottom_color"] = parsed.bottom
        out["bottom_fraction"] = shares.get(parsed.bottom, 0.0)
    if parsed.pattern is not None and parsed.color != UNPAINTED:
        second = parsed.color2 or f"{parsed.color} shade"
        main, alt = shares.get(parsed.color, 0.0), shares.get(second, 0.0)
        out["pattern"] = parsed.pattern
        out["pattern_color"] = second
        out["color_fraction"] = main + alt
        out["two_tone"] = alt / (main + alt) if main + alt > 0 else 0.0
        if reader:
            out.update(_reader_views(v, f, c, parsed))
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    """One line for the CLI."""
    top = ", ".join(f"{k} {100 * v:.0f} %" for k, v in list(metrics["colors"].items())[:3])
    asked = metrics["prompt_color"] + (f" or {metrics['pattern_color']}" if "pattern_color" in metrics else "")
    text = (f"ground truth: {100 * metrics['color_fraction']:.1f} % of the visible surface is {asked} "
            f"(palette colours seen: {top})")
    if "bottom_fraction" in metrics:
        text += f"; {100 * metrics['bottom_fraction']:.1f} % is {metrics['bottom_color']}"
    if "pattern" in metrics:
        text += f"; {metrics['pattern']}: two-tone share {100 * metrics['two_tone']:.0f} %"
        if "reader_color_views" in metrics:
            text += (f"; the reader finds a {metrics['prompt_color']} object in {100 * metrics['reader_color_views']:.0f} % "
                     f"of 8 turntable views, {100 * metrics['reader_pattern_fraction']:.0f} % of it in the pattern colour")
    return text



def stylize_summary(result) -> list[str]:
    """What ``attncraft mesh stylize`` prints about a :class:`~attncraft.mesh.stylize.StylizeResult`."""
    iterations = len(result.score_history)
    lines = []
    if result.eval_score is not None:
        initial = "" if result.initial_eval_score is None else f" (untouched mesh {result.initial_eval_score:.4f})"
        lines.append(f"evaluation CLIP score {result.eval_score:.4f} after {iterations} iterations (24 fixed views, "
                     f"no augmentation){initial}")
    lines.append(f"training CLIP score {result.final_score:.4f} (the last iteration's random views and augmentations)"
                 f" ({result.seconds:.1f} s)")
    if result.ground_truth is not None:
        lines.append(format_metrics(result.ground_truth))
    return lines
