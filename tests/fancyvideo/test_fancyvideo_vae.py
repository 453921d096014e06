"""CV-VAE: 4x temporal compression (1 + (N-1)//4 latent frames, 4L - 3 decoded), causal encoder
convolutions, the upsampler's frame order, tiles and pieces as the released model runs them, the
released parameter names, and strict loading."""

from __future__ import annotations

import pytest
import torch

from attncraft.errors import ModelLoadError
from attncraft.fancyvideo.vae import CausalConv3d, CVVAEModel, Downsample3D, Upsample3D, _tiled, load_cv_vae
from fancyvideo_models import tiny_cv_vae


def _video(frames, size=32, seed=0):
    return torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@torch.no_grad()
def test_frame_and_size_arithmetic():
    vae = tiny_cv_vae()
    assert vae.temporal_compression == 4 and vae.spatial_compression == 8
    latent = vae.encode(_video(9)).latent_dist
    assert latent.mode().shape == (1, 4, 3, 4, 4)  # 1 + (9 - 1) // 4 latent frames
    assert vae.encode(_video(1)[:, :, 0]).latent_dist.mode().shape == (1, 4, 1, 4, 4)  # an image: one frame
    assert vae.decode(latent.mode()).sample.shape == (1, 3, 9, 32, 32)  # 4L - 3 frames
    assert vae.num_latent_frames(61) == 16 and vae.num_video_frames(32) == 125


@torch.no_grad()
def test_encoder_convolutions_are_causal_in_time():
    torch.manual_seed(0)
    for layer in (CausalConv3d(4, 4, kernel_size=3, padding=1), Downsample3D(4, down_time=True)):
        x = torch.randn(1, 4, 7, 6, 6)
        y = x.clone()
        y[:, :, 4:] += 1  # change frames 4..6 only
        a, b = layer(x), layer(y)
        stride = 2 if isinstance(layer, Downsample3D) else 1
        keep = 4 if stride == 1 else 2  # outputs that read only frames < 4 (frames t-2..t; stride 2: 2s-2..2s)
        assert torch.equal(a[:, :, :keep], b[:, :, :keep])
        assert not torch.equal(a, b)
    assert Downsample3D(4, down_time=True)(torch.randn(1, 4, 9, 8, 8)).shape[2] == 5


@torch.no_grad()
def test_upsampler_turns_channel_halves_into_frames_and_drops_the_first():
    torch.manual_seed(0)
    up = Upsample3D(4, up_time=True)
    captured = {}
    up.conv.register_forward_hook(lambda m, i, o: captured.setdefault("y", o))
    out = up(torch.randn(1, 4, 3, 2, 2))
    y = captured["y"]  # (1, 8, 3, 4, 4): channels [frame 2t | frame 2t + 1]
    assert out.shape == (1, 4, 5, 4, 4)  # 2T - 1
    assert torch.equal(out[:, :, 0], y[:, 4:, 0])  # (t0, second half); (t0, first half) is dropped
    assert torch.equal(out[:, :, 1], y[:, :4, 1]) and torch.equal(out[:, :, 2], y[:, 4:, 1])
    assert torch.equal(out[:, :, 3], y[:, :4, 2]) and torch.equal(out[:, :, 4], y[:, 4:, 2])


@torch.no_grad()
def test_tiles_and_pieces():
    x = torch.randn(1, 2, 3, 20, 17)
    assert torch.allclose(_tiled(x, lambda t: t.clone(), 8, 6, 2, 6), x, atol=1e-6)  # blending identical overlaps
    vae = tiny_cv_vae()
    untiled = tiny_cv_vae(tile_spatial_size=None, en_de_n_frames_a_time=None)
    small = _video(5)
    # one tile covers 32 px, one piece 4 + 1 frames: the same as no tiling at all
    assert torch.equal(vae.encode(small).latent_dist.mode(), untiled.encode(small).latent_dist.mode())
    # a second piece keeps the first piece's latents as they are
    long = torch.cat([small, _video(4, seed=1)], dim=2)
    assert torch.equal(vae.encode(long).latent_dist.mode()[:, :, :2], vae.encode(small).latent_dist.mode())
    # 48 px: two overlapping tiles in each direction, cut back to 48 px (6 latent)
    assert vae.encode(_video(1, size=48)).latent_dist.mode().shape == (1, 4, 1, 6, 6)
    assert vae.decode(torch.randn(1, 4, 2, 6, 6)).sample.shape == (1, 3, 5, 48, 48)


def test_released_parameter_names_and_strict_loading(tmp_path):
    vae = tiny_cv_vae()
    state = vae.state_dict()
    for key, shape in (("encoder.conv_in.weight", (32, 3, 3, 3, 3)), ("encoder.down.0.block.0.conv2.weight", (32, 32, 3, 3)),
                       ("encoder.down.0.downsample.conv.weight", (32, 32, 3, 3, 3)), ("encoder.mid.attn_1.q.weight", (32, 32, 1, 1)),
                       ("encoder.conv_out.weight", (8, 32, 3, 3, 3)), ("decoder.mid.attn_1.q_t.weight", (32, 32)),
                       ("decoder.mid.attn_1.norm_t.weight", (32,)), ("decoder.up.1.upsample.conv.weight", (64, 32, 3, 3, 3)),
                       ("decoder.up.2.upsample.conv.weight", (32, 32, 3, 3, 3)), ("decoder.up.0.block.1.norm1.weight", (32,))):
        assert tuple(state[key].shape) == shape, key
    assert not any("quant_conv" in k for k in state)  # CV-VAE has no (post_)quant_conv
    vae.save_pretrained(tmp_path / "CV-VAE" / "vae3d")
    loaded = load_cv_vae(tmp_path / "CV-VAE")  # the released folder; its vae3d subfolder is found
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "CV-VAE" / "vae3d" / "diffusion_pytorch_model.safetensors"
    altered = load_file(weights)
    altered.pop("decoder.mid.attn_1.q_t.bias")
    save_file(altered, weights)
    with pytest.raises(ModelLoadError, match="1 missing, 0 unexpected, 0 mis-shaped tensors, e.g. decoder.mid.attn_1.q_t.bias"):
        load_cv_vae(tmp_path / "CV-VAE")


def test_default_config_is_the_released_architecture():
    with torch.device("meta"):
        vae = CVVAEModel()
    assert vae.temporal_compression == 4 and vae.spatial_compression == 8
    widths = [vae.encoder.down[i].block[-1].out_channels for i in range(4)]
    assert widths == [128, 256, 512, 512] and len(vae.decoder.up[0].block) == 3
    assert [hasattr(vae.encoder.down[i], "downsample") and vae.encoder.down[i].downsample.down_time for i in range(4)] == \
        [True, False, True, False]
    assert [vae.decoder.up[i].upsample.factor if hasattr(vae.decoder.up[i], "upsample") else None for i in range(4)] == \
        [None, 2, 1, 2]
