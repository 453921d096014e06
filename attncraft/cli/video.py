"""``attncraft video PROMPT``: text-to-video on AnimateDiff, with per-frame states.

Writes the video (``--format mp4|gif|webp``), a contact sheet of all frames (``<name>_frames.png``)
and a JSON sidecar (``<video>.json``) with every setting that reproduces it;
``attncraft video --from-sidecar FILE`` re-runs those settings (FILE: the video, its sidecar or its
contact sheet). ``attncraft world score VIDEO`` reads the video back against its prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from attncraft.batch.jobs import register_job
from attncraft.errors import InputError

FORMATS = ("mp4", "gif", "webp")


def parse_size(text: str) -> tuple[int, int]:
    """``"64"`` -> (64, 64); ``"96x64"`` -> width 96, height 64."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(v < 1 for v in values):
        raise InputError(f"--size {text!r} is not a size", "pass e.g. --size 64 or --size 96x64 (width x height)")
    return (values[0], values[-1])


def read_settings_file(path: Path) -> dict[str, Any]:
    """The settings stored with a video: its sidecar, the sidecar itself, or its contact sheet."""
    from attncraft.outputs import SETTINGS_KEY, read_png_settings, sidecar_path
    from attncraft.validation import check_input_file

    check_input_file(path, "sidecar")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8")).get(SETTINGS_KEY)
        elif path.suffix.lower() == ".png":
            data = read_png_settings(path)
        else:
            side = sidecar_path(path)
            if not side.is_file():
                raise InputError(f"{path} has no sidecar ({side.name})", "pass the .json sidecar written beside the video")
            data = json.loads(side.read_text(encoding="utf-8")).get(SETTINGS_KEY)
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read settings from {path}: {' '.join(str(exc).split())[:120]}",
                         "pass the .json sidecar written beside an attncraft video") from None
    if not isinstance(data, dict) or data.get("task") != "video":
        raise InputError(f"{path} holds no attncraft video settings", "pass the sidecar or contact sheet of an attncraft video")
    return data



@dataclass
class VideoPlan:
    """The checked options of ``attncraft video`` (before any model is loaded)."""

    fmt: str
    stored: dict[str, Any] | None
    """The settings of --from-sidecar, or None."""
    prompt: str | None
    overrides: dict[str, Any] = field(default_factory=dict)


def check_video_options(prompt=None, state=None, states_file=None, frames=None, fps=None, steps=None, guidance=None, seed=0,
                        size=None, negative=None, scheduler=None, free_noise=False, free_noise_context=16,
                        free_noise_stride=4, from_sidecar=None, fmt="mp4", **_other) -> VideoPlan:
    """Every check of ``attncraft video`` that needs no model (the video batch job runs them too)."""
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.validation import check_finite, check_int_range, read_text_lines
    from attncraft.video.prompts import parse_states

    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}", f"pass one of {', '.join(FORMATS)}")
    overrides: dict[str, Any] = {}
    if from_sidecar is not None:
        if prompt is not None or state or states_file is not None:
            raise InputError("--from-sidecar re-runs stored settings and takes no prompt or states",
                             "drop the prompt / --state / --states-file")
        return VideoPlan(fmt, read_settings_file(from_sidecar), None)
    lines = list(state or [])
    if states_file is not None:
        if lines:
            raise InputError("both --state and --states-file were given", "pass the states one way")
        lines = read_text_lines(states_file, "states file")
    schedule = parse_states(lines) if lines else None
    if prompt is None:
        if schedule is None:
            raise InputError("no prompt given", 'pass a prompt, e.g. attncraft video "a red circle moves right"')
        prompt = ", then ".join(schedule.texts)
    # what needs no model is checked before one is loaded
    check_values(prompt, negative, steps, guidance, seed)
    if schedule is not None:
        overrides.update(states=list(schedule.texts), state_frames=list(schedule.frames) if schedule.frames else None)
    if frames is not None:
        overrides["num_frames"] = check_int_range("--frames", frames, 1, example=16)
    if steps is not None:
        overrides["num_inference_steps"] = steps
    if size is not None:
        overrides["width"], overrides["height"] = parse_size(size)
    if fps is not None:
        overrides["fps"] = check_finite("--fps", fps, 0.0, low_inclusive=False, example=8)
    if guidance is not None:
        overrides["guidance_scale"] = guidance
    if scheduler is not None:
        overrides["scheduler"] = scheduler
    overrides.update(seed=seed, negative_prompt=negative)
    if free_noise:
        overrides.update(free_noise=True, free_noise_context=free_noise_context, free_noise_stride=free_noise_stride)
    return VideoPlan(fmt, None, prompt, overrides)


