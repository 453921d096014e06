"""Cameras with the conventions of the X-Mesh reference (kaolin v0.12 legacy cameras).

* Position on a sphere of radius ``r``: ``pos = r (cos e cos a, sin e, cos e sin a)`` for elevation
  ``e`` and azimuth ``a`` (``get_camera_from_view2``). View (0, 0) sits on +x.
* Look-at the origin with up (0, 1, 0): ``z = normalise(pos - target)``, ``x = up x z``,
  ``y = z x x``. (The reference passes ``look_at = -pos``, which gives the same ``z`` axis.)
* World points map to the camera frame as ``[p, 1] @ M`` with the 4x3 matrix ``M = [R; -pos R]``,
  ``R = [x y z]`` as columns; the camera looks along its own -z.
* Perspective: ``x_img = x_cam / tan(fovy/2) / aspect / (-z_cam)``, ``y_img = y_cam / tan(fovy/2) / (-z_cam)``,
  both in [-1, 1] over the image, +y up (row 0 is the top of the image).

Training uses fovy = 60 deg, r = 2, 224x224; MES evaluation uses fovy = 45 deg, r = 2.5 and 24 views
(8 azimuths x 3 elevations). View sampling for training (:func:`sample_front_views`) puts view 0 at
exactly (elev, azim) = centre and draws the others from N(centre, (pi/std)^2) in elevation and
N(centre, (2 pi/std)^2) in azimuth, as ``render_front_views`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TRAIN_FOVY = math.pi / 3
TRAIN_RADIUS = 2.0
EVAL_FOVY = math.pi / 4
EVAL_RADIUS = 2.5


@dataclass
class Cameras:
    """A batch of B cameras: ``world_to_cam`` (B, 4, 3), field of view, aspect and their angles."""

    world_to_cam: torch.Tensor
    fovy: float = TRAIN_FOVY
    aspect: float = 1.0
    elev: torch.Tensor | None = None
    azim: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.world_to_cam.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Cameras":
        return Cameras(self.world_to_cam.to(device=device, dtype=dtype or self.world_to_cam.dtype),
                       self.fovy, self.aspect, self.elev, self.azim)

    def cat(self, other: "Cameras") -> "Cameras":
        if (self.fovy, self.aspect) != (other.fovy, other.aspect):
            raise ValueError("cannot concatenate cameras with different projections")
        cat = (lambda a, b: None if a is None or b is None else torch.cat([a, b]))
        return Cameras(torch.cat([self.world_to_cam, other.world_to_cam]), self.fovy, self.aspect,
                       cat(self.elev, other.elev), cat(self.azim, other.azim))

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres in world space, (B, 3): from ``t = -pos R`` follows ``pos = -t R^T``."""
        rot, trans = self.world_to_cam[:, :3], self.world_to_cam[:, 3:]
        return -(trans @ rot.transpose(1, 2))[:, 0]


def camera_positions(elev: torch.Tensor, azim: torch.Tensor, radius: float = TRAIN_RADIUS) -> torch.Tensor:
    """(B,) elevations and azimuths in radians -> (B, 3) positions on the sphere of ``radius``."""
    return radius * torch.stack([torch.cos(elev) * torch.cos(azim), torch.sin(elev), torch.cos(elev) * torch.sin(azim)], -1)


def look_at_origin(positions: torch.Tensor) -> torch.Tensor:
    """(B, 3) camera positions -> (B, 4, 3) world-to-camera matrices looking at the origin, up +y."""
    z_axis = torch.nn.functional.normalize(positions, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device).expand_as(positions)
    x_axis = torch.nn.functional.normalize(torch.linalg.cross(up, z_axis, dim=-1), dim=-1)
    y_axis = torch.linalg.cross(z_axis, x_axis, dim=-1)
    rot = torch.stack([x_axis, y_axis, z_axis], dim=2)  # columns are the camera axes
    trans = -positions.unsqueeze(1) @ rot
    return torch.cat([rot, trans], dim=1)


def make_cameras(elev, azim, radius: float = TRAIN_RADIUS, fovy: float = TRAIN_FOVY, aspect: float = 1.0,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Cameras:
    """Cameras at the given elevations/azimuths (radians; sequences or tensors) looking at the origin."""
    elev_t = torch.as_tensor(elev, dtype=torch.float64).reshape(-1)
    azim_t = torch.as_tensor(azim, dtype=torch.float64).reshape(-1)
    # Computed in float64 then cast, so that view (0, 0) is bit-exact (camera at (r, 0, 0)).
    matrices = look_at_origin(camera_positions(elev_t, azim_t, radius))
    return Cameras(matrices.to(device=device, dtype=dtype), fovy, aspect, elev_t, azim_t)


def sample_front_views(num_views: int, std: float = 4.0, center: tuple[float, float] = (0.0, 0.0),
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training views (``--frontview --frontview_std 4``): view 0 at the centre, the rest Gaussian.

    Returns (elev, azim) in radians, shape (num_views,). ``std <= 0`` puts every view at the centre.
    """
    elev = torch.zeros(num_views, dtype=torch.float64)
    azim = torch.zeros(num_views, dtype=torch.float64)
    if std > 0 and num_views > 1:
        elev[1:] = torch.randn(num_views - 1, generator=generator, dtype=torch.float64) * (math.pi / std)
        azim[1:] = torch.randn(num_views - 1, generator=generator, dtype=torch.float64) * (2 * math.pi / std)
    return elev + center[0], azim + center[1]


def mes_views() -> tuple[torch.Tensor, torch.Tensor]:
    """The 24 evaluation views: azimuth 0, 45, ..., 315 deg x elevation -30, 0, +30 deg (radians)."""
    azims = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    elevs = torch.tensor([-math.pi / 6, 0.0, math.pi / 6], dtype=torch.float64)
    elev, azim = torch.meshgrid(elevs, azims, indexing="ij")
    return elev.reshape(-1), azim.reshape(-1)


def turntable_views(frames: int, elevation_deg: float = 15.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``frames`` azimuths over a full turn at a fixed elevation (for showcase videos)."""
    azim = torch.arange(frames, dtype=torch.float64) * (2 * math.pi / max(frames, 1))
    elev = torch.full_like(azim, math.radians(elevation_deg))
    return elev, azim
