"""Text-to-image generation (SD 1.x/2.x and SDXL) with reproducible, self-describing outputs.

:func:`generate` runs the model's own diffusers pipeline (``StableDiffusionPipeline`` or
``StableDiffusionXLPipeline``, by model type) and returns its diffusers output object, with one
generator per image seeded ``seed + i``: image ``i`` of a batch is exactly the image a run with
``count=1, seed=seed+i`` gives, so each file's settings reproduce it alone.
:func:`save_images` writes the PNGs, atomically, with those settings in text chunks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attncraft import __version__
from attncraft.errors import InputError
from attncraft.loading import LoadedPipeline
from attncraft.outputs import save_png_with_settings
from attncraft.schedulers import SCHEDULERS, set_scheduler

MAX_COUNT = 64
MAX_SIDE = 4096


@dataclass
class TextToImageSettings:
    """Everything needed to reproduce one generation (stored in every output file)."""

    prompt: str
    negative_prompt: str | None = None
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    count: int = 1
    scheduler: str | None = None
    model: str = "shapes"
    model_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def for_image(self, index: int) -> dict[str, Any]:
        data = asdict(self)
        data.update(seed=self.seed + index, count=1, index_in_batch=index, attncraft_version=__version__, task="image")
        extra = data.pop("extra")
        data.update(extra)
        return data


def prompt_token_count(tokenizer, prompt: str) -> int:
    return len(tokenizer(prompt, truncation=False).input_ids)


def validate(settings: TextToImageSettings, loaded: LoadedPipeline) -> None:
    """Raise :class:`InputError` (one line, with the fix) for any setting the model cannot take."""
    pipe = loaded.pipeline
    if not settings.prompt or not settings.prompt.strip():
        raise InputError("the prompt is empty", 'pass a prompt, e.g. attncraft image "a red circle"')
    if settings.num_inference_steps < 1 or settings.num_inference_steps > 1000:
        raise InputError(f"--steps must be between 1 and 1000, got {settings.num_inference_steps}", "pass e.g. --steps 25")
    if settings.guidance_scale < 0:
        raise InputError(f"--guidance must be >= 0, got {settings.guidance_scale}", "pass e.g. --guidance 7.5 (1 disables guidance)")
    if not 1 <= settings.count <= MAX_COUNT:
        raise InputError(f"--count must be between 1 and {MAX_COUNT}, got {settings.count}", "generate in several runs")
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for name, value in (("width", settings.width), ("height", settings.height)):
        if value < multiple or value > MAX_SIDE or value % multiple:
            raise InputError(
                f"--{name} {value} is not usable by this model: it must be a multiple of {multiple} between {multiple} and {MAX_SIDE}",
                f"pass e.g. --{name} {max(multiple, round(value / multiple) * multiple) if value > 0 else multiple}",
            )
    limit = pipe.tokenizer.model_max_length
    for label, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        if text:
            n = prompt_token_count(pipe.tokenizer, text)
            if n > limit:
                raise InputError(
                    f"the {label} is {n - 2} tokens long; this text encoder reads at most {limit - 2}",
                    f"shorten the {label}",
                )
    if settings.scheduler is not None and settings.scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {settings.scheduler!r}", f"pass one of {', '.join(SCHEDULERS)}")


def default_settings(loaded: LoadedPipeline, prompt: str) -> TextToImageSettings:
    """Settings with this model's recommended size, steps and guidance filled in."""
    pipe = loaded.pipeline
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    d = loaded.defaults
    return TextToImageSettings(
        prompt=prompt,
        num_inference_steps=int(d.get("num_inference_steps", 30)),
        guidance_scale=float(d.get("guidance_scale", 7.5)),
        width=int(d.get("width", side)),
        height=int(d.get("height", side)),
        scheduler=d.get("scheduler"),
        model=loaded.reference,
        model_label=loaded.label,
    )


def settings_from_options(loaded: LoadedPipeline, prompt: str, *, seed: int = 0, count: int = 1,
                          negative_prompt: str | None = None, **optional: Any) -> TextToImageSettings:
    """:func:`default_settings` with the command line's options applied: ``seed``, ``count`` and
    ``negative_prompt`` always, each of ``optional`` (``num_inference_steps``, ``guidance_scale``,
    ``width``, ``height``, ``scheduler``) where it is not None."""
    settings = default_settings(loaded, prompt)
    for name, value in optional.items():
        if value is not None:
            setattr(settings, name, value)
    settings.seed, settings.count, settings.negative_prompt = seed, count, negative_prompt
    return settings


def generate(
    loaded: LoadedPipeline,
    settings: TextToImageSettings,
    on_step: Callable[[int, int], None] | None = None,
    **pipeline_kwargs: Any,
):
    """Generate ``settings.count`` images; returns the diffusers pipeline output (``.images``).

    ``on_step(image_step, total_steps)`` is called after every denoising step (for progress bars).
    Extra keyword arguments go to the diffusers pipeline call unchanged.
    """
    validate(settings, loaded)
    pipe = loaded.pipeline
    if settings.scheduler:
        set_scheduler(pipe, settings.scheduler)
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(device=gen_device).manual_seed(settings.seed + i) for i in range(settings.count)]

    def callback(pipeline, step, timestep, kwargs):
        if on_step is not None:
            on_step(step + 1, settings.num_inference_steps)
        return kwargs

    return pipe(
        prompt=[settings.prompt] * settings.count,
        negative_prompt=[settings.negative_prompt] * settings.count if settings.negative_prompt else None,
        num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale,
        width=settings.width,
        height=settings.height,
        generator=generators,
        callback_on_step_end=callback,
        **pipeline_kwargs,
    )


_SLUG_RE = re.compile(r"[^a-z0-9]+")


def output_name(prompt: str, seed: int) -> str:
    slug = _SLUG_RE.sub("-", prompt.lower()).strip("-")[:48] or "image"
    return f"{slug}_s{seed}"


def save_images(images, settings: TextToImageSettings, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
    """Write each image as PNG with its own reproducible settings; returns the paths.

    Names are ``<prompt>_s<seed>.png``; an existing file is never replaced (the next free name
    ``...-2.png`` is taken, atomically even with concurrent runs) unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    paths = []
    for i, image in enumerate(images):
        meta = settings.for_image(i)
        path = out_dir / f"{output_name(settings.prompt, meta['seed'])}.png"
        paths.append(save_png_with_settings(image, path, meta, overwrite=overwrite))
    return paths
