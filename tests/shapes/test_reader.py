"""The reader and the scores: near-perfect on the world's own renders, tolerant of noise and blur,
and able to say no."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncraft.shapes.captions import caption_scene
from attncraft.shapes.reader import assign, connected_components, read_image, read_images, read_video
from attncraft.shapes.scoring import mask_iou, score_image, score_images, score_video
from attncraft.shapes.world import Motion, Scene, SceneObject, render_scenes, render_video, sample_scenes

ATTRS = ("color", "shape", "size", "position", "pattern")


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def test_connected_components_exact():
    cls = np.array(
        [
            [0, 0, -1, 1, 1],
            [0, -1, -1, -1, 1],
            [-1, 0, -1, 2, 1],
            [3, 3, 3, 2, -1],
            [-1, -1, 3, -1, 3],
        ]
    )
    labels, n = connected_components(cls)
    assert n == 6
    groups = {}
    for (y, x), lab in np.ndenumerate(labels):
        if lab:
            groups.setdefault(lab, set()).add((y, x))
    sets = sorted(sorted(g) for g in groups.values())
    assert [(0, 0), (0, 1), (1, 0)] in sets
    assert [(2, 1)] in sets  # touches (1, 0) only diagonally
    assert [(0, 3), (0, 4), (1, 4), (2, 4)] in sets
    assert [(2, 3), (3, 3)] in sets  # class 2 next to class 3 stays apart
    assert [(3, 0), (3, 1), (3, 2), (4, 2)] in sets
    assert [(4, 4)] in sets
    # a long snake converges too
    snake = np.full((20, 20), -1)
    snake[::2, :] = 5
    snake[1::4, -1] = 5
    snake[3::4, 0] = 5
    labels, n = connected_components(snake)
    assert n == 1


def test_assign_is_optimal():
    cost = np.array([[1.0, 2.0, 9.0], [1.0, 9.0, 9.0], [9.0, 1.0, 5.0]])
    assert sorted(assign(cost)) == [(0, 2), (1, 0), (2, 1)] or sorted(assign(cost)) == [(0, 1), (1, 0), (2, 2)]
    total = sum(cost[r, c] for r, c in assign(cost))
    assert total == 1.0 + 1.0 + 9.0 or total == 2.0 + 1.0 + 5.0
    assert total == min(2.0 + 1.0 + 5.0, 9.0 + 1.0 + 1.0)
    assert assign(np.array([[0.5, 3.0]]), max_cost=1.0) == [(0, 0)]
    assert assign(np.array([[3.0]]), max_cost=1.0) == []


def test_mask_iou_on_hand_made_maps():
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True
    amap = np.zeros((4, 4))
    amap[:2, :2] = 1.0
    assert mask_iou(amap, mask) == pytest.approx(1.0)  # 4x4 map resized to 8x8
    assert mask_iou(torch.tensor(amap), torch.tensor(mask)) == pytest.approx(1.0)
    half = np.zeros((8, 8))
    half[:4, :2] = 5.0  # left half of the object, on an arbitrary scale
    assert mask_iou(half, mask) == pytest.approx(0.5)
    other = np.zeros((8, 8))
    other[4:, 4:] = 1.0
    assert mask_iou(other, mask) == 0.0
    graded = np.zeros((8, 8))
    graded[:4, :4] = 0.4
    graded[:2, :2] = 1.0
    assert mask_iou(graded, mask, threshold=0.5) == pytest.approx(4 / 16)
    assert mask_iou(graded, mask, threshold=0.3) == pytest.approx(1.0)
    assert mask_iou(graded, mask, threshold=None) == pytest.approx(1.0)  # top-16 pixels
    assert mask_iou(np.ones((8, 8)), mask) == 0.0  # a constant map singles nothing out
    assert mask_iou(np.zeros((8, 8)), np.zeros((8, 8), dtype=bool)) == 1.0
    with pytest.raises(ValueError):
        mask_iou(np.zeros((2, 2, 2)), mask)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def renders():
    scenes = sample_scenes(300, seed=123)
    out = render_scenes(scenes, size=64)
    return scenes, out, read_images(out.images)


def _per_attribute(scenes, masks, reads):
    """Reader accuracy per attribute, objects matched to ground truth by mask IoU; and the IoUs."""
    hits = {a: [] for a in ATTRS + ("count", "background")}
    ious = []
    for i, (s, r) in enumerate(zip(scenes, reads)):
        hits["count"].append(len(r.objects) == len(s.objects))
        hits["background"].append(r.background == s.background)
        gt = [masks[i, k].numpy() for k in range(len(s.objects))]
        iou = np.array([[(g & d.mask).sum() / max(1, (g | d.mask).sum()) for d in r.objects] for g in gt])
        pairs = dict(assign(-iou.reshape(len(gt), len(r.objects))))
        for k, o in enumerate(s.objects):
            d = r.objects[pairs[k]] if k in pairs else None
            ious.append(iou[k, pairs[k]] if d is not None else 0.0)
            for a in ATTRS:
                hits[a].append(d is not None and getattr(d, a) == getattr(o, a))
    return {a: float(np.mean(v)) for a, v in hits.items()}, np.array(ious)


def test_reader_recovers_renders(renders):
    scenes, out, reads = renders
    acc, ious = _per_attribute(scenes, out.masks, reads)
    assert all(v >= 0.99 for v in acc.values()), acc
    assert ious.mean() >= 0.97 and (ious >= 0.9).mean() >= 0.97, (ious.mean(), (ious >= 0.9).mean())


def test_scores_of_renders_against_their_captions(renders):
    scenes, _, reads = renders
    rows = [score_image(None, caption_scene(s, seed=i), read=r) for i, (s, r) in enumerate(zip(scenes, reads))]
    keys = {k for r in rows for k in r}
    assert {"count", "color", "shape", "size", "position", "pattern", "background", "relation"} <= keys
    for k in keys:
        assert np.mean([r[k] for r in rows if k in r]) >= 0.99, k
    rows = [score_image(None, s, read=r) for s, r in zip(scenes[:100], reads[:100])]
    assert np.mean([r["exact"] for r in rows]) >= 0.99


def test_scores_say_no(renders):
    """The same renders against wrong prompts."""
    scenes, out, reads = renders
    s, r = scenes[0], reads[0]
    o = s.objects[0]
    wrong_color = "blue" if o.color != "blue" else "red"
    wrong_shape = "star" if o.shape != "star" else "heart"
    assert score_image(None, f"a {wrong_color} {o.shape}", read=r)["color"] == 0.0
    assert score_image(None, f"a {o.color} {wrong_shape}", read=r)["shape"] == 0.0
    other_bg = "black" if s.background != "black" else "gray"
    assert score_image(None, f"a {o.color} {o.shape} on a {other_bg} background", read=r)["background"] == 0.0
    mean = score_images(out.images[:40], [caption_scene(x, seed=i) for i, x in enumerate(scenes[1:41])])
    assert mean["color"] < 0.6 and mean["shape"] < 0.6
    # a relation that does not hold
    scene = Scene((SceneObject("circle", "red", position="top"), SceneObject("square", "blue", position="bottom")), "gray")
    img = render_scenes([scene]).images[0]
    assert score_image(img, "a red circle above a blue square")["relation"] == 1.0
    assert score_image(img, "a red circle below a blue square")["relation"] == 0.0
    assert score_image(img, "a red circle")["count"] == 0.0


def _degrade(images: torch.Tensor, noise: float, blur: float, seed: int = 0) -> torch.Tensor:
    x = torch.arange(-1, 2, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * blur**2))
    k2 = (k[:, None] * k[None, :]) / k.sum() ** 2
    out = torch.nn.functional.conv2d(
        torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), k2.expand(3, 1, 3, 3).contiguous(), groups=3
    )
    g = torch.Generator().manual_seed(seed)
    return (out + noise * torch.randn(out.shape, generator=g)).clamp(0, 1)


def test_reader_tolerates_noise_and_blur(renders):
    scenes, out, _ = renders
    n = 150
    noisy = _degrade(out.images[:n], noise=0.05, blur=0.7)
    assert (noisy - out.images[:n]).abs().mean() > 0.03  # it really is degraded
    acc, ious = _per_attribute(scenes[:n], out.masks[:n], read_images(noisy))
    assert all(v >= 0.95 for v in acc.values()), acc
    assert ious.mean() >= 0.85


def test_reader_at_128_and_input_types():
    scenes = sample_scenes(12, seed=77)
    out = render_scenes(scenes, size=128)
    acc, ious = _per_attribute(scenes, out.masks, read_images(out.images))
    assert all(v == 1.0 for v in acc.values()), acc
    img = out.images[0]
    ref = read_image(img).to_dict()
    as_uint8 = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert read_image(as_uint8).to_dict()["objects"][0]["shape"] == ref["objects"][0]["shape"]
    assert read_image(img * 2 - 1).to_dict() == ref  # [-1, 1] tensors are accepted
    blank = torch.full((3, 64, 64), 0.4)
    assert read_image(blank).objects == [] and read_image(blank).background == "gray"


# --------------------------------------------------------------------------------------------------
# videos
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def videos():
    scenes = sample_scenes(24, seed=5, motion=True)
    out = render_video(scenes, num_frames=16, size=64)
    return scenes, out, [read_video(v) for v in out.images]


def test_video_scores_of_renders(videos):
    scenes, out, reads = videos
    rows = [score_video(None, s, read=r) for s, r in zip(scenes, reads)]
    rows += [score_video(None, caption_scene(s, seed=i), read=r) for i, (s, r) in enumerate(zip(scenes, reads))]
    keys = {k for r in rows for k in r}
    assert {"move", "recolor", "motion", "identity", "order", "static"} <= keys
    for k in keys:
        assert np.mean([r[k] for r in rows if k in r]) >= 0.99, k


def test_video_tracks_follow_the_ground_truth(videos):
    scenes, out, reads = videos
    for i, (s, states, rv) in enumerate(zip(scenes, out.states, reads)):
        assert len(rv.tracks) == len(s.objects)
        for k in range(len(s.objects)):
            seen = [f for f in range(16) if states[f][k].visible]
            f0 = seen[0]
            ys, xs = out.masks[i, f0, k].nonzero(as_tuple=True)
            x0, y0 = (float(xs.float().mean()) + 0.5) / 64, (float(ys.float().mean()) + 0.5) / 64
            track = next(t for t in rv.tracks if t.frames[0] == f0 and abs(t.first.x - x0) + abs(t.first.y - y0) < 0.03)
            assert track.frames == seen
            for f, d in zip(track.frames, track.objects):
                ys, xs = out.masks[i, f, k].nonzero(as_tuple=True)
                assert abs(d.x - (float(xs.float().mean()) + 0.5) / 64) < 0.01
                assert abs(d.y - (float(ys.float().mean()) + 0.5) / 64) < 0.01
                assert d.color == states[f][k].color


def test_video_scores_say_no():
    still = Scene((SceneObject("star", "red", "big", "left"),), "gray")
    moving = Scene((SceneObject("star", "red", "big", "left", motions=(Motion("move", direction="right", amount=1.0),)),), "gray")
    spin = Scene((SceneObject("star", "red", "big", "left", motions=(Motion("rotate", amount=-120.0),)),), "gray")
    out = render_video([still, moving, spin], num_frames=16)
    prompt = "a big red star on the left moves right"
    assert score_video(out.images[0], prompt)["move"] == 0.0
    assert score_video(out.images[1], prompt)["move"] == 1.0
    assert score_video(out.images[1], "a big red star on the left moves left")["move"] == 0.0
    assert score_video(out.images[1], "a red star stays still")["static"] == 0.0
    assert score_video(out.images[0], "a red star stays still")["static"] == 1.0
    assert score_video(out.images[2], "a red star rotates clockwise")["rotate"] == 1.0
    assert score_video(out.images[2], "a red star rotates counterclockwise")["rotate"] == 0.0
    assert score_video(out.images[0], "a red star turns blue")["recolor"] == 0.0
    # order: moving right then turning blue is not turning blue then moving right
    composed = Scene(
        (SceneObject("circle", "red", "big", "left", motions=(Motion("move", 0, 0.5, "right", 1.0), Motion("recolor", 0.5, 1, to_color="blue"))),),
        "gray",
    )
    clip = render_video([composed], num_frames=16).images[0]
    assert score_video(clip, "a red circle moves right, then turns blue")["order"] == 1.0
    assert score_video(clip, "a red circle turns blue, then moves right")["order"] == 0.0
