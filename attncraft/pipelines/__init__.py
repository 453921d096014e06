"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

<<<<<<< HEAD
* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs.
* :mod:`.prompt_to_prompt` - :class:`PromptToPromptPipeline` (SDXL: ``PromptToPromptXLPipeline``):
  Prompt-to-Prompt edits of generated images.
* :mod:`.inversion` - DDIM and null-text inversion, the saved :class:`Inversion`.
* :mod:`.dpl` - :class:`RealImageEditPipeline` (SDXL: ``RealImageEditXLPipeline``): invert a real
  image, optionally with DPL's dynamic tokens, and edit it with Prompt-to-Prompt.

The technique pipelines import diffusers' pipeline classes, so they load on first use.
=======
* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs;
* :mod:`.text_to_video` - AnimateDiff text-to-video with per-frame prompt schedules
  (:class:`TextToVideoPipeline`), reproducible video outputs;
* :mod:`.realcustom` - :class:`RealCustomPipeline` (SD 1.x/2.x, Shapes SD) and
  :class:`RealCustomXLPipeline` (SDXL), imported on first use (they import the diffusers pipelines).
>>>>>>> main
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images
from attncraft.pipelines.text_to_video import (
    TextToVideoPipeline,
    TextToVideoSettings,
    default_video_settings,
    generate_video,
    save_video,
)

<<<<<<< HEAD
_LAZY = {
    "PromptToPromptPipeline": "attncraft.pipelines.prompt_to_prompt",
    "PromptToPromptXLPipeline": "attncraft.pipelines.prompt_to_prompt",
    "RealImageEditPipeline": "attncraft.pipelines.dpl",
    "RealImageEditXLPipeline": "attncraft.pipelines.dpl",
    "Inversion": "attncraft.pipelines.inversion",
    "NullTextSettings": "attncraft.pipelines.inversion",
}
=======
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
>>>>>>> main


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

<<<<<<< HEAD
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attncraft.pipelines' has no attribute {name!r}")


__all__ = ["TextToImageSettings", "default_settings", "generate", "save_images", *_LAZY]
=======
        return getattr(importlib.import_module(f"attncraft.pipelines.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'attncraft.pipelines' has no attribute {name!r}")
>>>>>>> main
