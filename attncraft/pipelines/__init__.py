"""Pipelines that drive attncraft's techniques; each technique's pipeline lives in its own module.

* :mod:`.text_to_image` - plain SD 1.x/2.x/SDXL text-to-image with reproducible PNG outputs.
"""

from attncraft.pipelines.text_to_image import TextToImageSettings, default_settings, generate, save_images

__all__ = ["TextToImageSettings", "default_settings", "generate", "save_images"]
