"""Procedural meshes: consistent outward winding, one face array per topology, painting, batched renders,
and the batched augmentation sampler against the per-run one."""

from __future__ import annotations

import torch

from attncraft.mesh.procedural import (CLOSED_SHAPES, RenderStyle, grid, painted_colors, procedural_mesh,
                                       render_mesh_scenes, vertex_normals, _base_cpu)
from attncraft.shapes.mesh_world import MeshScene


def test_every_shape_winds_outward_and_closed_shapes_share_faces():
    for shape in (*CLOSED_SHAPES, "torus"):
        closed = shape != "torus"
        g = grid(24, 14 if closed else 10, closed)
        pos, _ = _base_cpu(shape, g.n_u, g.n_v)
        normals = vertex_normals(pos[None], g.faces)[0]
        inside = torch.nn.functional.normalize(pos * torch.tensor([1.0, 0.0, 1.0]), dim=-1) if not closed else 0.0
        assert ((normals * (pos - inside)).sum(-1) > 0).all(), shape
    meshes = [procedural_mesh(s, grid_size=(24, 14)) for s in CLOSED_SHAPES]
    assert all((m.faces == meshes[0].faces).all() for m in meshes)


def test_painting_and_batched_renders():
    mesh = procedural_mesh("sphere", grid_size=(24, 14))
    red = painted_colors(MeshScene("sphere", "red"), mesh.vertices, grid_size=(24, 14))
    assert torch.allclose(torch.tensor(red), torch.tensor([0.90, 0.08, 0.08]).expand(len(red), 3))
    split = painted_colors(MeshScene("sphere", "red", bottom="blue", seed=5), mesh.vertices, grid_size=(24, 14))
    top = mesh.vertices[:, 1] > 0.5
    assert (split[top] == red[top]).all() and (split[mesh.vertices[:, 1] < -0.5][:, 2] > 0.9).all()
    scenes = [MeshScene("torus", "green", seed=1), MeshScene("cube", "blue", "striped", seed=2, background="gray")]
    images = render_mesh_scenes(scenes, style=RenderStyle("xmesh", 32), grid_size=(24, 14))
    assert images.shape == (2, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, render_mesh_scenes(scenes, style=RenderStyle("xmesh", 32), grid_size=(24, 14)))
    corner = images[:, :, 0, 0]  # background: white (jittered darker) and the world's gray
    assert corner[0].min() > 0.85 and (corner[1] - 0.40).abs().max() < 0.12


def test_batched_augmentation_grids_match_the_per_run_path():
    from attncraft.mesh.augment import grids_from_params, sample_crops, sample_homographies
    from attncraft.mesh.clip_guidance import AugmentPlan, augmentation_grids, perspective_coeffs, sample_perspective

    gen = torch.Generator().manual_seed(0)
    assert (sample_crops(500, 64, 64, (1.0, 1.0), gen) == torch.tensor([0.0, 0.0, 64.0, 64.0])).all()
    crops = sample_crops(2000, 64, 64, (0.4, 0.4), gen)
    assert ((crops[:, 2] * crops[:, 3] / 64**2 - 0.4).abs() < 0.05).all()
    assert (crops[:, 0] + crops[:, 2] <= 64).all() and (crops[:, 1] + crops[:, 3] <= 64).all()
    assert (sample_homographies(4, 32, 0.5, 0.0, gen) == torch.eye(3, dtype=torch.float64)).all()
    # the same parameters give the same grid as clip_guidance.augmentation_grids
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    grids, valid = augmentation_grids(AugmentPlan.xmesh(1, 0, 0, norm_scale=0.4, geoloss=False), (48, 48), 32, g1,
                                      perspective_p=1.0)
    from attncraft.mesh.clip_guidance import sample_resized_crop

    top, left, h, w = sample_resized_crop(48, 48, (1.0, 1.0), g2)
    torch.rand(1, generator=g2)
    start, end = sample_perspective(32, 0.5, g2)
    hom = torch.cat([perspective_coeffs(end, start), torch.ones(1, dtype=torch.float64)]).view(1, 3, 3)
    mine, mine_valid = grids_from_params(torch.tensor([[top, left, h, w]], dtype=torch.float64), hom, (48, 48), 32)
    assert torch.allclose(mine, grids, atol=1e-5) and torch.equal(mine_valid, valid)
