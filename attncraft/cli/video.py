"""``attncraft video PROMPT``: text-to-video on AnimateDiff, with per-frame states and a trained CTGM
(``--ctgm FILE``); ``--method fancyvideo`` runs the released FancyVideo model instead
(:mod:`attncraft.cli.fancyvideo`).

Writes the video (``--format mp4|gif|webp``), a contact sheet of all frames (``<name>_frames.png``)
and a JSON sidecar (``<video>.json``) with every setting that reproduces it;
``attncraft video --from-sidecar FILE`` re-runs those settings (FILE: the video, its sidecar or its
contact sheet). ``attncraft world score VIDEO`` reads the video back against its prompt.

Temporal techniques (:mod:`attncraft.cli.broadway`, :mod:`attncraft.cli.vstar`): ``--broadway``
(temporal self-guidance + Fourier motion enhancement), ``--vstar`` (temporal attention
regularization), composed on one run as TAR -> softmax -> TSG -> FME; ``--synopsis rule|llm`` (with
``--llm PATH_OR_ID``) turns the prompt into per-frame states when no ``--state`` is given (explicit
states always win). All of it is checked before any model is loaded, and stored in the sidecar:
``--from-sidecar`` runs the same techniques on the same states (the language model is not needed
again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from attncraft.cli import fancyvideo as fancyvideo_cmd
from attncraft.cli.broadway import (
    BroadwayAlphaOption,
    BroadwayBetaOption,
    BroadwayOption,
    BroadwayPresetOption,
    BroadwayReferenceOption,
    BroadwayTauOption,
)
from attncraft.cli.common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    NegativeOption,
    OutOption,
    OverwriteOption,
    SchedulerOption,
    TrustPickleOption,
    console,
    quiet_libraries,
)
from attncraft.cli.vstar import LlmOption, SynopsisOption, VstarOption, VstarPresetOption, VstarSigmaOption
from attncraft.batch.jobs import RUNNER_OPTIONS, register_job
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


def _technique_options(broadway, broadway_preset, broadway_alpha, broadway_beta, broadway_tau, broadway_reference,
                       vstar, vstar_preset, vstar_sigma, synopsis, llm, frames, free_noise):
    """(BroadWay or None, TAR or None, synopsis method or None) from the options, every value checked."""
    from attncraft.cli.broadway import broadway_from_options
    from attncraft.cli.vstar import check_synopsis_options, vstar_from_options

    technique = broadway_from_options(broadway, broadway_preset, broadway_alpha, broadway_beta, broadway_tau,
                                      num_frames=None if free_noise else frames, reference_block=broadway_reference)
    if technique is not None and free_noise:
        raise InputError("--broadway needs temporal attention over the whole clip, and --free-noise runs it on windows of frames",
                         "drop --free-noise (at most the adapter's frame limit), or drop --broadway")
    tar = vstar_from_options(vstar, vstar_preset, vstar_sigma)
    return technique, tar, check_synopsis_options(synopsis, llm)


def technique_lines(settings, unet) -> list[str]:
    """What the run switches on, one line each, with the steps each technique acts on (for the console)."""
    from attncraft.attention_processors.broadway import BroadWay

    lines = []
    if settings.synopsis:
        lines.append(f"synopsis ({settings.synopsis['method']}): {len(settings.synopsis['states'])} states")
    n = settings.num_inference_steps
    for technique in settings.techniques(unet):
        if isinstance(technique, BroadWay):
            k = technique.active_steps(n)
            window = f"steps 0..{k - 1} of {n}" if k else f"no step of {n} (add --steps)"
            lines.append(f"broadway: alpha {technique.alpha:g}, beta {technique.beta:g}, tau {technique.tau}, guided "
                         f"from up_blocks.{technique.reference_block}, {window}")  # fmt: skip
        else:
            last = technique.last_active_step(n)
            sigmas = ", ".join(f"level {level} sigma {sigma:g}" for level, sigma in sorted(technique.sigmas.items()))
            window = f"steps 0..{min(last, n - 1)} of {n}" if last >= 0 else f"no step of {n}"
            lines.append(f"vstar: temporal attention regularization, {sigmas}, {window}")
    return lines



@dataclass
class VideoPlan:
    """The checked options of ``attncraft video`` (before any model is loaded)."""

    fmt: str
    stored: dict[str, Any] | None
    """The settings of --from-sidecar, or None."""
    prompt: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    schedule: Any = None
    broadway: Any = None
    broadway_reference: int | None = None
    tar: Any = None
    synopsis_method: str | None = None


def check_video_options(prompt=None, state=None, states_file=None, frames=None, fps=None, steps=None, guidance=None,
                        seed=0, size=None, negative=None, scheduler=None, free_noise=False, free_noise_context=16,
                        free_noise_stride=4, broadway=False, broadway_preset="animatediff", broadway_alpha=None,
                        broadway_beta=None, broadway_tau=None, broadway_reference=None, vstar=False, vstar_preset="64D4",
                        vstar_sigma=None, synopsis=None, llm=None, ctgm=None, ctgm_parts=None, from_sidecar=None,
                        fmt="mp4", **_other) -> VideoPlan:
    """Every check of ``attncraft video`` that needs no model (the video batch job runs them too)."""
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.validation import check_finite, check_int_range, read_text_lines
    from attncraft.video.prompts import parse_states

    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"unknown --format {fmt!r}", f"pass one of {', '.join(FORMATS)}")
    overrides: dict[str, Any] = {}
    technique_options = {
        "--broadway": broadway, "--broadway-preset": broadway_preset != "animatediff", "--broadway-alpha": broadway_alpha,
        "--broadway-beta": broadway_beta, "--broadway-tau": broadway_tau, "--broadway-reference": broadway_reference,
        "--vstar": vstar, "--vstar-preset": vstar_preset != "64D4", "--vstar-sigma": vstar_sigma,
        "--synopsis": synopsis, "--llm": llm,
    }  # fmt: skip
    if from_sidecar is not None:
        if prompt is not None or state or states_file is not None:
            raise InputError("--from-sidecar re-runs stored settings and takes no prompt or states",
                             "drop the prompt / --state / --states-file")
        given = [name for name, value in technique_options.items() if value not in (None, False)]
        if given:
            raise InputError(f"--from-sidecar re-runs the stored techniques and states and takes no {given[0]}",
                             f"drop {given[0]}, or run without --from-sidecar")
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
    # what needs no model is checked before one is loaded: values, techniques, the synopsis options
    check_values(prompt, negative, steps, guidance, seed)
    if frames is not None:
        frames = check_int_range("--frames", frames, 1, example=16)
    broadway_technique, tar, method = _technique_options(
        broadway, broadway_preset, broadway_alpha, broadway_beta, broadway_tau, broadway_reference,
        vstar, vstar_preset, vstar_sigma, synopsis, llm, frames, free_noise,
    )
    if schedule is not None:
        overrides.update(states=list(schedule.texts), state_frames=list(schedule.frames) if schedule.frames else None)
    if frames is not None:
        overrides["num_frames"] = frames
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
    if ctgm is not None or ctgm_parts is not None:
        from attncraft.pipelines.text_to_video import check_ctgm_settings

        parts = [p.strip() for p in ctgm_parts.split(",") if p.strip()] if ctgm_parts else None
        if ctgm is None:
            raise InputError("--ctgm-parts without --ctgm", "pass --ctgm too, or drop --ctgm-parts")
        check_ctgm_settings(ctgm, parts)  # the file is read (no tensors) before any model is loaded
        overrides.update(ctgm=ctgm, ctgm_components=parts)
    return VideoPlan(fmt, None, prompt, overrides, schedule, broadway_technique, broadway_reference, tar, method)


def make_synopsis(plan: VideoPlan, llm: str | None = None):
    """The video synopsis of ``--synopsis`` (states from the prompt), applied to the plan; or None."""
    method = plan.synopsis_method
    if method is None:
        return None
    if plan.schedule is not None:  # explicit states always win
        console.print(f"--synopsis {method}: not used, the given states are", markup=False, highlight=False)
        return None
    from attncraft.cli.vstar import synopsis_from_options

    made = synopsis_from_options(plan.prompt, method, llm, None)
    if len(made.states) >= 2:
        plan.overrides.update(states=list(made.states), state_frames=None)
    else:
        console.print(f"--synopsis {method}: the prompt is one state, used on every frame", markup=False,
                      highlight=False)  # fmt: skip
    return made


def load_video_model(options: dict[str, Any], device: str = "auto", plan: VideoPlan | None = None):
    """The AnimateDiff pipeline of a run: the one the --from-sidecar settings name, else the options'."""
    quiet_libraries()
    from attncraft.loading import load_text_to_video
    from attncraft.pipelines.text_to_video import TextToVideoSettings

    plan = plan if plan is not None else check_video_options(**options)
    if plan.stored is not None:
        stored = TextToVideoSettings.from_dict(plan.stored)
        return load_text_to_video(stored.model, stored.adapter, device=device, dtype=options["dtype"],
                                  config=stored.extra.get("config"), adapter_config=stored.extra.get("adapter_config"),
                                  trust_pickle=options["trust_pickle"])
    return load_text_to_video(options["model"], options["adapter"], device=device, dtype=options["dtype"],
                              config=options["config"], adapter_config=options["adapter_config"],
                              trust_pickle=options["trust_pickle"])


