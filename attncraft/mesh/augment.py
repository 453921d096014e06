"""Batched random crops and perspective warps: the X-Mesh augmentations for many images at once.

:mod:`attncraft.mesh.clip_guidance` draws the augmentation parameters of one run the way
torchvision does, scalar by scalar from the run's generator, which costs a few hundred microseconds
of Python per augmentation: nothing next to one run's CLIP pass, but the whole iteration when
hundreds of runs (:mod:`attncraft.mesh.multirun`) or thousands of training images
(:mod:`attncraft.shapes.training.mesh_data`) are augmented together. Here the same distributions
are drawn as tensors:

* ``RandomResizedCrop(scale=(s_lo, s_hi), ratio=(3/4, 4/3))``: ten tries per image (area uniform in
  the scale range, log-uniform aspect), the first that fits is taken, else torchvision's centre-crop
  fallback; the offsets are uniform integers, as in torchvision;
* ``RandomPerspective(distortion_scale, p)``: the four corners are uniform integers within
  ``distortion * size / 2`` of the image corners (torchvision's bounds) and the homography from the
  end points to the start points is solved for all images in one batched ``linalg.solve``;
* both are composed into one sampling grid per image (:func:`grids_from_params`), exactly as
  :func:`attncraft.mesh.clip_guidance.augmentation_grids` composes them, so the two paths warp an
  image identically for the same parameters (a test checks it).

Pixels the perspective maps outside the crop take a per-image fill colour (the render's background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def sample_crops(n: int, height: int, width: int, scale: tuple[float, float], generator: torch.Generator | None = None,
                 tries: int = 10) -> torch.Tensor:
    """(n, 4) float64 crops ``(top, left, h, w)`` with torchvision's RandomResizedCrop distribution."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=generator, dtype=torch.float64))
    aspect = torch.exp(LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * torch.rand(n, tries, generator=generator,
                                                                                   dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0)[:, None]
    w = torch.where(first >= 0, w.gather(1, pick)[:, 0], torch.full((n,), float(width), dtype=torch.float64))
    h = torch.where(first >= 0, h.gather(1, pick)[:, 0], torch.full((n,), float(height), dtype=torch.float64))
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    return torch.stack([top, left, h, w], dim=1)


def sample_homographies(n: int, size: int, distortion: float, p: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) float64 output->input homographies of RandomPerspective (identity where not drawn)."""
    half = size // 2
    bound = int(distortion * half) + 1
    r = torch.floor(torch.rand(n, 8, generator=generator, dtype=torch.float64) * bound)
    lo, hi = r, (size - bound) + r  # randint(0, bound) and randint(size - bound, size)
    end = torch.stack([torch.stack([lo[:, 0], lo[:, 1]], 1), torch.stack([hi[:, 2], lo[:, 3]], 1),
                       torch.stack([hi[:, 4], hi[:, 5]], 1), torch.stack([lo[:, 6], hi[:, 7]], 1)], dim=1)  # (n, 4, 2)
    start = torch.tensor([[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]], dtype=torch.float64)
    hom = solve_homographies(end, start.expand(n, 4, 2))
    drawn = torch.rand(n, generator=generator, dtype=torch.float64) < p
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    return torch.where(drawn[:, None, None], hom, eye)


def solve_homographies(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) homographies mapping ``src`` (n, 4, 2) onto ``dst`` (n, 4, 2), last entry 1."""
    n = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=-1)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=-1)
    a = torch.stack([rows_u, rows_v], dim=2).reshape(n, 8, 8)
    b = torch.stack([u, v], dim=2).reshape(n, 8)
    coeffs = torch.linalg.solve(a, b)
    return torch.cat([coeffs, torch.ones(n, 1, dtype=coeffs.dtype)], dim=1).view(n, 3, 3)


def grids_from_params(crops: torch.Tensor, homographies: torch.Tensor, in_size: tuple[int, int], out_size: int,
                      device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grids (n, S, S, 2) and validity masks (n, S, S) for crops (n, 4) + homographies (n, 3, 3).

    The composition of :func:`attncraft.mesh.clip_guidance.augmentation_grids`: for each output pixel
    centre the homography gives a point of the resized crop, which maps linearly into the image.
    """
    height, width = in_size
    hom = homographies.to(device=device, dtype=torch.float32)
    top, left, h, w = (crops.to(device=device, dtype=torch.float32)[:, k] for k in range(4))
    centres = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5
    xx, yy = centres.view(1, 1, -1), centres.view(1, -1, 1)
    h_ = hom.view(-1, 9, 1, 1)
    den = h_[:, 6] * xx + h_[:, 7] * yy + h_[:, 8]
    xr = (h_[:, 0] * xx + h_[:, 1] * yy + h_[:, 2]) / den
    yr = (h_[:, 3] * xx + h_[:, 4] * yy + h_[:, 5]) / den
    valid = (xr >= 0) & (xr <= out_size) & (yr >= 0) & (yr <= out_size)
    x_img = left.view(-1, 1, 1) + xr * (w / out_size).view(-1, 1, 1)
    y_img = top.view(-1, 1, 1) + yr * (h / out_size).view(-1, 1, 1)
    return torch.stack([2.0 * x_img / width - 1.0, 2.0 * y_img / height - 1.0], dim=-1), valid


def warp(images: torch.Tensor, grids: torch.Tensor, valid: torch.Tensor, fill: torch.Tensor | float) -> torch.Tensor:
    """Resample ``images`` (n, C, H, W) on ``grids``; invalid samples take ``fill`` ((n, C), (C,) or scalar).

    As in :func:`attncraft.mesh.clip_guidance.apply_augmentations`: invalid samples are sent far outside
    the image, where zero padding of ``image - fill`` gives exactly ``fill`` once it is added back.
    """
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill_t.dim() == 1:
        fill_t = fill_t.view(1, -1, 1, 1)
    elif fill_t.dim() == 2:
        fill_t = fill_t[:, :, None, None]
    grids = torch.where(valid[..., None], grids, torch.full_like(grids, 4.0)).to(images.dtype)
    out = F.grid_sample(images - fill_t, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill_t
