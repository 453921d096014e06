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
from attncraft.schedulers import SCHEDULERS, use_scheduler
from attncraft.validation import check_finite, check_int_range, check_seed, check_text, check_token_count

MAX_COUNT = 64
MAX_SIDE = 4096
MAX_STEPS = 1000
LATENT_STEP = 8
"""Every SD VAE downsamples by 8: a size that is not a multiple of it fits no model."""


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


def _check_side(name: str, value: Any, multiple: int) -> int:
    value = check_int_range(f"--{name}", value)
    top = MAX_SIDE - MAX_SIDE % multiple
    if value < multiple or value > top or value % multiple:
        nearest = min(max(multiple, round(value / multiple) * multiple), top)
        raise InputError(
            f"--{name} {value} is not usable by this model: it must be a multiple of {multiple} between {multiple} and {top}",
            f"pass e.g. --{name} {nearest}",
        )
    return value


def check_values(
    prompt: Any,
    negative_prompt: Any = None,
    num_inference_steps: Any = None,
    guidance_scale: Any = None,
    seed: Any = 0,
    count: Any = 1,
    width: Any = None,
    height: Any = None,
) -> None:
    """The checks that need no model, so a command runs them before loading one (``None``: the
    model's default, checked later by :func:`validate`). One line each, naming the fix."""
    check_text("prompt", prompt)
    if negative_prompt is not None:
        check_text("negative prompt", negative_prompt, allow_empty=True)
    if num_inference_steps is not None:
        check_int_range("--steps", num_inference_steps, 1, MAX_STEPS, example=25)
    if guidance_scale is not None:
        check_finite("--guidance", guidance_scale, 0, example=7.5)
    check_int_range("--count", count, 1, MAX_COUNT)
    check_seed(seed, count)
    for name, value in (("width", width), ("height", height)):
        if value is not None:
            _check_side(name, value, LATENT_STEP)


def validate(settings: TextToImageSettings, loaded: LoadedPipeline) -> None:
    """Raise :class:`InputError` (one line, with the fix) for any setting the model cannot take."""
    pipe = loaded.pipeline
    check_values(settings.prompt, settings.negative_prompt, settings.num_inference_steps, settings.guidance_scale,
                 settings.seed, settings.count, settings.width, settings.height)
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for name, value in (("width", settings.width), ("height", settings.height)):
        _check_side(name, value, multiple)
    for label, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        if text:
            check_token_count(pipe.tokenizer, text, label)
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


BATCHED_FIELDS = ("prompt", "negative_prompt", "seed", "count", "extra")
"""Fields in which the settings of one :func:`generate_many` call may differ."""


def batch_signature(settings: TextToImageSettings) -> tuple:
    """Settings with equal signatures can share one pipeline call (:func:`generate_many`). Whether a
    negative prompt is given at all is part of it: SDXL encodes "no negative prompt" as zeros."""
    data = asdict(settings)
    return (tuple((k, v) for k, v in sorted(data.items()) if k not in BATCHED_FIELDS), bool(settings.negative_prompt))


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
    return generate_many(loaded, [settings], on_step, **pipeline_kwargs)


def generate_many(
    loaded: LoadedPipeline,
    settings_list: list[TextToImageSettings],
    on_step: Callable[[int, int], None] | None = None,
    **pipeline_kwargs: Any,
):
    """One pipeline call for several settings that differ only in prompt, negative prompt, seed and
    count (equal :func:`batch_signature`); the images come in order, ``count`` of each settings.

    Every image has its own generator (seed ``seed + i`` of its settings), so its starting noise is
    the one a call with those settings alone would draw.
    """
    for settings in settings_list:
        validate(settings, loaded)
    first = settings_list[0]
    if any(batch_signature(s) != batch_signature(first) for s in settings_list[1:]):
        raise ValueError("generate_many needs settings that differ only in prompt, negative prompt, seed and count")
    pipe = loaded.pipeline
    use_scheduler(pipe, first.scheduler)
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    prompts, negatives, generators = [], [], []
    for settings in settings_list:
        for i in range(settings.count):
            prompts.append(settings.prompt)
            negatives.append(settings.negative_prompt)
            generators.append(torch.Generator(device=gen_device).manual_seed(settings.seed + i))

    def callback(pipeline, step, timestep, kwargs):
        if on_step is not None:
            on_step(step + 1, first.num_inference_steps)
        return kwargs

    return pipe(
        prompt=prompts,
        negative_prompt=negatives if first.negative_prompt else None,
        num_inference_steps=first.num_inference_steps,
        guidance_scale=first.guidance_scale,
        width=first.width,
        height=first.height,
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
