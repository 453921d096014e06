"""Conditioning: fps / motion-score embeddings on the time embedding (zeroed layers change nothing,
broadcast over batch and frames), FancyVideo's 9-channel input order, the two DDIM schedulers, the
first frame's pass without motion modules, and the frame arithmetic with its 32-latent-frame cap."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNetMotionModel

import tiny_models as tm
from attncraft.errors import InputError
from attncraft.fancyvideo.conditioning import (
    check_latent_frames,
    condition_embeddings,
    first_frame_scheduler,
    image_condition,
    model_input,
    motion_modules_disabled,
    video_scheduler,
)
from attncraft.fancyvideo.vae import latent_frame_count, video_frame_count
from fancyvideo_models import tiny_parts


@pytest.fixture(scope="module")
def unet_and_parts():
    parts = tiny_parts(seed=1)
    unet = UNetMotionModel.from_unet2d(tm.sd_unet(1), parts.adapter).eval()
    return unet, parts


def _inputs(batch=2, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 9, frames, 8, 8, generator=g), torch.tensor(500),
            torch.randn(batch * frames, 77, 32, generator=g))


@torch.no_grad()
def test_zeroed_fps_and_motion_layers_leave_the_unet_output_unchanged(unet_and_parts):
    unet, parts = unet_and_parts
    sample, t, text = _inputs()
    plain = unet(sample, t, encoder_hidden_states=text).sample
    zeroed = tiny_parts(seed=1, zero_embeddings=True).conditioning
    with condition_embeddings(unet, zeroed, 25.0, 3.0):
        assert torch.equal(unet(sample, t, encoder_hidden_states=text).sample, plain)
    with condition_embeddings(unet, parts.conditioning, 25.0, 3.0):
        assert not torch.allclose(unet(sample, t, encoder_hidden_states=text).sample, plain)
    assert torch.equal(unet(sample, t, encoder_hidden_states=text).sample, plain)  # the hook is gone


@torch.no_grad()
def test_embeddings_are_added_to_the_time_embedding_for_every_row_and_frame(unet_and_parts):
    unet, parts = unet_and_parts
    sample, t, text = _inputs(batch=2, frames=3)
    seen = {}
    resnet = unet.down_blocks[0].resnets[0]

    def grab(module, args, kwargs):
        seen["temb"] = kwargs["temb"] if "temb" in kwargs else args[1]

    handle = resnet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        unet(sample, t, encoder_hidden_states=text)
        base = seen.pop("temb")
        with condition_embeddings(unet, parts.conditioning, 12.0, 2.5):
            unet(sample, t, encoder_hidden_states=text)
        added = seen.pop("temb") - base
    finally:
        handle.remove()
    # the formula, written out: SiLU(L_fps(proj(fps))) + SiLU(L_motion(proj(motion))), proj = the UNet's time_proj
    c = parts.conditioning
    expect = sum(F.silu(F.linear(unet.time_proj(torch.tensor([v])), layer.linear.weight, layer.linear.bias))
                 for v, layer in ((12.0, c.fps_embedding), (2.5, c.motion_embedding)))
    assert added.shape == (2 * 3, 128)  # batch x frames rows, as the timestep embedding
    assert torch.allclose(added, expect.expand_as(added), atol=1e-5)


def test_input_layout_image_latent_and_mask_only_at_frame_zero():
    g = torch.Generator().manual_seed(0)
    latents, image_latent = torch.randn(2, 4, 5, 6, 7, generator=g), torch.randn(1, 4, 6, 7, generator=g)
    image, mask = image_condition(image_latent, 5)
    x = model_input(latents, image, mask)  # guidance: 2 latent rows, 1 condition
    assert x.shape == (2, 9, 5, 6, 7)
    assert torch.equal(x[:, :4], latents)
    for row in x:
        assert torch.equal(row[4:8, 0], image_latent[0])  # FancyVideo's order: image latent in 4..7 ...
        assert torch.count_nonzero(row[4:8, 1:]) == 0
        assert torch.equal(row[8, 0], torch.ones(6, 7)) and torch.count_nonzero(row[8, 1:]) == 0  # ... mask in 8
    empty_image, empty_mask = image_condition(None, 1, (2, 4, 6, 7))  # the first-frame pass
    assert empty_image.abs().sum() == 0 and empty_mask.abs().sum() == 0


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Zero-terminal-SNR rescaling (Lin et al.), written out in the operation order of FancyVideo's
    ``enforce_zero_terminal_snr`` (float32 results then agree bit for bit)."""
    sqrt_bar = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_bar[0].clone(), sqrt_bar[-1].clone()
    sqrt_bar -= last
    sqrt_bar *= first / (first - last)
    bar = sqrt_bar**2
    return 1 - torch.cat([bar[:1], bar[1:] / bar[:-1]])


def test_schedulers_video_v_prediction_with_zero_terminal_snr_and_epsilon_first_frame():
    video, first = video_scheduler(), first_frame_scheduler(video_scheduler())
    plain = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    assert video.config.prediction_type == "v_prediction" and video.alphas_cumprod[-1] == 0
    assert torch.equal(video.betas, _zero_terminal_snr(plain))
    exact = _zero_terminal_snr(plain.double())  # and the math itself, in float64
    assert torch.allclose(video.alphas_cumprod.double(), torch.cumprod(1 - exact, 0), atol=1e-6, rtol=0)
    assert first.config.prediction_type == "epsilon" and first.alphas_cumprod[-1] > 0
    assert torch.equal(first.betas, plain)
    video.set_timesteps(50)
    assert video.timesteps[0] == 981 and video.timesteps[-1] == 1  # "leading" spacing, steps_offset 1


@torch.no_grad()
def test_first_frame_pass_skips_the_motion_modules(unet_and_parts):
    unet, _ = unet_and_parts
    sample, t, text = _inputs(batch=1, frames=1)
    with motion_modules_disabled(unet):
        skipped = unet(sample, t, encoder_hidden_states=text).sample
    with_motion = unet(sample, t, encoder_hidden_states=text).sample  # restored afterwards
    identity = UNetMotionModel.from_unet2d(tm.sd_unet(1), tiny_parts(seed=1).adapter).eval()
    for block in (*identity.down_blocks, identity.mid_block, *identity.up_blocks):
        for module in block.motion_modules or ():
            module.proj_out.weight.zero_()
            module.proj_out.bias.zero_()  # a motion module is then exactly the identity
    assert torch.equal(skipped, identity(sample, t, encoder_hidden_states=text).sample)
    assert not torch.allclose(with_motion, skipped)


def test_frame_arithmetic_and_the_32_latent_frame_cap(unet_and_parts):
    unet, _ = unet_and_parts
    assert latent_frame_count(61) == 16 and latent_frame_count(125) == 32 and latent_frame_count(1) == 1
    assert video_frame_count(16) == 61 and video_frame_count(32) == 125
    with pytest.raises(InputError, match="pass 61 or 65 frames"):
        latent_frame_count(62)
    check_latent_frames(unet, 32)
    with pytest.raises(InputError, match="33 latent frames exceed the motion modules' limit of 32 latent frames "
                                         r"\(125 video frames\)"):
        check_latent_frames(unet, latent_frame_count(129))
