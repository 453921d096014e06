"""Batched runs take the same steps as single runs when the randomness is switched off."""

from __future__ import annotations

import pytest
import torch

from attncraft.mesh.multirun import BatchedXMesh
from attncraft.mesh.renderer import TorchRenderer
from attncraft.mesh.stylize import StylizeSettings, XMeshOptimization


@pytest.mark.parametrize("field", ["xmesh", "text2mesh"])
def test_batched_runs_match_single_runs(test_guide, sphere_mesh, field):
    settings = StylizeSettings(views=2, resolution=32, width=32, n_normaugs=1, n_geoaugs=1, frontview_std=0.0,
                               perspective_p=0.0, norm_crop=1.0, geo_crop=1.0, learning_rate=1e-2, field=field,
                               background=(0.5, 0.4, 0.3))
    prompts, seeds = ["a red ball", "a blue cube"], [3, 4]
    batch = BatchedXMesh(sphere_mesh, prompts, seeds, test_guide, TorchRenderer(), settings)
    singles = [XMeshOptimization(sphere_mesh, p, test_guide, TorchRenderer(), StylizeSettings(**{**settings.to_dict(), "seed": s}))
               for p, s in zip(prompts, seeds)]
    for _ in range(2):
        scores = batch.step()
        assert scores.tolist() == pytest.approx([r.step() for r in singles], abs=1e-5)
    verts, colors = batch.styled()
    for k, run in enumerate(singles):
        styled = run.current()
        assert torch.allclose(colors[k], styled.colors, atol=1e-5) and torch.allclose(verts[k], styled.vertices, atol=1e-5)
    assert batch.evaluation_scores().tolist() == pytest.approx([r.evaluation_score() for r in singles], abs=1e-5)
