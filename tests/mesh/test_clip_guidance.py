"""CLIP loading (errors, random stand-ins, local folders), the reference augmentations, and the
single batched CLIP call per iteration."""

from __future__ import annotations

import pytest
import torch

from attncraft.errors import InputError, ModelLoadError
from attncraft.mesh.clip_guidance import (AugmentPlan, apply_augmentations, guidance_loss, load_clip,
                                          sample_resized_crop)


def test_full_scale_crop_always_returns_the_full_image():
    gen = torch.Generator().manual_seed(0)
    assert all(sample_resized_crop(224, 224, (1.0, 1.0), gen) == (0, 0, 224, 224) for _ in range(2000))
    top, left, h, w = sample_resized_crop(224, 224, (0.4, 0.4), gen)
    assert abs(h * w / 224**2 - 0.4) < 0.02 and 0 <= top <= 224 - h and 0 <= left <= 224 - w


def test_identity_augmentation_and_white_fill():
    gen = torch.Generator().manual_seed(0)
    imgs = torch.rand(1, 2, 3, 16, 16, generator=gen)
    plan = AugmentPlan.xmesh(1, 0, 0, geoloss=False)
    same = apply_augmentations(imgs, plan, 16, gen, perspective_p=0.0)
    assert torch.allclose(same, imgs[0], atol=1e-6)
    warped = apply_augmentations(torch.zeros(1, 1, 3, 32, 32), AugmentPlan.xmesh(8, 0, 0, geoloss=False), 32, gen,
                                 perspective_p=1.0)
    assert warped.max() == 1.0 and warped.min() == 0.0  # perspective fill is white, content is kept
    # All views of one augmentation share its random parameters: identical views stay identical.
    two = apply_augmentations(torch.rand(1, 1, 3, 16, 16).expand(1, 3, 3, 16, 16), AugmentPlan.xmesh(2, 2, 0, geoloss=False),
                              16, gen)
    assert torch.equal(two[0], two[1]) and torch.equal(two[0], two[2]) and not torch.equal(two[0], two[3])


def test_loss_uses_one_batched_clip_call(test_guide):
    calls = []
    handle = test_guide.model.vision_model.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        groups = torch.rand(2, 5, 3, 32, 32)
        text = test_guide.encode_text("a red chair")
        plan = AugmentPlan.xmesh()
        gl = guidance_loss(test_guide, groups.requires_grad_(), text, plan, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(calls) == 1 and gl.similarities.shape == (9,)
    assert gl.loss.item() == pytest.approx(-gl.similarities.sum().item(), abs=1e-5)
    gl.loss.backward()
    assert groups.grad.abs().sum() > 0


def test_prompt_validation(test_guide):
    with pytest.raises(InputError, match="empty"):
        test_guide.encode_text("   ")
    with pytest.raises(InputError, match="tokens long"):
        test_guide.encode_text("word " * 100)
    a = test_guide.encode_text("a  red\nchair")
    assert torch.equal(a, test_guide.encode_text("a red chair")) and a.dtype == torch.float32


def test_load_clip_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="not found"):
        load_clip(str(tmp_path / "missing"), "cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_clip(str(tmp_path), "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE") as info:
        load_clip("someone/not-a-cached-clip", "cpu")
    assert "\n" not in info.value.one_line()
    with pytest.raises(ModelLoadError, match="unknown random CLIP size"):
        load_clip("random:huge", "cpu")


def test_default_is_a_labelled_stand_in_and_folders_round_trip(tmp_path):
    from attncraft.mesh.clip_guidance import default_clip_folder

    if default_clip_folder() is None:
        _, _, label = load_clip(None, "cpu")
        assert "random stand-in" in label
    model, tok, label = load_clip("random:test", "cpu")
    assert "random" in label and not any(p.requires_grad for p in model.parameters())
    model.save_pretrained(tmp_path / "clip")
    again, tok2, label2 = load_clip(str(tmp_path / "clip"), "cpu")
    assert label2 == str(tmp_path / "clip")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelLoadError):
        load_clip(str(tmp_path / "notclip"), "cpu")


def test_patch_embedding_speedup_is_exact(test_guide):
    from attncraft.mesh.clip_guidance import build_random_clip

    reference = build_random_clip("test")  # plain convolution
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a = test_guide.model.vision_model.embeddings.patch_embedding(x)
        b = reference.vision_model.embeddings.patch_embedding(x)
    assert torch.allclose(a, b, atol=1e-5)


def test_perspective_fill_follows_the_background_and_white_is_unchanged(test_guide):
    fill = (0.5, 0.4, 0.3)
    warped = apply_augmentations(torch.zeros(1, 1, 3, 32, 32), AugmentPlan.xmesh(8, 0, 0, geoloss=False), 32,
                                 torch.Generator().manual_seed(0), fill=fill, perspective_p=1.0)
    outside = warped[:, 0] == 0.5  # pixels the warp filled entirely
    assert outside.float().mean() > 0.05 and (warped == 0).all(dim=1).any()  # the content (black) is kept
    for c, value in enumerate(fill):
        assert torch.equal(warped[:, c][outside], torch.full_like(warped[:, c][outside], value))
    # rim pixels blend content and fill: every pixel is t * fill for one t in [0, 1]
    t = warped[:, 0] / 0.5
    assert torch.allclose(warped[:, 1], 0.4 * t, atol=1e-6) and torch.allclose(warped[:, 2], 0.3 * t, atol=1e-6)
    # the white default is bit for bit the scalar fill 1.0 of the reference
    imgs = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plan = AugmentPlan.xmesh()
    a = apply_augmentations(imgs, plan, 32, torch.Generator().manual_seed(2), fill=(1.0, 1.0, 1.0))
    b = apply_augmentations(imgs, plan, 32, torch.Generator().manual_seed(2), fill=1.0)
    assert torch.equal(a, b)
    text = test_guide.encode_text("a red chair")
    la = guidance_loss(test_guide, imgs, text, plan, torch.Generator().manual_seed(3), fill=(1.0, 1.0, 1.0))
    lb = guidance_loss(test_guide, imgs, text, plan, torch.Generator().manual_seed(3))
    assert torch.equal(la.loss, lb.loss) and torch.equal(la.similarities, lb.similarities)
    lc = guidance_loss(test_guide, imgs, text, plan, torch.Generator().manual_seed(3), fill=fill)
    assert not torch.equal(lc.similarities, lb.similarities)


def test_default_label_says_whether_the_shapes_clip_reads_meshes(tmp_path, monkeypatch):
    import json

    import attncraft.mesh.clip_guidance as cg
    from attncraft.shapes.models import shapes_clip_reads_meshes

    folder = tmp_path / "shapes-clip"
    load_clip("random:test", "cpu")[0].save_pretrained(folder)
    assert not shapes_clip_reads_meshes(folder)  # no training log
    (folder / "training_log.json").write_text(json.dumps({"stage": "clip"}))
    assert not shapes_clip_reads_meshes(folder)
    monkeypatch.setattr(cg, "default_clip_folder", lambda: folder)
    assert "not trained on mesh renders" in load_clip(None, "cpu")[2]
    (folder / "training_log.json").write_text(json.dumps({"stage": "clip", "mesh_fraction": 0.5}))
    assert shapes_clip_reads_meshes(folder)
    assert load_clip(None, "cpu")[2] == f"shapes CLIP ({folder})"
