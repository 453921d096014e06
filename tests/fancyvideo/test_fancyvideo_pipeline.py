"""FancyVideoPipeline: diffusers' standard behaviours, text-to-video equal to image-to-video from
its own first frame, the fps / motion-score conditions, the SD-VAE stand-in's frame arithmetic, and
one-line errors before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncraft.errors import InputError
from fancyvideo_models import CALL, tiny_fancyvideo_pipeline
from pipeline_checks import generate, run_standard_checks


def _run(pipe, seed=0, **extra):
    return pipe(**(CALL | extra), generator=torch.Generator().manual_seed(seed), output_type="np")


@pytest.mark.slow
def test_behaves_like_a_diffusers_pipeline(tmp_path):
    run_standard_checks(lambda: tiny_fancyvideo_pipeline(seed=0), CALL, tmp_path)


def test_text_to_video_is_image_to_video_from_its_first_frame():
    from PIL import Image

    pipe = tiny_fancyvideo_pipeline()
    steps = []
    text = _run(pipe, first_frame_callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw)
    assert steps == [0, 1] and text.frames.shape == (1, 5, 32, 32, 3)
    first = Image.fromarray((text.first_frames[0] * 255).round().astype(np.uint8))
    image = _run(pipe, image=first)
    assert image.first_frames is None
    assert np.array_equal(image.frames, text.frames)
    other = _run(pipe, image=Image.fromarray(np.full((32, 32, 3), 200, np.uint8)))
    assert not np.allclose(other.frames, text.frames)


def test_fps_and_motion_score_condition_the_video_and_zeroed_layers_ignore_them():
    from PIL import Image

    image = Image.fromarray(np.full((32, 32, 3), 120, np.uint8))
    pipe = tiny_fancyvideo_pipeline()
    base = _run(pipe, image=image, fps=25, motion_score=3.0).frames
    assert not np.allclose(_run(pipe, image=image, fps=8, motion_score=3.0).frames, base)
    assert not np.allclose(_run(pipe, image=image, fps=25, motion_score=9.0).frames, base)
    assert np.array_equal(_run(pipe, image=image).frames, base)  # the defaults are 25 and 3
    zeroed = tiny_fancyvideo_pipeline(zero_embeddings=True)
    assert np.array_equal(_run(zeroed, image=image, fps=8, motion_score=0).frames,
                          _run(zeroed, image=image, fps=25, motion_score=3).frames)


def test_sd_vae_stand_in_makes_one_frame_per_latent_frame():
    pipe = tiny_fancyvideo_pipeline(sd_vae=True)
    assert pipe.temporal_compression == 1 and pipe.default_num_frames() == 16
    assert generate(pipe, CALL | dict(num_frames=3)).shape == (1, 3, 32, 32, 3)


def test_errors_come_before_any_work():
    pipe = tiny_fancyvideo_pipeline()
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(InputError, match="pass 5 or 9 frames"):
        pipe(**(CALL | dict(num_frames=6)))
    with pytest.raises(InputError, match="limit of 32 latent frames"):
        pipe(**(CALL | dict(num_frames=129)))
    with pytest.raises(InputError, match="2 images were given for 3 prompts"):
        from PIL import Image

        blank = Image.new("RGB", (32, 32))
        pipe(**(CALL | dict(prompt=["a", "b", "c"])), image=[blank, blank])
    assert not calls


def test_non_square_clips_and_techniques_on_the_video_stage():
    from PIL import Image

    from attncraft.attention_processors import AttentionStore, select_layers

    pipe = tiny_fancyvideo_pipeline()
    store = AttentionStore(select_layers(kinds="temporal"))
    frames = _run(pipe, image=Image.new("RGB", (64, 40), (90, 20, 200)), width=48, techniques=[store]).frames
    assert frames.shape == (1, 5, 32, 48, 3)
    maps = store.layer_maps()
    assert maps and all(m.shape[-2:] == (2, 2) for m in maps.values())  # attention over the 2 latent frames
    assert all(store.recorded_count(name) == 2 for name in maps)  # one per video step
