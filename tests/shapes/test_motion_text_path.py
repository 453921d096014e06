"""The motion text path: the spatial cross-attention's key/value projections trained with the motion
modules (smoke run on CPU), saved as differences beside the adapter, applied by the loader to the
motion UNet only, loaded strictly and never twice."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models as tm
from test_training import _run_args

from attncraft.errors import InputError
from attncraft.video import motion_text_path as mtp
from bench_scripts import load_script


@pytest.fixture(scope="module")
def text_path_run(tmp_path_factory):
    from attncraft.shapes.training.motion import train_motion

    root = tmp_path_factory.mktemp("motion_text_path")
    tm.sd_pipeline(seed=1).save_pretrained(root / "sd")
    info = train_motion(_run_args(root / "adapter", sd_dir=str(root / "sd"), text_path="cross-kv"), quiet=True)
    return root, info


def test_the_names_are_the_spatial_cross_attention_keys_and_values():
    from diffusers import UNetMotionModel

    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.motion import build_adapter

    unet = tm.sd_unet(seed=0)
    names = mtp.text_path_names(unet)
    assert names and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in names)
    n_cross = sum(1 for name, m in unet.named_modules() if name.endswith(".attn2"))
    assert len([n for n in names if n.endswith("weight")]) == 2 * n_cross
    motion = UNetMotionModel.from_unet2d(unet, build_adapter(dict(unet.config), get_configs("smoke").motion, seed=0))
    # the motion modules' own attn2 is temporal self-attention: never part of the path
    assert mtp.text_path_names(motion) == names


def test_training_writes_the_differences_and_the_frozen_rest_stays(text_path_run):
    root, info = text_path_run
    folder = root / "adapter"
    deltas, record = mtp.read_text_path(folder)
    assert record["format"] == mtp.FORMAT and record["kind"] == "cross-kv"
    assert info["text_path"]["tensors"] == len(deltas) and record["training"]["steps"] == info["steps"]
    assert all(d.dtype == torch.float16 for d in deltas.values())
    assert sum(float(d.float().abs().sum()) for d in deltas.values()) > 0  # trained: the tensors moved
    log = json.loads((folder / "training_log.json").read_text())
    assert log["text_path"]["kind"] == "cross-kv"
    # the base SD folder on disk is unchanged by the training
    base = tm.sd_pipeline(seed=1).unet.state_dict()
    saved = load_file(str(root / "sd" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(saved[k], base[k]) for k in saved)


def test_training_with_the_path_lowers_the_heldout_loss(text_path_run):
    _, info = text_path_run
    before, after = info["heldout_v_loss"]["before"]["true"], info["heldout_v_loss"]["after"]["true"]
    assert after < 0.95 * before, f"held-out v-loss {before:.4f} -> {after:.4f}"


def test_the_loader_applies_it_to_the_motion_unet_only(text_path_run):
    from attncraft.loading import load_text_to_image, load_text_to_video

    root, _ = text_path_run
    folder = root / "adapter"
    deltas, _ = mtp.read_text_path(folder)
    loaded = load_text_to_video(str(root / "sd"), str(folder), device="cpu", dtype="fp32")
    assert "motion text path" in loaded.label and "motion text path" in loaded.adapter_label
    image = load_text_to_image(str(root / "sd"), device="cpu", dtype="fp32").pipeline.unet
    video = dict(loaded.pipeline.unet.named_parameters())
    for name, delta in deltas.items():
        want = dict(image.named_parameters())[name].detach() + delta.float()
        assert torch.equal(video[name].detach(), want), name
    # every other spatial weight is the image UNet's
    path = set(deltas)
    for name, p in image.named_parameters():
        if name not in path:
            assert torch.equal(video[name].detach(), p.detach()), name
    # without the file, the adapter loads as before
    plain = root / "plain"
    shutil.copytree(folder, plain)
    (plain / mtp.TEXT_PATH_FILE).unlink()
    again = load_text_to_video(str(root / "sd"), str(plain), device="cpu", dtype="fp32")
    assert "text path" not in again.label
    for name in deltas:
        assert torch.equal(dict(again.pipeline.unet.named_parameters())[name].detach(),
                           dict(image.named_parameters())[name].detach())


def test_apply_is_strict_and_refuses_a_second_time(text_path_run, tmp_path):
    from attncraft.loading import load_text_to_video

    root, _ = text_path_run
    folder = root / "adapter"
    unet = load_text_to_video(str(root / "sd"), str(folder), device="cpu", dtype="fp32").pipeline.unet
    with pytest.raises(InputError, match="already has a motion text path"):
        mtp.apply_text_path(unet, folder)
    deltas, record = mtp.read_text_path(folder)
    fresh = tm.sd_unet(seed=1)
    name = sorted(deltas)[0]
    broken = dict(deltas)
    del broken[name]
    mtp.save_text_path(tmp_path / "missing.safetensors", broken)
    with pytest.raises(InputError, match=r"1 missing \(" + name.replace(".", r"\.")):
        mtp.apply_text_path(fresh, tmp_path / "missing.safetensors")
    extra = dict(deltas) | {"down_blocks.0.attentions.0.proj_in.weight": torch.zeros(1)}
    mtp.save_text_path(tmp_path / "extra.safetensors", extra)
    with pytest.raises(InputError, match="1 unexpected"):
        mtp.apply_text_path(fresh, tmp_path / "extra.safetensors")
    shaped = dict(deltas) | {name: torch.zeros(3, 3)}
    mtp.save_text_path(tmp_path / "shape.safetensors", shaped)
    with pytest.raises(InputError, match="1 of the wrong shape"):
        mtp.apply_text_path(fresh, tmp_path / "shape.safetensors")
    assert getattr(fresh, mtp.APPLIED_ATTR, None) is None  # refused files change nothing
    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v.float() for k, v in deltas.items()}, str(foreign))
    with pytest.raises(InputError, match="is not a motion text path"):
        mtp.read_text_path(foreign)
    (tmp_path / "cut.safetensors").write_bytes((folder / mtp.TEXT_PATH_FILE).read_bytes()[:100])
    with pytest.raises(InputError, match="cannot be read"):
        mtp.read_text_path(tmp_path / "cut.safetensors")
    with pytest.raises(InputError, match="unknown motion text path"):
        mtp.save_text_path(tmp_path / "x.safetensors", deltas, kind="lora")


def test_a_difference_restores_the_trained_tensor_on_its_base():
    """save -> apply on the base gives base + fp16(trained - base): the trained tensor to fp16 rounding
    of the difference."""
    unet = tm.sd_unet(seed=2)
    base = mtp.mark_trainable(unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in mtp.text_path_parameters(unet):
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    trained = {n: p.detach().clone() for n, p in unet.named_parameters() if n in base}
    deltas = mtp.text_path_deltas(unet, base)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = mtp.save_text_path(Path(d) / mtp.TEXT_PATH_FILE, deltas, training={"steps": 1})
        target = tm.sd_unet(seed=2)
        mtp.apply_text_path(target, Path(d))
    params = dict(target.named_parameters())
    for n, want in trained.items():
        exact = base[n] + deltas[n].to(torch.float16).float()
        assert torch.equal(params[n].detach(), exact), n
        assert torch.allclose(params[n].detach(), want, atol=5e-5)  # fp16 rounding of differences up to ~0.04
    assert path.name == mtp.TEXT_PATH_FILE


def test_the_motion_word_probe_sees_the_trained_path_and_is_zero_for_a_word_kept(text_path_run):
    from pathlib import Path

    bench = load_script(Path(__file__).resolve().parents[2] / "benchmarks" / "probe_motion_words.py", "probe_motion_words")
    root, _ = text_path_run
    res = bench.probe(str(root / "sd"), str(root / "adapter"), n=2, frames=3,
                      pairs=[("moves right", "moves right"), ("moves up", "moves down")])
    assert "motion text path" in res["model"] and len(res["sites"]) >= 3
    same, other = res["rows"][0], res["rows"][1]
    assert same["text"] == 0.0 and all(v == 0.0 for t in bench.TIMESTEPS for v in same[f"t{t}"].values())
    # a block before any cross-attention sees no text (0), the later ones do
    assert other["text"] > 0 and all(max(other[f"t{t}"].values()) > 0 for t in bench.TIMESTEPS)
    assert [r["pair"] for r in res["rows"][2:]] == ["reference: red / blue", "reference: on the left / on the right"]
    assert bench.main(["--adapter", str(root / "no-such-adapter")]) == 2  # one line, no traceback


def test_a_continuation_starts_from_the_folders_text_path(text_path_run):
    """``--init`` with a text path: the UNet starts as the loader builds it for sampling (base + the
    folder's differences), and the differences kept after are still taken from the base SD."""
    from diffusers import MotionAdapter, UNetMotionModel

    from attncraft.shapes.training.motion import init_text_path, load_init_adapter

    root, _ = text_path_run
    folder = root / "adapter"
    saved, _ = mtp.read_text_path(folder)
    sd = tm.sd_pipeline(seed=1)
    adapter = load_init_adapter(folder, dict(MotionAdapter.load_config(str(folder))))
    unet = UNetMotionModel.from_unet2d(sd.unet, adapter)
    base = mtp.mark_trainable(unet)
    said = []
    record = init_text_path(unet, folder, say=said.append)
    assert record["from"] == str(folder) and said and "continued from" in said[0]
    params = dict(unet.named_parameters())
    for name, delta in saved.items():
        assert torch.equal(params[name].detach(), base[name] + delta.float()), name
        assert params[name].requires_grad
    deltas = mtp.text_path_deltas(unet, base)
    assert all(torch.equal(deltas[n].half(), saved[n]) for n in saved)
    assert getattr(unet, mtp.APPLIED_ATTR, None) is None
    # a folder without a text path: nothing changes
    plain = tm.sd_unet(seed=1)
    assert init_text_path(plain, root / "sd") is None and init_text_path(plain, None) is None


def test_a_continued_training_records_where_its_text_path_started(text_path_run):
    from attncraft.shapes.training.motion import train_motion

    root, _ = text_path_run
    info = train_motion(_run_args(root / "continued", sd_dir=str(root / "sd"), text_path="cross-kv",
                                  init_dir=str(root / "adapter"), max_steps=2), quiet=True)
    assert info["text_path"]["initialised_from"]["from"] == str(root / "adapter")
    assert info["initialised_from"] is not None


def test_a_continuation_without_the_flag_keeps_the_folders_text_path(text_path_run):
    """``--init`` of a folder with a text path and no ``--text-path``: the path is continued and saved,
    not dropped (the motion modules would otherwise train on the base's cross-attention)."""
    from attncraft.shapes.training.motion import train_motion

    root, _ = text_path_run
    info = train_motion(_run_args(root / "kept", sd_dir=str(root / "sd"), init_dir=str(root / "adapter"), max_steps=2),
                        quiet=True)
    assert info["text_path"]["kind"] == "cross-kv"
    assert info["text_path"]["initialised_from"]["from"] == str(root / "adapter")
    assert mtp.has_text_path(root / "kept")
    saved, _ = mtp.read_text_path(root / "adapter")
    kept, _ = mtp.read_text_path(root / "kept")
    assert kept.keys() == saved.keys()
