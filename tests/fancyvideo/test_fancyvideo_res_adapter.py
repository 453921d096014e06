"""ResAdapter: the LoRA merged into the sampler convolutions equals the LoRA branch it replaces (at
the reference's 1/r scale or the file's alpha/r), the norm weights are loaded, and anything that does
not fit is named."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import tiny_models as tm
from attncraft.errors import ModelLoadError
from attncraft.fancyvideo.res_adapter import LORA_FILE, NORM_FILE, apply_res_adapter
from attncraft.fancyvideo.synthetic import build_synthetic_res_adapter


@pytest.mark.parametrize("scale, alpha, expected", [("reference", 4.0, 1 / 16), ("file", 4.0, 4 / 16), ("file", None, 1.0)])
def test_merged_lora_equals_the_lora_branch_and_norms_are_loaded(tmp_path, scale, alpha, expected):
    unet = tm.sd_unet(0)
    folder = build_synthetic_res_adapter(tmp_path / "res", unet, alpha=alpha)
    conv = unet.down_blocks[0].downsamplers[0].conv
    x = torch.randn(1, conv.in_channels, 8, 8)
    lora = load_file(folder / LORA_FILE)
    down, up = lora["lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight"], lora["lora_unet_down_blocks_0_downsamplers_0_conv.lora_up.weight"]
    with torch.no_grad():
        # the LoRA branch, written out: down (3x3 with the layer's stride and padding), then up (1x1)
        expect = conv(x) + expected * F.conv2d(F.conv2d(x, down, stride=conv.stride, padding=conv.padding), up)
        counts = apply_res_adapter(unet, folder, scale=scale)
        assert torch.allclose(conv(x), expect, atol=1e-5)
    assert counts["lora layers"] == 2  # the tiny UNet: one downsampler, one upsampler
    for key, value in load_file(folder / NORM_FILE).items():
        assert torch.equal(unet.state_dict()[key], value), key


@pytest.mark.parametrize("edit, named", [
    (lambda lora, norms: lora.update({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(1)}),
     "not a sampler-convolution LoRA tensor"),
    (lambda lora, norms: lora.pop("lora_unet_up_blocks_0_upsamplers_0_conv.lora_up.weight"), "lacks its lora_up"),
    (lambda lora, norms: lora.update({"lora_unet_down_blocks_5_downsamplers_0_conv.lora_up.weight": torch.zeros(1)}),
     "down_blocks.5.downsamplers.0.conv, which this UNet does not have"),
    (lambda lora, norms: norms.update({"mid_block.norm_x.weight": torch.zeros(3)}), "mid_block.norm_x.weight does not fit"),
])
def test_anything_that_does_not_fit_is_named(tmp_path, edit, named):
    unet = tm.sd_unet(0)
    folder = build_synthetic_res_adapter(tmp_path / "res", unet)
    lora, norms = load_file(folder / LORA_FILE), load_file(folder / NORM_FILE)
    edit(lora, norms)
    save_file(lora, folder / LORA_FILE)
    save_file(norms, folder / NORM_FILE)
    with pytest.raises(ModelLoadError, match=named):
        apply_res_adapter(unet, folder)