def load_video_model(options: dict[str, Any], device: str = "auto", plan: VideoPlan | None = None):
    """The AnimateDiff pipeline of a run: the one the --from-sidecar settings name, else the options'."""
    quiet_libraries()
    from attncraft.loading import load_text_to_video

    plan = plan if plan is not None else check_video_options(**options)
    if plan.stored is not None:
        from attncraft.pipelines.text_to_video import TextToVideoSettings

        stored = TextToVideoSettings.from_dict(plan.stored)
        return load_text_to_video(stored.model, stored.adapter, device=device, dtype=options["dtype"],
                                  config=stored.extra.get("config"), adapter_config=stored.extra.get("adapter_config"),
                                  trust_pickle=options["trust_pickle"])
    return load_text_to_video(options["model"], options["adapter"], device=device, dtype=options["dtype"],
                              config=options["config"], adapter_config=options["adapter_config"],
                              trust_pickle=options["trust_pickle"])


def video_settings(loaded, plan: VideoPlan, config: str | None = None, adapter_config: str | None = None):
    """The settings of a run of ``plan`` on ``loaded`` (model defaults filled in), checked."""
    from attncraft.pipelines.text_to_video import TextToVideoSettings, default_video_settings, validate_video

    if plan.stored is not None:
        settings = TextToVideoSettings.from_dict(plan.stored)
    else:
        settings = default_video_settings(loaded, plan.prompt)
        for key, value in plan.overrides.items():
            setattr(settings, key, value)
        settings.extra.update({k: v for k, v in (("config", config), ("adapter_config", adapter_config)) if v})
    settings.model_label = loaded.label
    validate_video(settings, loaded)
    return settings