def video_settings(loaded, plan: VideoPlan, config: str | None = None, adapter_config: str | None = None, made=None):
    """The settings of a run of ``plan`` on ``loaded`` (model defaults and techniques filled in), checked."""
    from attncraft.pipelines.text_to_video import (
        TextToVideoSettings,
        default_video_settings,
        resolve_broadway,
        validate_video,
    )

    if plan.stored is not None:
        settings = TextToVideoSettings.from_dict(plan.stored)
    else:
        settings = default_video_settings(loaded, plan.prompt)
        for key, value in plan.overrides.items():
            setattr(settings, key, value)
        settings.extra.update({k: v for k, v in (("config", config), ("adapter_config", adapter_config)) if v})
        if made is not None:
            settings.synopsis = {"method": plan.synopsis_method, **made.to_dict()}
        if plan.broadway is not None:
            spec = plan.broadway.settings()
            if plan.broadway_reference is None:  # the model's own reference block
                spec["reference_block"] = None
            settings.broadway = resolve_broadway(loaded.pipeline.unet, spec).settings()
        if plan.tar is not None:
            settings.vstar = plan.tar.settings()
    settings.model_label = loaded.label
    validate_video(settings, loaded)
    return settings


def video(
    prompt: str = typer.Argument(None, help="What the video shows (optional with --state / --states-file)."),
    state: list[str] = typer.Option(None, "--state", help="A per-frame state; repeat it. 'N: text' anchors it at frame N, plain states are spread evenly."),
    states_file: Path = typer.Option(None, "--states-file", help="UTF-8 file with one state a line (same forms as --state)."),
    frames: int = typer.Option(None, "--frames", help="Frames (default: the model's, 16); one pass takes up to the adapter's limit (32)."),
    fps: float = typer.Option(None, "--fps", help="Frames per second of the written video (default 8); with --method fancyvideo also its fps condition (default 25)."),
    steps: int = typer.Option(None, "--steps", help="Denoising steps (default: the model's recommendation)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Classifier-free guidance scale (1 disables it)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initial noise."),
    size: str = typer.Option(None, "--size", help="N or WIDTHxHEIGHT in pixels (default: the model's native size)."),
    negative: str = NegativeOption,
    scheduler: str = SchedulerOption,
    model: str = ModelOption,
    adapter: str = typer.Option(None, "--adapter", "-a", help="Motion adapter: 'shapes' (default with --model shapes), a MotionAdapter folder or Hub id, or a motion-module .safetensors/.ckpt file."),
    adapter_config: str = typer.Option(None, "--adapter-config", help="For motion-module files: a MotionAdapter folder or config.json (heads, groups)."),
    config: str = typer.Option(None, "--config", help="For single-file base checkpoints: a diffusers folder or Hub id of the same architecture."),
    trust_pickle: bool = TrustPickleOption,
    free_noise: bool = typer.Option(False, "--free-noise", help="FreeNoise sliding windows, for more frames than the adapter takes in one pass."),
    free_noise_context: int = typer.Option(16, "--free-noise-context", help="FreeNoise window length in frames."),
    free_noise_stride: int = typer.Option(4, "--free-noise-stride", help="FreeNoise window stride in frames."),
    broadway: bool = BroadwayOption,
    broadway_preset: str = BroadwayPresetOption,
    broadway_alpha: float = BroadwayAlphaOption,
    broadway_beta: float = BroadwayBetaOption,
    broadway_tau: str = BroadwayTauOption,
    broadway_reference: int = BroadwayReferenceOption,
    vstar: bool = VstarOption,
    vstar_preset: str = VstarPresetOption,
    vstar_sigma: str = VstarSigmaOption,
    synopsis: str = SynopsisOption,
    llm: str = LlmOption,
    ctgm: str = typer.Option(None, "--ctgm", help="A trained CTGM (FancyVideo's cross-frame textual guidance): its .safetensors file, or 'shapes' / 'shapes-all' for the Shapes ones."),
    ctgm_parts: str = typer.Option(None, "--ctgm-parts", help="Only these parts of the CTGM, comma-separated: tii_self, tii_cross, tii_text, tar, tfb (default: all its mode has)."),
    from_sidecar: Path = typer.Option(None, "--from-sidecar", help="Re-run the settings stored with a video (its sidecar, the video, or its contact sheet)."),
    fmt: str = typer.Option("mp4", "--format", help="mp4, gif or webp (lossless)."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
    video_method: str = fancyvideo_cmd.MethodOption,
    image: Path = fancyvideo_cmd.ImageOption,
    motion_score: float = fancyvideo_cmd.MotionScoreOption,
    vae: str = fancyvideo_cmd.VaeOption,
    res_adapter: str = fancyvideo_cmd.ResAdapterOption,
) -> None:
    """Generate a video from a text prompt or per-frame states; writes the video, a contact sheet and a sidecar."""
    quiet_libraries()
    from attncraft.outputs import prepare_output_dir
    from attncraft.pipelines.text_to_video import generate_video, save_video, video_frames_uint8

    video_method = fancyvideo_cmd.check_method(video_method, image, motion_score, vae, res_adapter)
    if video_method == "fancyvideo" or fancyvideo_cmd.is_fancyvideo_sidecar(from_sidecar, read_settings_file):
        fmt = fmt.lower().lstrip(".")
        if fmt not in FORMATS:
            raise InputError(f"unknown --format {fmt!r}", f"pass one of {', '.join(FORMATS)}")
        if from_sidecar is not None and (prompt is not None or image is not None):
            raise InputError("--from-sidecar re-runs stored settings and takes no prompt or --image", "drop them")
        unused = [name for name, given in (
            ("--state", state), ("--states-file", states_file), ("--free-noise", free_noise), ("--scheduler", scheduler),
            ("--adapter-config", adapter_config), ("--broadway", broadway), ("--vstar", vstar), ("--synopsis", synopsis),
            ("--llm", llm), ("--ctgm", ctgm), ("--ctgm-parts", ctgm_parts)) if given]
        return fancyvideo_cmd.run(
            prompt, read_settings_file(from_sidecar) if from_sidecar is not None else None, image=image, frames=frames,
            fps=fps, motion_score=motion_score, steps=steps, guidance=guidance, seed=seed,
            size=parse_size(size) if size is not None else None, negative=negative, model=model, adapter=adapter,
            vae=vae, res_adapter=res_adapter, config=config, trust_pickle=trust_pickle, fmt=fmt, out=out,
            overwrite=overwrite, device=device, dtype=dtype, not_for_fancyvideo=unused)
    from attncraft.progress import progress_task

    plan = check_video_options(
        prompt, state, states_file, frames, fps, steps, guidance, seed, size, negative, scheduler, free_noise,
        free_noise_context, free_noise_stride, broadway, broadway_preset, broadway_alpha, broadway_beta, broadway_tau,
        broadway_reference, vstar, vstar_preset, vstar_sigma, synopsis, llm, ctgm, ctgm_parts, from_sidecar, fmt)
    fmt = plan.fmt
    out = prepare_output_dir(out)
    made = make_synopsis(plan, llm)
    loaded = load_video_model(dict(model=model, adapter=adapter, config=config, adapter_config=adapter_config,
                                   trust_pickle=trust_pickle, dtype=dtype), device, plan)
    settings = video_settings(loaded, plan, config, adapter_config, made)
    console.print(f"model: {loaded.label}")
    for line in technique_lines(settings, loaded.pipeline.unet):
        console.print(line, markup=False, highlight=False)
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
    made = make_synopsis(plan, o["llm"])
    return plan, video_settings(loaded, plan, o["config"], o["adapter_config"], made)


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


FANCYVIDEO_OPTIONS = ("video_method", "image", "motion_score", "vae", "res_adapter")
"""``attncraft video --method fancyvideo`` and its options are not part of the video job (yet): a job
is an AnimateDiff run, and a manifest key such as ``method`` is refused as unknown."""


def _check_video_job(**options) -> VideoPlan:
    if fancyvideo_cmd.is_fancyvideo_sidecar(options.get("from_sidecar"), read_settings_file):
        raise InputError("--from-sidecar names a FancyVideo clip, which video jobs do not run",
                         "re-run it with attncraft video --from-sidecar")
    return check_video_options(**options)


register_job(
    "video", video,
    check=_check_video_job,
    load=load_video_model,
    prepare=_prepare_video_job,
    run=_run_video_jobs,
    model_options=("model", "adapter", "adapter_config", "config", "dtype", "trust_pickle", "from_sidecar"),
    exclude=(*RUNNER_OPTIONS, *FANCYVIDEO_OPTIONS),
)
