"""Cameras follow the reference conventions."""

from __future__ import annotations

import math

import torch

from attncraft.mesh.camera import make_cameras, mes_views, sample_front_views
from attncraft.mesh.renderer import project


def test_view_zero_sits_on_plus_x_looking_at_origin():
    cams = make_cameras([0.0], [0.0], dtype=torch.float64)
    assert torch.allclose(cams.positions[0], torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64))
    cam, img = project(torch.zeros(1, 3, dtype=torch.float64), cams)
    assert torch.allclose(cam[0, 0], torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64))  # origin straight ahead
    assert torch.allclose(img[0, 0], torch.zeros(2, dtype=torch.float64))
    # +y world is up in the image; world -z is image right for this view.
    _, img = project(torch.tensor([[0.0, 0.5, 0.0], [0.0, 0.0, -0.5]], dtype=torch.float64), cams)
    assert img[0, 0, 1] > 0 and img[0, 1, 0] > 0
    assert img[0, 0, 1].item() == (0.5 / math.tan(math.pi / 6) / 2.0)


def test_front_view_sampling_and_mes_views():
    gen = torch.Generator().manual_seed(0)
    elev, azim = sample_front_views(5, 4.0, (0.0, 0.0), gen)
    assert elev[0] == 0 and azim[0] == 0 and elev.shape == (5,)
    many_e, many_a = sample_front_views(20001, 4.0, (0.0, 0.0), gen)
    assert abs(many_e[1:].std().item() - math.pi / 4) < 0.02 and abs(many_a[1:].std().item() - math.pi / 2) < 0.04
    e, a = mes_views()
    assert len(e) == 24 and len(set(a.tolist())) == 8 and sorted(set(round(math.degrees(x)) for x in e.tolist())) == [-30, 0, 30]
