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
from pathlib import Path

import typer

from attncraft.cli.common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustPickleOption,
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
    mask_pass: str = typer.Option("batched", "--mask-pass", help="batched (mask read in the guidance call) or separate (its own call)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image; image i uses seed + i."),
    count: int = typer.Option(1, "--count", "-n", help="Number of images."),
    width: int = typer.Option(None, "--width", help="Width in pixels (default: the model's native size)."),
    height: int = typer.Option(None, "--height", help="Height in pixels (default: the model's native size)."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm, dpm-karras, unipc."),
    config: str = typer.Option(None, "--config", help="For single-file checkpoints: a diffusers folder or Hub id of the same architecture."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    trust_pickle: bool = TrustPickleOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Draw the subject of --subject where the prompt says --word; the rest follows the text."""
    quiet_libraries()
    import torch

    from attncraft.errors import InputError
    from attncraft.loading import EMBEDDED_ALIASES, load_text_to_image
    from attncraft.outputs import prepare_output_dir, save_png_with_settings
    from attncraft.pipelines.realcustom import GUIDANCE_MODES, MASK_PASSES, realcustom_pipeline_for
    from attncraft.pipelines.text_to_image import check_values, output_name, settings_from_options, validate
    from attncraft.progress import progress_task
    from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, checkpoint_file
    from attncraft.schedulers import set_scheduler
    from attncraft.validation import check_finite, check_int_range, check_text

    # -- everything that can be checked before a model is loaded --------------------------------
    check_values(prompt, negative, steps, guidance, seed, count, width, height)
    check_text("--word", word)
    if not re.search(rf"(?<!\w){re.escape(word.strip())}(?!\w)", prompt, flags=re.IGNORECASE):
        raise InputError(f"the word {word!r} is not in the prompt {prompt!r}", "pass a --word that appears in the prompt as a whole word")
    image = _read_subject(subject)
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
    out = prepare_output_dir(out)

    # -- the model ------------------------------------------------------------------------------
    loaded = load_text_to_image(model, device=device, dtype=dtype, config=config, trust_pickle=trust_pickle)
    settings = settings_from_options(loaded, prompt, seed=seed, count=count, negative_prompt=negative,
                                     num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                                     scheduler=scheduler)
    validate(settings, loaded)
    pipe = realcustom_pipeline_for(loaded.pipeline)
    if settings.scheduler:
        set_scheduler(pipe, settings.scheduler)
    pipe.load_realcustom(adapter, image_encoder=image_encoder)
    options = pipe.options_from(word, guidance_mode=guidance_mode, image_guidance_scale=image_guidance, gamma_scope=gamma_scope,
                                gamma_num=gamma_num, use_scoring=False if no_scoring else None, mask_mode=mask_mode,
                                mask_reused_step=mask_reuse_step, mask_pass=mask_pass)
    ckpt = checkpoint_file(adapter if adapter else SHAPES_ADAPTER_DIR)
    settings.extra.update(
        task="customize", subject=str(subject), subject_sha256=hashlib.sha256(subject.read_bytes()).hexdigest(),
        word=word, adapter=str(ckpt), adapter_sha256=hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        image_encoder=pipe.realcustom_encoder.reference or image_encoder, guidance_mode=options.guidance_mode,
        image_guidance_scale=float(options.image_guidance_scale), gamma_scope=float(options.gamma_scope),
        gamma_num=float(options.gamma_num), use_scoring=bool(options.use_scoring), mask_mode=options.mask_mode,
        mask_reused_step=options.mask_reused_step, mask_pass=options.mask_pass,
    )
    console.print(f"model: {loaded.label}; RealCustom: {ckpt}")

    gen_device = "cpu" if pipe._execution_device.type == "mps" else pipe._execution_device
    generators = [torch.Generator(device=gen_device).manual_seed(seed + i) for i in range(count)]
    with progress_task("denoising", settings.num_inference_steps) as update:
        result = pipe(
            prompt=[prompt] * count, subject_image=image, subject_word=word,
            negative_prompt=[negative] * count if negative else None, num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale, width=settings.width, height=settings.height, generator=generators,
            callback_on_step_end=lambda p, i, t, kw: (update(i + 1), kw)[1],
            image_guidance_scale=options.image_guidance_scale, guidance_mode=options.guidance_mode,
            gamma_scope=options.gamma_scope, gamma_num=options.gamma_num, use_scoring=options.use_scoring,
            mask_mode=options.mask_mode, mask_reused_step=options.mask_reused_step, mask_pass=options.mask_pass,
        )
    tile = max(64, min(settings.width, settings.height, 128))
    paths = []
    for i, img in enumerate(result.images):
        meta = settings.for_image(i)
        path = save_png_with_settings(img, out / f"{output_name(prompt, meta['seed'])}.png", meta, overwrite=overwrite,
                                      companions=("_masks.png",))
        save_png_with_settings(_mask_strip(img, result.masks[:, i], tile), path.with_name(path.stem + "_masks.png"),
                               {**meta, "content": "final image, then the influence mask of each step"}, overwrite=True)
        paths.append(path)
    console.print(f"wrote {len(paths)} image{'s' if len(paths) != 1 else ''} (and their mask strips) to {out}/")
    for path in paths:
        typer.echo(str(path))

