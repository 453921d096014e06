"""Given initial latents of any float dtype: every attncraft pipeline casts them to the UNet's dtype and
device before diffusers scales them, so float32 noise on a float16 pipeline runs and equals the run
given the same noise already cast. (diffusers' own pipelines fail there: shown first.)"""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import AnimateDiffPipeline, StableDiffusionPipeline

import tiny_models as tm
from attncraft.errors import InputError
from attncraft.pipelines.latents import UserLatentsMixin, cast_latents

DTYPE = torch.float16  # CPU convolutions, matmuls and norms run in float16 in the torch this project uses
VIDEO = dict(prompt="a red circle", num_frames=4, num_inference_steps=2, height=64, width=64, guidance_scale=2.0,
             output_type="latent")
IMAGE = dict(num_inference_steps=2, height=32, width=32, guidance_scale=2.0, output_type="latent")


def _noise(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))  # float32


@pytest.fixture(scope="module")
def half_video():
    stock = tm.animatediff_pipeline(seed=0).to(DTYPE)
    stock.set_progress_bar_config(disable=True)
    return stock


def test_stock_animatediff_fails_on_float32_latents_in_float16(half_video):
    with pytest.raises(RuntimeError, match="same"):
        half_video(latents=_noise(1, 4, 4, 8, 8), **VIDEO)


def test_video_pipeline_takes_float32_latents_in_float16(half_video):
    from attncraft.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pipe(half_video).to(DTYPE)  # from_pipe rebuilds the motion UNet in float32
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == DTYPE
    noise = _noise(1, 4, 4, 8, 8)
    out = pipe(latents=noise, **VIDEO).frames
    ref = pipe(latents=noise.to(DTYPE), **VIDEO).frames
    assert out.dtype == DTYPE and torch.isfinite(out).all()
    assert torch.equal(out, ref)


def test_prompt_to_prompt_pipeline_takes_float32_latents_in_float16():
    from attncraft.pipelines.prompt_to_prompt import PromptToPromptPipeline

    stock = tm.sd_pipeline(seed=0).to(DTYPE)
    stock.set_progress_bar_config(disable=True)
    noise = _noise(1, 4, 4, 4)
    with pytest.raises(RuntimeError, match="same"):
        StableDiffusionPipeline(**stock.components)(["a red circle"], latents=noise, **IMAGE)
    pipe = PromptToPromptPipeline.from_pipe(stock).to(DTYPE)  # from_pipe gives float32 unless told
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.dtype == DTYPE
    prompts = ["a red circle", "a blue circle"]
    out = pipe(prompts, latents=noise, **IMAGE).images
    assert out.dtype == DTYPE
    assert torch.equal(out, pipe(prompts, latents=noise.to(DTYPE), **IMAGE).images)


def _project_pipeline_classes():
    import attncraft.pipelines as pipelines

    names = [n for n in pipelines._LAZY if n.endswith("Pipeline")] + ["TextToVideoPipeline"]
    return [getattr(pipelines, n) for n in names]


@pytest.mark.parametrize("cls", _project_pipeline_classes(), ids=lambda c: c.__name__)
def test_every_pipeline_class_taking_latents_casts_them(cls):
    """Each project pipeline whose call (or its diffusers base's) takes ``latents`` has the mixin, and the
    mixin's ``prepare_latents`` is the one that runs (before diffusers')."""
    base = next(b for b in cls.__mro__ if b.__module__.startswith("diffusers."))
    takes = "latents" in inspect.signature(cls.__call__).parameters or (
        "kwargs" in inspect.signature(cls.__call__).parameters and "latents" in inspect.signature(base.__call__).parameters
    )
    if not takes:
        pytest.skip(f"{cls.__name__} takes no initial latents")
    assert issubclass(cls, UserLatentsMixin)
    assert cls.prepare_latents is UserLatentsMixin.prepare_latents


def test_non_float_latents_are_refused_with_a_clear_message():
    with pytest.raises(InputError, match="floating-point") as info:
        cast_latents(torch.zeros(1, 4, 8, 8, dtype=torch.int64), DTYPE, "cpu")
    assert "\n" not in str(info.value)
    x = _noise(1, 4, 8, 8)
    assert torch.equal(cast_latents(x, torch.bfloat16, None), x.to(torch.bfloat16))


def test_stock_reference_is_the_stock_class():
    """The failing reference above is diffusers' pipeline, not ours (so the fix is what makes ours pass)."""
    assert not issubclass(AnimateDiffPipeline, UserLatentsMixin)
    assert not issubclass(StableDiffusionPipeline, UserLatentsMixin)


def test_the_zeroed_motion_copy_leaves_the_half_precision_pipeline_as_it_was(half_video):
    """The motion evaluation's image-model-per-frame copy shares the text encoder and VAE with the pipeline it
    is made from; making it must not cast them (diffusers' from_pipe does, to float32, unless given a dtype),
    or the pipeline's next float16 run fails."""
    from attncraft.pipelines.text_to_video import TextToVideoPipeline
    from attncraft.shapes.training.motion_eval import _zeroed_copy

    pipe = TextToVideoPipeline.from_pipe(half_video).to(DTYPE)
    pipe.set_progress_bar_config(disable=True)
    before = pipe(generator=torch.Generator().manual_seed(1), **VIDEO).frames
    copy = _zeroed_copy(pipe)
    assert {pipe.text_encoder.dtype, pipe.vae.dtype, pipe.unet.dtype, copy.unet.dtype} == {DTYPE}
    after = pipe(generator=torch.Generator().manual_seed(1), **VIDEO).frames
    assert torch.equal(before, after)
