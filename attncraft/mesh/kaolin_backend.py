"""The kaolin backend: X-Mesh's original rasteriser (kaolin ``dibr_rasterization``), when available.

Used only when a *real* kaolin is importable (see :func:`attncraft.mesh.renderer.kaolin_status`;
PyPI's ``kaolin`` is an empty placeholder) and the device is CUDA. It calls kaolin's
``prepare_vertices`` and ``dibr_rasterization`` exactly as the reference's ``render.py`` does
(features = per-face-vertex colours; the soft mask is ignored) and then applies the same SH lighting
and background compositing as the torch backend, so the two agree wherever the rasterisers agree.
Coordinates, cameras and image orientation follow kaolin, which the torch backend reproduces.
"""

from __future__ import annotations

import math

import torch

from attncraft.mesh.camera import Cameras
from attncraft.mesh.renderer import MeshRenderer, RenderOutput, sh_lighting


class KaolinRenderer(MeshRenderer):
    name = "kaolin"

    def __init__(self):
        import kaolin  # type: ignore[import-not-found]

        self.kal = kaolin

    def render(self, vertices, faces, colors, cameras: Cameras, height, width=None, background=(1.0, 1.0, 1.0),
               lighting=True) -> RenderOutput:
        kal = self.kal
        width = width or height
        batch = len(cameras)
        faces = faces.to(device=vertices.device, dtype=torch.long)
        verts = vertices if vertices.dim() == 3 else vertices.unsqueeze(0).expand(batch, -1, -1)
        focal = 1.0 / math.tan(cameras.fovy / 2.0)
        proj = torch.tensor([[focal / cameras.aspect], [focal], [-1.0]], device=verts.device, dtype=verts.dtype)
        transform = cameras.world_to_cam.to(device=verts.device, dtype=verts.dtype)
        fv_cam, fv_img, normals = kal.render.mesh.prepare_vertices(verts, faces, proj, camera_transform=transform)
        if colors is None:
            colors = torch.full_like(verts, 0.5)
        elif colors.dim() == 2:
            colors = colors.unsqueeze(0).expand(batch, -1, -1)
        feats = torch.cat([colors, torch.ones_like(colors[..., :1])], dim=-1)
        face_feats = feats[:, faces]  # (B, F, 3, 4)
        image, _soft_mask, face_idx = kal.render.mesh.dibr_rasterization(
            height, width, fv_cam[:, :, :, -1], fv_img, face_feats, normals[:, :, -1])
        mask = image[..., 3] > 0.5
        col = image[..., :3].clamp(0.0, 1.0)
        if lighting:
            idx = face_idx.clamp(min=0).long()
            img_normals = torch.gather(normals, 1, idx.view(batch, -1, 1).expand(-1, -1, 3)).view(batch, height, width, 3)
            col = (col * sh_lighting(img_normals)[..., None]).clamp(0.0, 1.0)
        if background is not None:
            bg = torch.as_tensor(background, device=col.device, dtype=col.dtype)
            col = torch.where(mask[..., None], col, bg.expand_as(col))
        face_idx = torch.where(mask, face_idx.long(), torch.full_like(face_idx.long(), -1))
        return RenderOutput(col, mask, face_idx)
