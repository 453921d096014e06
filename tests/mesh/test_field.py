"""Style field and TDAM: the spec's parameter counts, the exact 0.25 TDAM scaling at initialisation,
zero-initialised heads, output ranges, determinism per seed, and the input preparation."""

from __future__ import annotations

import math

import torch

from attncraft.mesh.fourier import FourierFeatures
from attncraft.mesh.style_field import (StyledMeshModel, Text2MeshField, build_style_field, field_input,
                                        renormalize)
from attncraft.mesh.tdam import TDAM


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_spec():
    f = build_style_field("xmesh", text_dim=512, seed=23)
    assert count(f.base) == 397_824
    assert count(f.tdam) == 8_943_480
    assert count(f.color_head) + count(f.displacement_head) == 266_758
    assert count(f) == 9_608_062
    assert f.fourier.out_channels == 515
    assert "fourier.B" in f.state_dict() and not f.fourier.B.requires_grad


def test_tdam_scales_features_by_exactly_a_quarter_at_init():
    tdam = TDAM(256, 512)
    h = torch.randn(100, 256)
    t = torch.randn(1, 512) * 5
    assert torch.equal(tdam(h, t), h * 0.25)
    assert torch.equal(tdam.channel.attention(h, t), torch.full((1, 256), 0.5))
    # Once V_p moves, the gates depend on the text: the module is really text-conditioned.
    with torch.no_grad():
        tdam.channel.fc2.basis.normal_()
    assert not torch.allclose(tdam(h, t), tdam(h, -t))


def test_initial_model_is_grey_and_undisplaced():
    f = build_style_field("xmesh", text_dim=32, seed=1)
    verts = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    model = StyledMeshModel(f, verts)
    out = model(torch.randn(1, 32))
    assert torch.equal(out.colors, torch.full((50, 3), 0.5))
    assert torch.equal(out.displacement, torch.zeros(50, 3))
    assert torch.allclose(out.vertices, renormalize(verts))


def test_head_output_ranges_with_large_weights():
    f = build_style_field("xmesh", text_dim=16, seed=2, width=32)
    with torch.no_grad():
        for p in f.parameters():
            p.normal_(0, 3)
    c, d = f(torch.randn(200, 3) * 3, torch.randn(1, 16))
    assert c.abs().max() <= 0.5 and c.abs().max() > 0.45  # tanh/2 saturates near, never beyond, 0.5
    # mathematically < 0.1; tanh rounds to exactly 1 in float32 when saturated
    assert d.norm(dim=1).max() <= 0.1 + 1e-6 and d.abs().max() <= 0.1 / math.sqrt(3) + 1e-7
    t2m = Text2MeshField(width=32)
    with torch.no_grad():
        for p in t2m.parameters():
            p.normal_(0, 3)
    c2, d2 = t2m(torch.randn(200, 3))
    assert d2.shape == (200, 1) and d2.abs().max() <= 0.1 and c2.abs().max() <= 0.5


def test_field_is_deterministic_per_seed():
    p, t = torch.randn(30, 3), torch.randn(1, 8)
    a = build_style_field("xmesh", text_dim=8, seed=5, width=32)
    b = build_style_field("xmesh", text_dim=8, seed=5, width=32)
    c = build_style_field("xmesh", text_dim=8, seed=6, width=32)
    for m in (a, b, c):
        with torch.no_grad():
            m.color_head[-1].weight.fill_(0.01)
    assert torch.equal(a(p, t)[0], b(p, t)[0])
    assert not torch.equal(a(p, t)[0], c(p, t)[0])
    state = torch.get_rng_state()
    build_style_field("xmesh", text_dim=8, seed=5, width=32)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


def test_fourier_features_and_input_preparation():
    ff = FourierFeatures(3, 256, 12.0, seed=0)
    norms = ff.B.norm(dim=1)
    assert torch.all(norms[:-1] <= norms[1:])  # rows sorted by L2 norm
    x = torch.randn(4, 3)
    out = ff(x)
    assert out.shape == (4, 515) and torch.equal(out[:, :3], x)
    assert torch.allclose(out[:, 3:259], torch.sin((2 * math.pi) * (x @ ff.B)), atol=1e-5)
    v = torch.tensor([[0.0, 0.0, -1.0], [1.0, 2.0, 1.0], [2.0, 0.0, 0.5]])
    p = field_input(v, symmetry=True, standardize=True)
    assert torch.allclose(p.mean(0), torch.zeros(3), atol=1e-6)
    assert torch.allclose(p.std(0, unbiased=True), torch.ones(3))
    assert torch.allclose(field_input(v, True, False)[:, 2], torch.tensor([1.0, 1.0, 0.5]))
    flat = field_input(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), symmetry=False)
    assert torch.isfinite(flat).all()


def test_renormalize_and_text2mesh_normal_displacement():
    v = torch.randn(20, 3) * 3 + 1
    r = renormalize(v)
    assert torch.allclose(r.mean(0), torch.zeros(3), atol=1e-6) and abs(r.norm(dim=1).max().item() - 1) < 1e-6
    f = build_style_field("text2mesh", seed=0, width=32)
    with torch.no_grad():
        f.displacement_head[-1].bias.fill_(10.0)  # saturate: d = 0.1 for every vertex
    verts = torch.nn.functional.normalize(torch.randn(30, 3), dim=1)
    model = StyledMeshModel(f, verts, normals=verts)
    out = model(None)
    assert torch.allclose(out.vertices, renormalize(verts * (1 + 0.1 * math.tanh(10.0))), atol=1e-6)
