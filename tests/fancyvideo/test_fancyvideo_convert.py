"""Converter: DeepSpeed and single-file layouts round trip into diffusers folders strictly; the
9-channel conv_in keeps the base model's first 4 channels; pickles are refused without the flag and
a payload inside one never runs; every altered or missing tensor is named."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import MotionAdapter, UNetMotionModel

import tiny_models as tm
from attncraft.errors import ModelLoadError
from attncraft.fancyvideo.conditioning import FancyVideoConditioning
from attncraft.fancyvideo.convert import convert_fancyvideo, convert_state_dict, load_fancyvideo_adapter
from attncraft.fancyvideo.synthetic import build_synthetic_checkpoint, fancyvideo_tensors, motion_module_shapes

_RENAMES = ((".temporal_transformer.", "."), (".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."),
            (".norms.0.", ".norm1."), (".norms.1.", ".norm2."), (".ff_norm.", ".norm3."))


def diffusers_name(original: str) -> str:
    """Where an original AnimateDiff tensor must land in a diffusers MotionAdapter (written out here,
    independently of the converter)."""
    for old, new in _RENAMES:
        original = original.replace(old, new)
    return original


def test_deepspeed_round_trip_every_tensor_lands_where_expected(fancyvideo_folders, tmp_path):
    tensors = fancyvideo_tensors("tiny", seed=3)
    out = tmp_path / "converted"
    parts = convert_fancyvideo(fancyvideo_folders["checkpoint"], out, trust_pickle=True)
    # the folder loads with diffusers alone, strictly
    adapter, info = MotionAdapter.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert adapter.config.conv_in_channels == 9 and adapter.config.use_motion_mid_block
    assert adapter.config.motion_max_seq_length == 32
    state = adapter.state_dict()
    motion = [k for k in tensors if "motion_modules." in k and not k.endswith(".pe")]
    assert len(motion) == parts.report.kept["motion-module tensors"] == 182
    for key in motion:
        assert torch.equal(state[diffusers_name(key)], tensors[key]), key
    assert torch.equal(state["conv_in.weight"], tensors["conv_in.weight"])
    # the frame-position tables diffusers rebuilds are the file's
    for key in (k for k in tensors if k.endswith("pos_encoder.pe")):
        name = diffusers_name(key).replace(".attn1.pos_encoder.pe", ".pos_embed.pe").replace(".attn2.pos_encoder.pe", ".pos_embed.pe")
        assert torch.allclose(state[name], tensors[key], atol=1e-6), key
    conditioning = FancyVideoConditioning.from_pretrained(out / "conditioning")
    for key, value in conditioning.state_dict().items():
        assert torch.equal(value, tensors[key]), key
    report = json.loads((out / "conversion.json").read_text())
    assert report["layout"] == "deepspeed"
    spatial = [k for k in tm.sd_unet(1).state_dict() if not k.startswith("conv_in.")]
    assert report["ignored"] == {"spatial UNet tensors (the base model's are used)": len(spatial)}
    # the single-file layout of the same tensors converts to the same adapter
    single = load_fancyvideo_adapter(fancyvideo_folders["single"])
    assert single.report.layout == "single-file"
    for key, value in single.adapter.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_conv_in_keeps_the_base_models_first_four_channels_and_bias():
    unet2d = tm.sd_unet(5)
    parts = convert_state_dict(fancyvideo_tensors("tiny", seed=6))
    checkpoint_weight = parts.adapter.conv_in.weight.detach().clone()
    unet = UNetMotionModel.from_unet2d(unet2d, parts.adapter)
    assert unet.config.in_channels == 9
    assert torch.equal(unet.conv_in.weight[:, :4], unet2d.conv_in.weight)
    assert torch.equal(unet.conv_in.weight[:, 4:], checkpoint_weight[:, 4:])
    assert torch.equal(unet.conv_in.bias, unet2d.conv_in.bias)


def _payload_checkpoint(path, marker):
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    return build_synthetic_checkpoint(path, seed=2, extra={"client_state": Payload()})


def test_pickles_are_refused_without_the_flag_and_a_payload_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "mp_rank_00_model_states.pt"
    tensors = _payload_checkpoint(ckpt, marker)
    with pytest.raises(ModelLoadError, match="--trust-pickle") as info:
        convert_fancyvideo(ckpt, tmp_path / "out")
    assert "not opened" in str(info.value) and not (tmp_path / "out").exists() and not marker.exists()
    parts = convert_fancyvideo(ckpt, tmp_path / "out", trust_pickle=True)
    assert not marker.exists(), "the pickle's payload ran"
    assert parts.report.placeholders == ["builtins.exec"]
    assert torch.equal(parts.conditioning.fps_embedding.linear.weight, tensors["fps_embedding.linear.weight"])
    # nothing existing is replaced without --overwrite
    from attncraft.errors import InputError

    with pytest.raises(InputError, match="--overwrite"):
        convert_fancyvideo(ckpt, tmp_path / "out", trust_pickle=True)
    convert_fancyvideo(ckpt, tmp_path / "out", trust_pickle=True, overwrite=True)
    assert not marker.exists()


@pytest.mark.parametrize("change, named", [
    (lambda t: t.pop("mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.to_q.weight"),
     "1 missing \\(e.g. mid_block.motion_modules.0.transformer_blocks.0.attn2.to_q.weight"),
    (lambda t: t.update({"down_blocks.0.motion_modules.0.temporal_transformer.extra.weight": torch.zeros(1)}),
     "1 unexpected \\(e.g. down_blocks.0.motion_modules.0.extra.weight"),
    (lambda t: t.pop("motion_embedding.linear.bias"), "motion_embedding.linear.bias"),
    (lambda t: t.pop("conv_in.weight"), "conv_in.weight"),
    (lambda t: t["up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"]
     .mul_(1.01), "frame-position table up_blocks.1.motion_modules.1"),
])
def test_any_missing_unexpected_or_altered_tensor_is_named(change, named):
    tensors = fancyvideo_tensors("tiny")
    change(tensors)
    with pytest.raises(ModelLoadError, match=named):
        convert_state_dict(tensors)


def test_ctgm_and_spatial_tensors_are_reported_not_loaded():
    tensors = fancyvideo_tensors("tiny") | {"down_blocks.1.attentions.0.ctm_b_self_modules.0.proj_in.weight": torch.zeros(2),
                                             "time_embedding.linear_1.weight": torch.zeros(2)}
    report = convert_state_dict(tensors).report
    assert report.ignored == {"CTGM tensors (not part of the released model)": 1,
                              "spatial UNet tensors (the base model's are used)": 1}


def test_a_converted_folder_missing_a_tensor_is_refused(fancyvideo_folders, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "adapter"
    shutil.copytree(fancyvideo_folders["adapter"], folder)
    weights = folder / "conditioning" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state.pop("fps_embedding.linear.weight")
    save_file(state, weights)
    with pytest.raises(ModelLoadError, match="1 missing"):
        load_fancyvideo_adapter(folder)


def test_full_size_layout_fills_a_default_motion_adapter_exactly():
    """SD 1.5 size, shapes only (meta tensors): the converted names and shapes are exactly those of
    diffusers' default MotionAdapter with conv_in_channels=9 (453.21 M motion parameters)."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    shapes = motion_module_shapes()
    assert round(sum(math.prod(s) for k, s in shapes.items() if not k.endswith(".pe")) / 1e6, 2) == 453.21
    converted = convert_animatediff_checkpoint_to_diffusers({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    with torch.device("meta"):
        adapter = MotionAdapter(conv_in_channels=9)
        conditioning = FancyVideoConditioning()
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    got = {k: tuple(v.shape) for k, v in converted.items()} | {"conv_in.weight": (320, 9, 3, 3), "conv_in.bias": (320,)}
    assert got == expected
    assert sum(p.numel() for p in conditioning.parameters()) == 2 * (320 * 1280 + 1280)  # 0.82 M
    assert adapter.conv_in.weight[:, 4:].numel() == 320 * 5 * 9  # the 14,400 extra conv_in weights
