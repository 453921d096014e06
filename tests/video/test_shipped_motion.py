"""The shipped Shapes motion adapter (skipped until ``assets/models/shapes-motion`` holds it): it loads
offline as a MotionAdapter, fits within its size budget, and a fixed-seed single-motion prompt at the
default settings is read back by the reader as the motion it asks for."""

from __future__ import annotations

import pytest

from attncraft.shapes.models import SHAPES_MOTION_DIR, trained_shapes_motion_available

pytestmark = pytest.mark.skipif(not trained_shapes_motion_available(),
                                reason="the Shapes motion adapter is not trained yet (assets/models/shapes-motion)")


def test_adapter_loads_offline_in_fp16_within_budget():
    from diffusers import MotionAdapter

    from attncraft.shapes.models import shapes_motion_config

    adapter = MotionAdapter.from_pretrained(SHAPES_MOTION_DIR, local_files_only=True)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in adapter.config.items()}
    assert shapes_motion_config().items() <= config.items()
    size = sum(p.stat().st_size for p in SHAPES_MOTION_DIR.glob("*.safetensors"))
    assert size <= 6 * 10**6


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the shipped Shapes motion adapter hardly reads the motion from the caption: "
                   "the stated motion happens in 12-15 % of single-motion prompts (model card); passes once it does")
def test_a_single_motion_prompt_is_read_back_correct():
    from attncraft.loading import load_text_to_video
    from attncraft.pipelines.text_to_video import default_video_settings, generate_video
    from attncraft.shapes.scoring import score_video

    loaded = load_text_to_video("shapes")
    assert "stand-in" not in loaded.label
    prompt = "a big red circle on the left moves right, on a gray background"  # the demo's video
    settings = default_video_settings(loaded, prompt)
    frames = generate_video(loaded, settings, output_type="np").frames[0]
    scores = score_video(frames, prompt)
    assert scores["move"] == 1.0 and scores["color"] == 1.0 and scores["shape"] == 1.0, scores
    assert scores["identity"] >= 0.9, scores
