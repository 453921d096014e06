"""The Shapes world: vocabulary, palette separation, seeded sampling, rendering and its ground truth."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from attncraft.shapes.palette import BACKGROUND_RGB, COLOR_RGB, SHADE_RGB
from attncraft.shapes.world import (
    BACKGROUNDS,
    CELL,
    COLORS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    Motion,
    RenderResult,
    Scene,
    SceneObject,
    render_scenes,
    render_video,
    sample_and_render,
    sample_scenes,
)


def test_vocabulary():
    assert len(SHAPES) >= 6 and {"circle", "square", "triangle", "star", "heart", "cross"} <= set(SHAPES)
    assert {"red", "orange", "yellow", "green", "cyan", "blue", "purple", "white"} <= set(COLORS)
    assert SIZES == ("small", "big")
    assert {"left", "right", "top", "bottom", "center", "top left", "bottom right"} <= set(POSITIONS)
    assert len(POSITIONS) == 9
    assert PATTERNS == ("plain", "striped", "dotted", "checkered")
    assert not set(BACKGROUNDS) & set(COLORS)


def test_palette_entries_are_far_apart():
    """Each colour (as the segment to its pattern shade) is >= 0.26 from every other entry."""
    t = np.linspace(0, 1, 51)[:, None]
    entries = {c: np.array(COLOR_RGB[c]) * (1 - t) + np.array(SHADE_RGB[c]) * t for c in COLORS}
    entries.update({b: np.array(BACKGROUND_RGB[b])[None] for b in BACKGROUNDS})
    worst = min(
        np.linalg.norm(entries[a][:, None] - entries[b][None], axis=-1).min()
        for a, b in itertools.combinations(entries, 2)
        if not (a in BACKGROUNDS and b in BACKGROUNDS)
    )
    assert worst >= 0.26


def test_sampling_is_deterministic_per_seed():
    a = sample_scenes(50, seed=3)
    b = sample_scenes(50, seed=3)
    c = sample_scenes(50, seed=4)
    assert a == b
    assert a != c
    assert sample_scenes(20, seed=3) == a[:20]  # sequential draw: a prefix
    counts = {len(s.objects) for s in a}
    assert counts == {1, 2, 3}
    assert all(len({o.cell for o in s.objects}) == len(s.objects) for s in a)
    assert all(o.pattern == "plain" for s in sample_scenes(30, seed=1, patterns=False) for o in s.objects)
    assert all(len(s.objects) == 2 for s in sample_scenes(10, seed=1, num_objects=2))
    only = sample_scenes(30, seed=2, shapes=["star"], colors=["red", "blue"], backgrounds=["black"])
    assert {o.shape for s in only for o in s.objects} == {"star"}
    assert {o.color for s in only for o in s.objects} <= {"red", "blue"}
    assert {s.background for s in only} == {"black"}


def test_scene_validation_and_dict_round_trip():
    with pytest.raises(ValueError):
        SceneObject("hexagon", "red")
    with pytest.raises(ValueError):
        SceneObject("circle", "magenta")
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "red", position="left"), SceneObject("star", "blue", position="left")))
    with pytest.raises(ValueError):
        Scene((SceneObject("circle", "red"),), background="white")
    with pytest.raises(ValueError):
        sample_scenes(2, num_objects=(0, 4))
    for s in sample_scenes(20, seed=9, motion=True):
        assert Scene.from_dict(s.to_dict()) == s


def test_render_is_deterministic_and_well_formed():
    scenes = sample_scenes(24, seed=11)
    a = render_scenes(scenes, size=64)
    b = render_scenes(scenes, size=64)
    other = render_scenes(sample_scenes(24, seed=12), size=64)
    assert isinstance(a, RenderResult) and a.scenes == scenes
    assert a.images.shape == (24, 3, 64, 64) and a.images.dtype == torch.float32
    assert a.masks.shape == (24, 3, 64, 64) and a.masks.dtype == torch.bool
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, other.images)
    assert a.images.min() >= 0 and a.images.max() <= 1
    fast = sample_and_render(24, seed=11, size=64)
    assert torch.equal(fast.images, a.images)
    big = render_scenes(scenes[:4], size=128)
    assert big.images.shape == (4, 3, 128, 128)
    # the same scene at 128 covers about 4x the pixels
    ratio = big.masks.sum() / a.masks[:4].sum()
    assert 3.6 < float(ratio) < 4.4
    with pytest.raises(ValueError):
        render_scenes(scenes, size=8)


def _dilate(m: torch.Tensor, r: int = 1) -> torch.Tensor:
    return torch.nn.functional.max_pool2d(m.float()[None, None], 2 * r + 1, 1, r)[0, 0] > 0


def test_masks_are_disjoint_separated_and_match_the_colours():
    scenes = sample_scenes(60, seed=5)
    out = render_scenes(scenes, size=64)
    for i, s in enumerate(scenes):
        n = len(s.objects)
        masks = out.masks[i]
        assert not masks[n:].any(), "absent object slots must have empty masks"
        assert all(masks[k].sum() > 20 for k in range(n))
        for j, k in itertools.combinations(range(n), 2):
            assert not (_dilate(masks[j]) & masks[k]).any(), "objects must be at least a pixel apart"
        img = out.images[i].permute(1, 2, 0)
        outside = ~_dilate(masks[:n].any(0), 2)  # the anti-aliased rim reaches past sharp tips
        bg = torch.tensor(BACKGROUND_RGB[s.background])
        assert torch.allclose(img[outside], bg.expand(int(outside.sum()), 3), atol=1e-5)
        for k, o in enumerate(s.objects):
            inner = ~_dilate(~masks[k])  # away from the anti-aliased rim
            px = img[inner]
            a, b = torch.tensor(COLOR_RGB[o.color]), torch.tensor(SHADE_RGB[o.color])
            t = (((px - a) @ (b - a)) / ((b - a) @ (b - a))).clamp(0, 1)
            dist = (px - (a + t[:, None] * (b - a))).norm(dim=1)
            assert float(dist.max()) < 1e-4, "object pixels lie between the colour and its pattern shade"
            share = float((t > 0.5).float().mean())
            if o.pattern == "plain":
                assert share == 0.0
            else:
                assert share > 0.05


def test_sampling_and_rendering_speed():
    sample_scenes(256, seed=0)
    render_scenes(sample_scenes(16, seed=0))
    t0 = time.perf_counter()
    scenes = sample_scenes(256, seed=1)
    t1 = time.perf_counter()
    render_scenes(scenes, size=64)
    t2 = time.perf_counter()
    # budget: ~5 ms / ~40 ms on one idle core; generous limits for loaded CI machines
    assert t1 - t0 < 0.1
    assert t2 - t1 < 1.0


def _centroid(m: torch.Tensor) -> tuple[float, float]:
    ys, xs = m.nonzero(as_tuple=True)
    return float(xs.float().mean()) / m.shape[1], float(ys.float().mean()) / m.shape[0]


def test_video_ground_truth_follows_each_motion():
    def scene(motions, shape="square", size="small", position="left"):
        return Scene((SceneObject(shape, "red", size, position, motions=tuple(motions)),), "gray")

    scenes = [
        scene([Motion("move", direction="right", amount=1.0)]),
        scene([Motion("grow")]),
        scene([Motion("shrink")], size="big"),
        scene([Motion("rotate", amount=90.0)], shape="triangle", size="big"),
        scene([Motion("recolor", to_color="blue")]),
        scene([Motion("appear", 0.0, 0.6)]),
        scene([Motion("move", 0.0, 0.5, direction="down", amount=1.0), Motion("recolor", 0.5, 1.0, to_color="green")]),
    ]
    out = render_video(scenes, num_frames=16, size=64)
    assert out.images.shape == (7, 16, 3, 64, 64) and out.masks.shape == (7, 16, 3, 64, 64)
    assert len(out.states) == 7 and len(out.states[0]) == 16
    m = out.masks[:, :, 0]
    # frame 0 equals the still render
    still = render_scenes(scenes[:5], size=64)
    assert torch.equal(out.images[:5, 0], still.images)
    # move right by one cell
    (x0, y0), (x1, y1) = _centroid(m[0, 0]), _centroid(m[0, -1])
    assert abs((x1 - x0) - CELL) < 0.01 and abs(y1 - y0) < 0.01
    # grow / shrink
    assert m[1, -1].sum() > 2 * m[1, 0].sum() and m[2, -1].sum() * 2 < m[2, 0].sum()
    # rotate: same area, different silhouette
    assert abs(int(m[3, -1].sum()) - int(m[3, 0].sum())) < 0.1 * int(m[3, 0].sum()) and not torch.equal(m[3, -1], m[3, 0])
    # recolour: red, then blue after the middle
    red, blue = torch.tensor(COLOR_RGB["red"]), torch.tensor(COLOR_RGB["blue"])
    inner0 = ~_dilate(~m[4, 0])
    assert torch.allclose(out.images[4, 0].permute(1, 2, 0)[inner0].mean(0), red, atol=1e-4)
    assert torch.allclose(out.images[4, -1].permute(1, 2, 0)[~_dilate(~m[4, -1])].mean(0), blue, atol=1e-4)
    assert out.states[4][7][0].color == "red" and out.states[4][8][0].color == "blue"
    # appear: nothing at first, the object at the end
    assert not m[5, 0].any() and m[5, -1].any() and not out.states[5][0][0].visible
    first = next(f for f in range(16) if m[5, f].any())
    assert 3 <= first <= 6
    # composed: moves down during the first half, recolours in the second
    assert out.states[6][7][0].color == "red" and out.states[6][-1][0].color == "green"
    assert abs(_centroid(m[6, 8])[1] - _centroid(m[6, -1])[1]) < 0.01


def test_sampled_videos_keep_objects_apart():
    scenes = sample_scenes(40, seed=21, motion=True)
    assert all(s.has_motion for s in scenes)
    kinds = {m.kind for s in scenes for o in s.objects for m in o.motions}
    assert kinds == {"move", "grow", "shrink", "rotate", "recolor", "appear"}
    out = render_video(scenes, num_frames=16, size=64)
    for i, s in enumerate(scenes):
        for f in range(16):
            masks = out.masks[i, f]
            for j, k in itertools.combinations(range(len(s.objects)), 2):
                assert not (_dilate(masks[j]) & masks[k]).any()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_on_cuda_matches_cpu():
    scenes = sample_scenes(32, seed=0)
    cpu = render_scenes(scenes, device="cpu")
    gpu = render_scenes(scenes, device="cuda")
    assert gpu.images.is_cuda
    assert torch.allclose(cpu.images, gpu.images.cpu(), atol=1e-4)
    assert (cpu.masks != gpu.masks.cpu()).float().mean() < 1e-3
