"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs;
* :mod:`.realcustom` - :class:`RealCustomPipeline` (SD 1.x/2.x, Shapes SD) and
  :class:`RealCustomXLPipeline` (SDXL), imported on first use (they import the diffusers pipelines).
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images

_LAZY = {"RealCustomPipeline": "realcustom", "RealCustomXLPipeline": "realcustom"}

__all__ = ["RealCustomPipeline", "RealCustomXLPipeline", "TextToImageSettings", "default_settings", "generate", "save_images"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"attncraft.pipelines.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'attncraft.pipelines' has no attribute {name!r}")
