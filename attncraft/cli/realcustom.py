"""``attncraft customize PROMPT --subject IMAGE --word WORD``: RealCustom subject customisation.

Writes, per image, ``<prompt>_s<seed>.png`` (the settings that reproduce it in its text chunk,
including the subject image's path and SHA-256) and ``<prompt>_s<seed>_masks.png``: the final
image followed by the influence mask of every step (white = full influence of the subject), so the
mask's evolution over the steps can be seen. With ``--model shapes`` the Shapes RealCustom
checkpoint (``assets/models/shapes-realcustom``) is the default ``--adapter``; other models need
a checkpoint trained for them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import typer

from attncraft.batch.jobs import RUNNER_OPTIONS, register_job
from attncraft.cli.common import (
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


def _read_subject(path: Path):
    """The subject image as RGB, or a one-line error (missing, unreadable, not an image)."""
    from PIL import Image, UnidentifiedImageError

    from attncraft.errors import InputError
    from attncraft.validation import check_input_file

    check_input_file(path, "subject image")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the subject image {str(path)!r}: {' '.join(str(exc).split())[:120]}",
                         "pass a PNG or JPEG image of the subject") from None


def _mask_strip(image, masks, tile: int):
    """The final image, then each step's mask (grayscale), side by side with 2 px gaps."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    steps = masks.shape[0]
    up = F.interpolate(masks[:, None].float(), size=(tile, tile), mode="nearest")[:, 0].clamp(0, 1)
    strip = np.full((tile, (steps + 1) * (tile + 2) - 2, 3), 32, dtype=np.uint8)
    strip[:, :tile] = np.asarray(image.convert("RGB").resize((tile, tile), Image.BICUBIC))
    for i in range(steps):
        x = (i + 1) * (tile + 2)
        strip[:, x:x + tile] = (up[i].numpy()[..., None] * 255).round().astype(np.uint8)
    return Image.fromarray(strip)


