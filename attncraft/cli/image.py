"""``attncraft image PROMPT``: text-to-image with any SD 1.x/2.x/SDXL model, PNGs with settings.

The command is also the ``image`` batch job (:mod:`attncraft.batch`): a job has the command's options
as keys and passes the same checks (:func:`check_options`, then :func:`prepare_job` with the model);
jobs that share the model and every setting but prompt, negative prompt, seed and count are drawn
in one pipeline call.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attncraft.batch.jobs import register_job
from attncraft.cli.common import (
    AttentionBackendOption,
    ConfigOption,
    CountOption,
    DeviceOption,
    DtypeOption,
    HeightOption,
    ModelOption,
    NegativeOption,
    OutOption,
    OverwriteOption,
    SchedulerOption,
    TrustPickleOption,
    WidthOption,
    console,
    quiet_libraries,
)


def check_options(prompt, negative=None, steps=None, guidance=None, seed=0, count=1, width=None, height=None,
                  attention_backend="sdpa", probe_backend=True, **_other) -> None:
    """The checks of ``attncraft image`` that need no model (batch jobs pass through them too).

    ``probe_backend=False`` checks the attention backend's name only (batch jobs run elsewhere)."""
    from attncraft.attention_processors.backends import check_backend
    from attncraft.pipelines.text_to_image import check_values

    check_values(prompt, negative, steps, guidance, seed, count, width, height)
    check_backend(attention_backend, probe=probe_backend)  # a backend that cannot run fails at once


def load_model(options: dict, device: str = "auto"):
    """The pipeline of an ``image`` run: the model, with the chosen attention kernel installed."""
    quiet_libraries()
    from attncraft.attention_processors import get_manager
    from attncraft.attention_processors.backends import check_backend
    from attncraft.loading import load_text_to_image

    backend = check_backend(options["attention_backend"])
    loaded = load_text_to_image(options["model"], device=device, dtype=options["dtype"], config=options["config"],
                                trust_pickle=options["trust_pickle"])
    if backend != "sdpa":
        # the core processor on every layer, running the chosen kernel (no technique involved)
        get_manager(loaded.pipeline, backend=backend).install_core()
    return loaded


def image_settings(loaded, prompt, steps=None, guidance=None, seed=0, count=1, width=None, height=None, scheduler=None,
                   negative=None, attention_backend="sdpa", **_other):
    """The settings of a run with these options on ``loaded`` (model defaults filled in), checked."""
    from attncraft.pipelines.text_to_image import settings_from_options, validate

    settings = settings_from_options(loaded, prompt, seed=seed, count=count, negative_prompt=negative,
                                     num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                                     scheduler=scheduler)
    settings.extra["attention_backend"] = attention_backend
    validate(settings, loaded)
    return settings


def image(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = ModelOption,
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    width: int = WidthOption,
    height: int = HeightOption,
    count: int = CountOption,
    scheduler: str = SchedulerOption,
    negative: str = NegativeOption,
    config: str = ConfigOption,
    out: Path = OutOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    attention_backend: str = AttentionBackendOption,
    overwrite: bool = OverwriteOption,
    trust_pickle: bool = TrustPickleOption,
) -> None:
    """Generate images from a text prompt; each PNG stores the settings that reproduce it."""
    quiet_libraries()
    from attncraft.outputs import prepare_output_dir
    from attncraft.pipelines.text_to_image import generate, save_images
    from attncraft.progress import progress_task

    # everything that can be checked without the model, then the output folder, then the model
    check_options(prompt, negative, steps, guidance, seed, count, width, height, attention_backend)
    out = prepare_output_dir(out)
    loaded = load_model(dict(model=model, dtype=dtype, config=config, trust_pickle=trust_pickle,
                             attention_backend=attention_backend), device)
    settings = image_settings(loaded, prompt, steps, guidance, seed, count, width, height, scheduler, negative,
                              attention_backend)
    console.print(f"model: {loaded.label}")

    # one pipeline call denoises the whole batch, so the bar counts denoising steps
    with progress_task("denoising", settings.num_inference_steps) as update:
        result = generate(loaded, settings, on_step=lambda i, n: update(i))
    paths = save_images(result.images, settings, out, overwrite=overwrite)
    console.print(f"wrote {len(paths)} image{'s' if len(paths) != 1 else ''} to {out}/")
    for path in paths:
        typer.echo(str(path))


# --------------------------------------------------------------------------------------------------
# The ``image`` batch job
# --------------------------------------------------------------------------------------------------


def _prepare_job(loaded, job) -> object:
    return image_settings(loaded, **job.options)


def _run_jobs(loaded, jobs) -> None:
    from attncraft.pipelines.text_to_image import batch_signature, generate_many

    groups: dict[tuple, list] = {}
    for job in jobs:  # one pipeline call per group of settings that can share it
        groups.setdefault(batch_signature(job.state), []).append(job)
    for group in groups.values():
        result = generate_many(loaded, [job.state for job in group])
        images = iter(result.images)
        for job in group:
            settings = job.state
            rows = []
            for i in range(settings.count):
                path = job.save_png(next(images), settings.for_image(i), part=i if settings.count > 1 else None)
                if job.score:
                    rows.append(_reader_scores(path, settings.prompt))
            if rows and all(rows):
                job.metrics.update({k: sum(r[k] for r in rows) / len(rows) for k in rows[0]})
            meta = settings.for_image(0)
            meta.pop("index_in_batch", None)
            job.settings = {**meta, "count": settings.count}


def _reader_scores(path: Path, prompt: str) -> dict[str, float]:
    """The Shapes reader's scores of a written image against its prompt (none if the prompt does
    not speak the Shapes vocabulary); a job of several images gets their mean."""
    from attncraft.shapes.captions import CaptionError, parse_caption
    from attncraft.shapes.inputs import load_image_for_reader
    from attncraft.shapes.scoring import score_image

    try:
        parsed = parse_caption(prompt)
    except CaptionError:
        return {}
    return score_image(load_image_for_reader(path).data, parsed)


register_job(
    "image", image,
    check=lambda **options: check_options(probe_backend=False, **options),
    load=load_model,
    prepare=_prepare_job,
    run=_run_jobs,
    model_options=("model", "config", "dtype", "attention_backend", "trust_pickle"),
    batch_options=("prompt", "negative", "seed", "count"),
)
