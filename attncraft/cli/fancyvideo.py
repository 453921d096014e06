"""``attncraft video --method fancyvideo``: the released FancyVideo model.

``attncraft video PROMPT --method fancyvideo --model SD15 --adapter CONVERTED --vae CV-VAE
--res-adapter RESADAPTER`` makes a
clip in two stages (the first frame from the prompt, then image-to-video); ``--image IMAGE`` starts
from an image instead. ``--fps`` is the fps condition and the written frame rate (25 by default, as
released), ``--motion-score`` the motion condition (3). ``--frames`` counts video frames, ``1 + 4k``
with CV-VAE (default 61; at most 125). The same files as every video run are written (video, contact
sheet, sidecar); ``--from-sidecar`` re-runs a FancyVideo clip. The options are declared here and
added to ``attncraft video``'s signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from attncraft.errors import InputError

METHODS = ("animatediff", "fancyvideo")
MethodOption = typer.Option(
    "animatediff", "--method",
    help="animatediff (text-to-video with per-frame states) or fancyvideo (the released FancyVideo model: "
         "needs --adapter with its converted checkpoint and --vae).",
)  # fmt: skip
ImageOption = typer.Option(None, "--image", help="fancyvideo: the first frame (image-to-video); without it the first frame is generated from the prompt.")
MotionScoreOption = typer.Option(None, "--motion-score", help="fancyvideo: motion condition, 0..100 (default 3; higher = more motion).")
VaeOption = typer.Option(
    None, "--vae",
    help="fancyvideo: the CV-VAE folder (CV-VAE or CV-VAE/vae3d), or 'sd' for the base model's VAE per frame "
         "(not the released model: latent frames = video frames).",
)  # fmt: skip

ResAdapterOption = typer.Option(
    None, "--res-adapter",
    help="fancyvideo: the ResAdapter folder (resadapter_v2_sd1.5) that every released configuration applies to the base model.",
)  # fmt: skip


def check_method(method: str, image: Path | None, motion_score: float | None, vae: str | None,
                 res_adapter: str | None = None) -> str:
    """The method, or one line for an unknown one or FancyVideo options without it."""
    method = (method or "animatediff").lower()
    if method not in METHODS:
        raise InputError(f"unknown --method {method!r}", f"pass one of {', '.join(METHODS)}")
    if method != "fancyvideo":
        given = [n for n, v in (("--image", image), ("--motion-score", motion_score), ("--vae", vae),
                                ("--res-adapter", res_adapter)) if v is not None]
        if given:
            raise InputError(f"{given[0]} needs --method fancyvideo", "add --method fancyvideo, or drop the option")
    return method


def is_fancyvideo_sidecar(path: Path | None, read) -> bool:
    """True if ``path`` (``--from-sidecar``) holds a FancyVideo clip's settings; any problem with the
    file is left to the normal ``--from-sidecar`` path, which reports it."""
    if path is None:
        return False
    try:
        return read(path).get("method") == "fancyvideo"
    except InputError:
        return False


def run(
    prompt: str | None,
    stored: dict[str, Any] | None,
    *,
    image: Path | None,
    frames: int | None,
    fps: float | None,
    motion_score: float | None,
    steps: int | None,
    guidance: float | None,
    seed: int,
    size: tuple[int, int] | None,
    negative: str | None,
    model: str,
    adapter: str | None,
    vae: str | None,
    res_adapter: str | None,
    config: str | None,
    trust_pickle: bool,
    fmt: str,
    out: Path,
    overwrite: bool,
    device: str,
    dtype: str,
    not_for_fancyvideo: list[str],
) -> None:
    """The body of ``attncraft video --method fancyvideo`` (and of ``--from-sidecar`` on such a clip)."""
    from attncraft.cli.common import console
    from attncraft.outputs import prepare_output_dir
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.validation import check_finite, check_input_file, check_int_range

    if not_for_fancyvideo:
        raise InputError(f"{not_for_fancyvideo[0]} does not apply to --method fancyvideo",
                         "drop it (FancyVideo takes one prompt, its own DDIM schedulers and at most 125 frames)")
    overrides: dict[str, Any] = {}
    if stored is None:
        if prompt is None:
            raise InputError("no prompt given", 'pass a prompt, e.g. attncraft video "a corgi runs" --method fancyvideo ...')
        check_values(prompt, negative, steps, guidance, seed)
        if image is not None:
            check_input_file(image, "--image", suffixes=(".png", ".jpg", ".jpeg", ".webp", ".bmp"))
            overrides["image"] = str(image)
        if frames is not None:
            overrides["num_frames"] = check_int_range("--frames", frames, 1, example=61)
        if fps is not None:
            overrides["fps"] = check_finite("--fps", fps, 0.0, low_inclusive=False, example=25)
        if motion_score is not None:
            overrides["motion_score"] = check_finite("--motion-score", motion_score, 0.0, example=3)
        if steps is not None:
            overrides["num_inference_steps"] = steps
        if guidance is not None:
            overrides["guidance_scale"] = guidance
        if size is not None:
            overrides["width"], overrides["height"] = size
        overrides.update(seed=seed, negative_prompt=negative)
    out = prepare_output_dir(out)

    from attncraft.pipelines.fancyvideo import (
        FancyVideoSettings,
        default_fancyvideo_settings,
        generate_fancyvideo,
        load_fancyvideo,
        validate_fancyvideo,
    )
    from attncraft.pipelines.text_to_video import save_video, video_frames_uint8
    from attncraft.progress import progress_task

    if stored is not None:
        settings = FancyVideoSettings.from_dict(stored)
        loaded = load_fancyvideo(settings.model, settings.adapter, settings.vae, device=device, dtype=dtype,
                                 config=settings.extra.get("config"), trust_pickle=trust_pickle,
                                 res_adapter=settings.res_adapter)
    else:
        loaded = load_fancyvideo(model, adapter, vae, device=device, dtype=dtype, config=config, trust_pickle=trust_pickle,
                                 res_adapter=res_adapter)
        settings = default_fancyvideo_settings(loaded, prompt)
        for key, value in overrides.items():
            setattr(settings, key, value)
        settings.vae, settings.res_adapter = vae, res_adapter
        if config:
            settings.extra["config"] = config
    settings.model_label = loaded.label
    validate_fancyvideo(settings, loaded)
    pipe = loaded.pipeline
    latent = pipe.latent_frames(settings.num_frames)
    mode = f"image-to-video from {settings.image}" if settings.image else "text-to-video (first frame, then image-to-video)"
    console.print(f"model: {loaded.label}", markup=False, highlight=False)
    console.print(f"  {mode}; {settings.num_frames} frames ({latent} latent), fps {settings.fps:g}, "
                  f"motion score {settings.motion_score:g}", markup=False, highlight=False)
    total = settings.num_inference_steps * (1 if settings.image else 2)
    with progress_task("denoising", total) as update:
        result = generate_fancyvideo(loaded, settings, on_step=lambda i, n: update(i), output_type="np")
    paths = save_video(video_frames_uint8(result), settings, out, fmt=fmt, overwrite=overwrite)
    console.print(f"wrote {paths['video'].name}, its contact sheet {paths['sheet'].name} and sidecar "
                  f"{paths['sidecar'].name} to {out}/", markup=False, highlight=False)
    typer.echo(str(paths["video"]))
