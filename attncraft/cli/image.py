"""``attncraft image PROMPT``: text-to-image with any SD 1.x/2.x/SDXL model, PNGs with settings."""

from __future__ import annotations

from pathlib import Path

import typer

from attncraft.cli.common import (
    AttentionBackendOption,
    DeviceOption,
    DtypeOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustPickleOption,
    console,
    quiet_libraries,
)


def image(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = ModelOption,
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    width: int = typer.Option(None, "--width", help="Width in pixels (default: the model's native size)."),
    height: int = typer.Option(None, "--height", help="Height in pixels (default: the model's native size)."),
    count: int = typer.Option(1, "--count", "-n", help="Number of images."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm, dpm-karras, unipc."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    config: str = typer.Option(None, "--config", help="For single-file checkpoints: a diffusers folder or Hub id of the same architecture."),
    out: Path = OutOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    attention_backend: str = AttentionBackendOption,
    overwrite: bool = OverwriteOption,
    trust_pickle: bool = TrustPickleOption,
) -> None:
    """Generate images from a text prompt; each PNG stores the settings that reproduce it."""
    quiet_libraries()
    from attncraft.attention_processors import get_manager
    from attncraft.attention_processors.backends import check_backend
    from attncraft.loading import load_text_to_image
    from attncraft.outputs import prepare_output_dir
    from attncraft.pipelines.text_to_image import check_values, generate, save_images, settings_from_options, validate
    from attncraft.progress import progress_task

    # everything that can be checked without the model, then the output folder, then the model
    check_values(prompt, negative, steps, guidance, seed, count, width, height)
    check_backend(attention_backend)  # a backend that cannot run fails at once
    out = prepare_output_dir(out)
    loaded = load_text_to_image(model, device=device, dtype=dtype, config=config, trust_pickle=trust_pickle)
    if attention_backend != "sdpa":
        # the core processor on every layer, running the chosen kernel (no technique involved)
        get_manager(loaded.pipeline, backend=attention_backend).install_core()
    settings = settings_from_options(loaded, prompt, seed=seed, count=count, negative_prompt=negative,
                                     num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                                     scheduler=scheduler)
    settings.extra["attention_backend"] = attention_backend
    validate(settings, loaded)
    console.print(f"model: {loaded.label}")

    # one pipeline call denoises the whole batch, so the bar counts denoising steps
    with progress_task("denoising", settings.num_inference_steps) as update:
        result = generate(loaded, settings, on_step=lambda i, n: update(i))
    paths = save_images(result.images, settings, out, overwrite=overwrite)
    console.print(f"wrote {len(paths)} image{'s' if len(paths) != 1 else ''} to {out}/")
    for path in paths:
        typer.echo(str(path))
