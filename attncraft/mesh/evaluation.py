"""Deterministic scoring of a stylised mesh: fixed views, no augmentation, and the reference's PNG path.

The training score X-Mesh logs (-L1) is the cosine of one *randomly* augmented batch of views (a
perspective warp with probability 0.8, random views): it says as much about the last random draw as
about the mesh. :func:`fixed_view_score` is the score to read instead: the 24 MES views (azimuth 0..315
deg x elevation -30/0/+30 deg, fovy 45 deg, r 2.5), rendered without augmentation on the run's
background at the run's resolution, each scored by its cosine with the prompt (both L2-normalised),
averaged over the views: the same for the same mesh, whatever the seed of the draw.

:func:`reference_png_path` reproduces how the reference's MES sees a render: ``generate_multiviews.py``
saves each view with ``transforms.ToPILImage()``, which converts a float image with
``mul(255).byte()`` (truncation, not rounding), and ``test_MSE.py`` reads the PNGs through open_clip's
``preprocess``: PIL bicubic resize of the shorter side to the CLIP's input size, centre crop, to
tensor. (The ITS curve of the reference skips both steps; it feeds the float renders directly.)
"""

from __future__ import annotations

import numpy as np
import torch

from attncraft.mesh.camera import EVAL_FOVY, EVAL_RADIUS, mes_views


def truncate_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 by ``mul(255).byte()`` (truncation), as ``ToPILImage`` does."""
    return (images.clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def reference_png_path(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) float renders -> (N, 3, size, size) float in [0, 1] as the reference's MES reads them:
    8-bit truncation, then PIL bicubic resize of the shorter side to ``size`` and a centre crop."""
    from PIL import Image

    out = []
    for img in truncate_to_uint8(images.detach().cpu()).numpy():
        pil = Image.fromarray(img)
        w, h = pil.size
        if min(w, h) != size:
            scale = size / min(w, h)
            pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
        w, h = pil.size
        left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
        pil = pil.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    return torch.stack(out).permute(0, 3, 1, 2)


@torch.no_grad()
def fixed_view_images(renderer, vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None,
                      resolution: int, background=(1.0, 1.0, 1.0), batch: int = 24) -> torch.Tensor:
    """The 24 MES views of a mesh, (24, 3, R, R) in [0, 1], on the device of ``vertices``."""
    from attncraft.mesh.camera import make_cameras

    elev, azim = mes_views()
    cams = make_cameras(elev, azim, EVAL_RADIUS, EVAL_FOVY, device=vertices.device)
    out = []
    for start in range(0, len(cams), batch):
        sub = type(cams)(cams.world_to_cam[start:start + batch], cams.fovy, cams.aspect)
        out.append(renderer.render(vertices, faces, colors, sub, resolution, background=background).image)
    return torch.cat(out).permute(0, 3, 1, 2)


@torch.no_grad()
def fixed_view_score(guide, renderer, vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor | None,
                     text: torch.Tensor, resolution: int, background=(1.0, 1.0, 1.0)) -> float:
    """Mean cosine of the 24 fixed views with ``text`` (see the module docstring)."""
    images = fixed_view_images(renderer, vertices, faces, colors, resolution, background)
    return float(guide.view_scores(images, text).mean())
