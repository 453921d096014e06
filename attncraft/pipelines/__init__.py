"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs;
* :mod:`.text_to_video` - AnimateDiff text-to-video with per-frame prompt schedules
  (:class:`TextToVideoPipeline`), reproducible video outputs;
* :mod:`.fancyvideo` - :class:`FancyVideoPipeline`: the released FancyVideo model (image-to-video and
  two-stage text-to-video);
* :mod:`.realcustom` - :class:`RealCustomPipeline` (SD 1.x/2.x, Shapes SD) and
  :class:`RealCustomXLPipeline` (SDXL);
* :mod:`.prompt_to_prompt` - :class:`PromptToPromptPipeline` (SDXL: ``PromptToPromptXLPipeline``):
  Prompt-to-Prompt edits of generated images;
* :mod:`.inversion` - DDIM and null-text inversion, the saved :class:`Inversion`;
* :mod:`.dpl` - :class:`RealImageEditPipeline` (SDXL: ``RealImageEditXLPipeline``): invert a real
  image, optionally with DPL's dynamic tokens, and edit it with Prompt-to-Prompt.

The technique pipelines are imported on first use (they import the diffusers pipelines).
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images
from attncraft.pipelines.text_to_video import (
    TextToVideoPipeline,
    TextToVideoSettings,
    default_video_settings,
    generate_video,
    save_video,
)

_LAZY = {
    "RealCustomPipeline": "realcustom",
    "RealCustomXLPipeline": "realcustom",
    "PromptToPromptPipeline": "prompt_to_prompt",
    "PromptToPromptXLPipeline": "prompt_to_prompt",
    "FancyVideoPipeline": "fancyvideo",
    "RealImageEditPipeline": "dpl",
    "RealImageEditXLPipeline": "dpl",
    "Inversion": "inversion",
    "NullTextSettings": "inversion",
}

__all__ = [
    "FancyVideoPipeline",
    "Inversion",
    "NullTextSettings",
    "PromptToPromptPipeline",
    "PromptToPromptXLPipeline",
    "RealCustomPipeline",
    "RealCustomXLPipeline",
    "RealImageEditPipeline",
    "RealImageEditXLPipeline",
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
