"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs.
* :mod:`.prompt_to_prompt` - :class:`PromptToPromptPipeline` (SDXL: ``PromptToPromptXLPipeline``):
  Prompt-to-Prompt edits of generated images.
* :mod:`.inversion` - DDIM and null-text inversion, the saved :class:`Inversion`.
* :mod:`.dpl` - :class:`RealImageEditPipeline` (SDXL: ``RealImageEditXLPipeline``): invert a real
  image, optionally with DPL's dynamic tokens, and edit it with Prompt-to-Prompt.

The technique pipelines import diffusers' pipeline classes, so they load on first use.
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images

_LAZY = {
    "PromptToPromptPipeline": "attncraft.pipelines.prompt_to_prompt",
    "PromptToPromptXLPipeline": "attncraft.pipelines.prompt_to_prompt",
    "RealImageEditPipeline": "attncraft.pipelines.dpl",
    "RealImageEditXLPipeline": "attncraft.pipelines.dpl",
    "Inversion": "attncraft.pipelines.inversion",
    "NullTextSettings": "attncraft.pipelines.inversion",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attncraft.pipelines' has no attribute {name!r}")


__all__ = ["TextToImageSettings", "default_settings", "generate", "save_images", *_LAZY]
