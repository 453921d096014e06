"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs;
* :mod:`.text_to_video` - AnimateDiff text-to-video with per-frame prompt schedules
  (:class:`TextToVideoPipeline`), reproducible video outputs;
* :mod:`.realcustom` - :class:`RealCustomPipeline` (SD 1.x/2.x, Shapes SD) and
  :class:`RealCustomXLPipeline` (SDXL), imported on first use (they import the diffusers pipelines).
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images
from attncraft.pipelines.text_to_video import (
    TextToVideoPipeline,
    TextToVideoSettings,
    default_video_settings,
    generate_video,
    save_video,
)

_LAZY = {"RealCustomPipeline": "realcustom", "RealCustomXLPipeline": "realcustom"}

__all__ = [
    "RealCustomPipeline",
    "RealCustomXLPipeline",
    "TextToImageSettings",
    "TextToVideoPipeline",
    "TextToVideoSettings",
    "default_settings",
    "default_video_settings",
    "generate",
    "generate_video",
    "save_images",
    "save_video",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"attncraft.pipelines.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'attncraft.pipelines' has no attribute {name!r}")
