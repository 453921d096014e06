"""Fixtures of the video tests: tiny model folders on disk (built once per session) and pipelines."""

from __future__ import annotations

import pytest
from diffusers import AnimateDiffPipeline

import tiny_models as tm
from video_models import tiny_adapter


@pytest.fixture(scope="session")
def video_folders(tmp_path_factory):
    """{"sd": SD folder, "adapter": MotionAdapter folder} of tiny random models that fit each other."""
    root = tmp_path_factory.mktemp("video-models")
    tm.sd_pipeline(seed=1).save_pretrained(root / "sd")
    tiny_adapter(seed=2).save_pretrained(root / "adapter")
    return {"sd": root / "sd", "adapter": root / "adapter"}


@pytest.fixture(scope="module")
def stock_pipe() -> AnimateDiffPipeline:
    return tm.animatediff_pipeline(seed=0)


@pytest.fixture(scope="module")
def video_pipe(stock_pipe):
    from attncraft.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pipe(stock_pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe
