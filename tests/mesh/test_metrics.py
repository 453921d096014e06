"""Ground-truth stylisation metrics from vertex colours, and the batched runs they score."""

from __future__ import annotations

import numpy as np
import torch

from attncraft.mesh.metrics import batched_color_fractions, mesh_metrics
from attncraft.mesh.procedural import painted_colors, procedural_mesh
from attncraft.shapes.mesh_world import MeshScene

GRID = (24, 14)


def test_colour_fraction_is_one_for_the_asked_colour_and_zero_for_another():
    mesh = procedural_mesh("torus", grid_size=GRID)
    red = painted_colors(MeshScene("torus", "red"), mesh.vertices, GRID)
    assert mesh_metrics(mesh.vertices, mesh.faces, red, "a red torus", resolution=48)["color_fraction"] == 1.0
    assert mesh_metrics(mesh.vertices, mesh.faces, red, "a blue torus", resolution=48)["color_fraction"] == 0.0
    pale = np.full_like(red, 0.5) + 0.5 * (red - 0.5)  # half way from the unpainted gray: not red
    assert mesh_metrics(mesh.vertices, mesh.faces, pale, "a red torus", resolution=48)["color_fraction"] == 0.0
    assert mesh_metrics(mesh.vertices, mesh.faces, red, "a 3D rendering of a wooden horse") is None
    ball = procedural_mesh("sphere", grid_size=GRID)
    half = painted_colors(MeshScene("sphere", "red", bottom="gray", seed=1), ball.vertices, GRID)
    m = mesh_metrics(ball.vertices, ball.faces, half, "a sphere, red on top and gray below", resolution=48)
    assert 0.2 < m["color_fraction"] < 0.8 and abs(m["color_fraction"] + m["bottom_fraction"] - 1.0) < 0.05


def test_pattern_metrics_and_the_batched_colour_fraction():
    mesh = procedural_mesh("sphere", grid_size=GRID)
    striped = painted_colors(MeshScene("sphere", "blue", "striped"), mesh.vertices, GRID)
    m = mesh_metrics(mesh.vertices, mesh.faces, striped, "a striped blue sphere", resolution=48)
    assert m["color_fraction"] > 0.99 and 0.3 < m["two_tone"] < 0.7 and m["reader_color_views"] == 1.0
    plain = painted_colors(MeshScene("sphere", "blue"), mesh.vertices, GRID)
    assert mesh_metrics(mesh.vertices, mesh.faces, plain, "a striped blue sphere", resolution=48,
                        reader=False)["two_tone"] == 0.0
    v = torch.tensor(mesh.vertices).expand(3, -1, -1)
    c = torch.tensor(np.stack([plain, striped, plain]))
    got = batched_color_fractions(v, torch.tensor(mesh.faces), c, ["blue", "blue", "red"], resolution=32, views=4)
    assert got[0] == 1.0 and 0.3 < got[1] < 0.7 and got[2] == 0.0