def customize(
    prompt: str = typer.Argument(..., help="What to draw; it must contain the subject's --word."),
    subject: Path = typer.Option(..., "--subject", "-s", help="Image of the subject (PNG/JPEG)."),
    word: str = typer.Option(..., "--word", "-w", help="The real word of the prompt that stands for the subject (e.g. star, toy)."),
    model: str = ModelOption,
    adapter: str = typer.Option(None, "--adapter", help="RealCustom checkpoint (file or folder); default: the Shapes one for --model shapes."),
    image_encoder: str = typer.Option(None, "--image-encoder", help="Vision model the checkpoint was trained with (default: the one it names)."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Text guidance scale omega_t (release mode: the CFG scale w)."),
    image_guidance: float = typer.Option(None, "--image-guidance", help="Image guidance scale omega_i (default: the checkpoint's)."),
    guidance_mode: str = typer.Option(None, "--guidance-mode", help="paper (Eq. 13, three branches) or release (two-branch CFG)."),
    gamma_scope: float = typer.Option(None, "--gamma-scope", help="Fraction of the mask kept by top-k (default 0.25)."),
    gamma_num: float = typer.Option(None, "--gamma-num", help="Fraction of image features the scoring module keeps (default 0.8)."),
    no_scoring: bool = typer.Option(False, "--no-scoring", help="Use every image feature (no adaptive scoring module)."),
    mask_mode: str = typer.Option(None, "--mask-mode", help="max (Eq. 11), binary or minmax."),
    mask_reuse_step: int = typer.Option(None, "--mask-reuse-step", help="Reuse the mask from this step on (default: recompute every step)."),
    mask_pass: str = typer.Option("batched", "--mask-pass", help="batched (mask read in the guidance call), separate (its own call) or conditional (read from the text + image rows; release: no text-only rows)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    count: int = CountOption,
    width: int = WidthOption,
    height: int = HeightOption,
    negative: str = NegativeOption,
    scheduler: str = SchedulerOption,
    config: str = ConfigOption,
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    trust_pickle: bool = TrustPickleOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Draw the subject of --subject where the prompt says --word; the rest follows the text."""
    options = {k: v for k, v in locals().items() if k not in RUNNER_OPTIONS}
    quiet_libraries()
    from attncraft.outputs import prepare_output_dir, save_png_with_settings
    from attncraft.pipelines.text_to_image import output_name
    from attncraft.progress import progress_task

    image = check_customize_options(**options)  # everything that can be checked before a model is loaded
    out = prepare_output_dir(out)
    model = load_customize_model(options, device)
    settings, run = customize_settings(model, options)
    console.print(f"model: {model.loaded.label}; RealCustom: {settings.extra['adapter']}")
    with progress_task("denoising", settings.num_inference_steps) as update:
        result = run(image, lambda i: update(i))
    tile = _tile(settings)
    paths = []
    for i, img in enumerate(result.images):
        meta = settings.for_image(i)
        path = save_png_with_settings(img, out / f"{output_name(prompt, meta['seed'])}.png", meta, overwrite=overwrite,
                                      companions=("_masks.png",))
        save_png_with_settings(_mask_strip(img, result.masks[:, i], tile), path.with_name(path.stem + "_masks.png"),
                               _mask_settings(meta), overwrite=True)
        paths.append(path)
    console.print(f"wrote {len(paths)} image{'s' if len(paths) != 1 else ''} (and their mask strips) to {out}/")
    for path in paths:
        typer.echo(str(path))


def _tile(settings) -> int:
    return max(64, min(settings.width, settings.height, 128))


def _mask_settings(meta: dict) -> dict:
    return {**meta, "content": "final image, then the influence mask of each step"}


def check_customize_options(prompt, subject, word, model="shapes", adapter=None, steps=None, guidance=None,
                            image_guidance=None, guidance_mode=None, gamma_scope=None, gamma_num=None,
                            mask_reuse_step=None, mask_pass="batched", seed=0, count=1, width=None, height=None,
                            negative=None, **_other):
    """Every check of ``attncraft customize`` that needs no model (its batch job runs them too);
    returns the subject image."""
    from attncraft.errors import InputError
    from attncraft.loading import EMBEDDED_ALIASES
    from attncraft.pipelines.realcustom import GUIDANCE_MODES, MASK_PASSES
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.realcustom.modules import checkpoint_file
    from attncraft.validation import check_finite, check_int_range, check_text

    check_values(prompt, negative, steps, guidance, seed, count, width, height)
    check_text("--word", word)
    if not re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE):
        raise InputError(f"the word {word!r} is not in the prompt {prompt!r}", "pass a --word that appears in the prompt as a whole word")
    image = _read_subject(Path(subject))
    for name, value, low, high in (("--image-guidance", image_guidance, None, None), ("--gamma-scope", gamma_scope, 0, 1),
                                   ("--gamma-num", gamma_num, 0, 1)):
        if value is not None:
            check_finite(name, value, low, high)
    if gamma_num is not None and gamma_num <= 0:
        raise InputError("--gamma-num must be > 0", "pass e.g. --gamma-num 0.8")
    if guidance_mode is not None and guidance_mode not in GUIDANCE_MODES:
        raise InputError(f"unknown --guidance-mode {guidance_mode!r}", f"pass one of {', '.join(GUIDANCE_MODES)}")
    if mask_pass not in MASK_PASSES:
        raise InputError(f"unknown --mask-pass {mask_pass!r}", f"pass one of {', '.join(MASK_PASSES)}")
    if mask_reuse_step is not None:
        check_int_range("--mask-reuse-step", mask_reuse_step, 1, None, example=12)
    embedded = model.strip().lower() in EMBEDDED_ALIASES
    if adapter is None and not embedded:
        raise InputError("--adapter is needed for a model other than shapes", "pass the RealCustom checkpoint trained for this model")
    if adapter is not None and not checkpoint_file(adapter).is_file():
        raise InputError(f"the RealCustom checkpoint {adapter!r} does not exist", "pass its realcustom.safetensors file or folder")
    return image


@dataclass
class CustomizeModel:
    """A loaded model with its RealCustom pipeline and checkpoint (one per worker in a batch)."""

    loaded: object
    pipe: object
    checkpoint: Path
    checkpoint_sha256: str


def load_customize_model(options: dict, device: str = "auto") -> CustomizeModel:
    """The model of ``options`` with the RealCustom checkpoint (``adapter``) loaded into its pipeline."""
    quiet_libraries()
    from attncraft.loading import load_text_to_image
    from attncraft.pipelines.realcustom import realcustom_pipeline_for
    from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, checkpoint_file

    loaded = load_text_to_image(options["model"], device=device, dtype=options["dtype"], config=options["config"],
                                trust_pickle=options["trust_pickle"])
    pipe = realcustom_pipeline_for(loaded.pipeline)
    pipe.load_realcustom(options["adapter"], image_encoder=options["image_encoder"])
    ckpt = checkpoint_file(options["adapter"] if options["adapter"] else SHAPES_ADAPTER_DIR)
    return CustomizeModel(loaded, pipe, ckpt, hashlib.sha256(ckpt.read_bytes()).hexdigest())


def customize_settings(model: CustomizeModel, options: dict):
    """The settings of a run (model defaults filled in, recorded in every image) and ``run(subject
    image, on_step)``, which makes its images and masks (the pipeline's output)."""
    import torch

    from attncraft.pipelines.text_to_image import settings_from_options, validate
    from attncraft.schedulers import use_scheduler

    o, loaded, pipe = options, model.loaded, model.pipe
    settings = settings_from_options(loaded, o["prompt"], seed=o["seed"], count=o["count"], negative_prompt=o["negative"],
                                     num_inference_steps=o["steps"], guidance_scale=o["guidance"], width=o["width"],
                                     height=o["height"], scheduler=o["scheduler"])
    validate(settings, loaded)
    run_options = pipe.options_from(o["word"], guidance_mode=o["guidance_mode"], image_guidance_scale=o["image_guidance"],
                                    gamma_scope=o["gamma_scope"], gamma_num=o["gamma_num"],
                                    use_scoring=False if o["no_scoring"] else None, mask_mode=o["mask_mode"],
                                    mask_reused_step=o["mask_reuse_step"], mask_pass=o["mask_pass"])
    subject = Path(o["subject"])
    settings.extra.update(
        task="customize", subject=str(subject), subject_sha256=hashlib.sha256(subject.read_bytes()).hexdigest(),
        word=o["word"], adapter=str(model.checkpoint), adapter_sha256=model.checkpoint_sha256,
        image_encoder=pipe.realcustom_encoder.reference or o["image_encoder"], guidance_mode=run_options.guidance_mode,
        image_guidance_scale=float(run_options.image_guidance_scale), gamma_scope=float(run_options.gamma_scope),
        gamma_num=float(run_options.gamma_num), use_scoring=bool(run_options.use_scoring), mask_mode=run_options.mask_mode,
        mask_reused_step=run_options.mask_reused_step, mask_pass=run_options.mask_pass,
    )

    def run(image, on_step=None):
        use_scheduler(pipe, settings.scheduler)
        gen_device = "cpu" if pipe._execution_device.type == "mps" else pipe._execution_device
        count, negative = settings.count, settings.negative_prompt
        generators = [torch.Generator(device=gen_device).manual_seed(settings.seed + i) for i in range(count)]
        return pipe(
            prompt=[settings.prompt] * count, subject_image=image, subject_word=o["word"],
            negative_prompt=[negative] * count if negative else None, num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, width=settings.width, height=settings.height, generator=generators,
            callback_on_step_end=lambda p, i, t, kw: ((on_step or (lambda _i: None))(i + 1), kw)[1],
            image_guidance_scale=run_options.image_guidance_scale, guidance_mode=run_options.guidance_mode,
            gamma_scope=run_options.gamma_scope, gamma_num=run_options.gamma_num, use_scoring=run_options.use_scoring,
            mask_mode=run_options.mask_mode, mask_reused_step=run_options.mask_reused_step, mask_pass=run_options.mask_pass,
        )

    return settings, run


# --------------------------------------------------------------------------------------------------
# The ``customize`` batch job: the model and RealCustom checkpoint loaded once per worker
# --------------------------------------------------------------------------------------------------


def _run_customize_jobs(model: CustomizeModel, jobs) -> None:
    for job in jobs:
        image = check_customize_options(**job.options)
        settings, run = customize_settings(model, job.options)
        result = run(image)
        tile = _tile(settings)
        for i, img in enumerate(result.images):
            meta = settings.for_image(i)
            part = i if settings.count > 1 else None
            job.save_png(img, meta, part=part)
            job.save_png(_mask_strip(img, result.masks[:, i], tile), _mask_settings(meta),
                         part="masks" if part is None else f"{i}_masks")
        meta = settings.for_image(0)
        meta.pop("index_in_batch", None)
        job.settings = {**meta, "count": settings.count}


register_job(
    "customize", customize,
    check=check_customize_options,
    load=load_customize_model,
    run=_run_customize_jobs,
    model_options=("model", "config", "dtype", "trust_pickle", "adapter", "image_encoder"),
)