def video(
    prompt: str = typer.Argument(None, help="What the video shows (optional with --state / --states-file)."),
    state: list[str] = typer.Option(None, "--state", help="A per-frame state; repeat it. 'N: text' anchors it at frame N, plain states are spread evenly."),
    states_file: Path = typer.Option(None, "--states-file", help="UTF-8 file with one state a line (same forms as --state)."),
    frames: int = typer.Option(None, "--frames", help="Frames (default: the model's, 16); one pass takes up to the adapter's limit (32)."),
    fps: float = typer.Option(None, "--fps", help="Frames per second of the written video (default 8)."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise."),
    size: str = typer.Option(None, "--size", help="N or WIDTHxHEIGHT in pixels (default: the model's native size)."),
    negative: str = typer.Option(None, "--negative", help="Negative prompt."),
    scheduler: str = typer.Option(None, "--scheduler", help="ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm, dpm-karras, unipc."),
    model: str = ModelOption,
    adapter: str = typer.Option(None, "--adapter", "-a", help="Motion adapter: 'shapes' (default with --model shapes), a MotionAdapter folder or Hub id, or a motion-module .safetensors/.ckpt file."),
    adapter_config: str = typer.Option(None, "--adapter-config", help="For motion-module files: a MotionAdapter folder or config.json (heads, groups)."),
    config: str = typer.Option(None, "--config", help="For single-file base checkpoints: a diffusers folder or Hub id of the same architecture."),
    trust_pickle: bool = TrustPickleOption,
    free_noise: bool = typer.Option(False, "--free-noise", help="FreeNoise sliding windows, for more frames than the adapter takes in one pass."),
    free_noise_context: int = typer.Option(16, "--free-noise-context", help="FreeNoise window length in frames."),
    free_noise_stride: int = typer.Option(4, "--free-noise-stride", help="FreeNoise window stride in frames."),
    from_sidecar: Path = typer.Option(None, "--from-sidecar", help="Re-run the settings stored with a video (its sidecar, the video, or its contact sheet)."),
    fmt: str = typer.Option("mp4", "--format", help="mp4, gif or webp (lossless)."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Generate a video from a text prompt or per-frame states; writes the video, a contact sheet and a sidecar."""
    quiet_libraries()
    from attncraft.outputs import prepare_output_dir
    from attncraft.pipelines.text_to_video import generate_video, save_video, video_frames_uint8
    from attncraft.progress import progress_task

    plan = check_video_options(prompt, state, states_file, frames, fps, steps, guidance, seed, size, negative, scheduler,
                               free_noise, free_noise_context, free_noise_stride, from_sidecar, fmt)
    fmt = plan.fmt
    out = prepare_output_dir(out)
    loaded = load_video_model(dict(model=model, adapter=adapter, config=config, adapter_config=adapter_config,
                                   trust_pickle=trust_pickle, dtype=dtype), device, plan)
    settings = video_settings(loaded, plan, config, adapter_config)
    console.print(f"model: {loaded.label}")
    if settings.states:
        anchors = settings.schedule().anchors(settings.num_frames)
        for frame, text in zip(anchors, settings.states):
            console.print(f"  frame {frame:3d}: {text}", markup=False, highlight=False)

    with progress_task("denoising", settings.num_inference_steps) as update:
        result = generate_video(loaded, settings, on_step=lambda i, n: update(i), output_type="np")
    paths = save_video(video_frames_uint8(result), settings, out, fmt=fmt, overwrite=overwrite)
    console.print(f"wrote {paths['video'].name}, its contact sheet {paths['sheet'].name} and sidecar "
                  f"{paths['sidecar'].name} to {out}/", markup=False, highlight=False)
    typer.echo(str(paths["video"]))


# --------------------------------------------------------------------------------------------------
# The ``video`` batch job: ``attncraft video`` with its options; one video a pipeline call
# --------------------------------------------------------------------------------------------------


def _prepare_video_job(loaded, job):
    o = job.options
    plan = check_video_options(**o)
    return plan, video_settings(loaded, plan, o["config"], o["adapter_config"])


def _run_video_jobs(loaded, jobs) -> None:
    from attncraft.pipelines.text_to_video import generate_video, save_video, video_frames_uint8

    for job in jobs:
        plan, settings = job.state
        result = generate_video(loaded, settings, output_type="np")
        paths = save_video(video_frames_uint8(result), settings, job.folder(), fmt=plan.fmt, overwrite=True)
        if job.score:
            job.metrics.update(_reader_scores(paths["video"], settings.prompt))
        job.settings = settings.to_dict()


def _reader_scores(path: Path, prompt: str) -> dict[str, float]:
    """The Shapes reader's scores of a written video against its prompt (none outside its vocabulary)."""
    from attncraft.shapes.captions import CaptionError, parse_caption
    from attncraft.shapes.inputs import load_video_for_reader
    from attncraft.shapes.scoring import score_video

    try:
        parsed = parse_caption(prompt)
    except CaptionError:
        return {}
    return score_video(list(load_video_for_reader(path).data), parsed)


register_job(
    "video", video,
    check=check_video_options,
    load=load_video_model,
    prepare=_prepare_video_job,
    run=_run_video_jobs,
    model_options=("model", "adapter", "adapter_config", "config", "dtype", "trust_pickle", "from_sidecar"),
)
