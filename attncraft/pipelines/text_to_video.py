"""Text-to-video on AnimateDiff with per-frame prompts, and reproducible video outputs.

:class:`TextToVideoPipeline` is diffusers' ``AnimateDiffPipeline`` (``from_pretrained``,
``from_pipe``, ``save_pretrained``, ``callback_on_step_end``, ``output_type``, offloading, FreeInit
and FreeNoise behave as there) whose ``prompt`` may also be a *schedule* of states anchored at frames
(:mod:`attncraft.video.prompts`): ``{0: "a red circle on the left", 15: "a red circle on the
right"}``, a :class:`~attncraft.video.prompts.PromptSchedule`, or, for a batch, a list of those
(a list of plain strings stays a batch of single prompts, as in diffusers). Each distinct state is
encoded once (one text-encoder batch), the states are interpolated linearly per frame, and the
per-frame embeddings reach the UNet as ``(batch * frames, tokens, dim)``, b-major, with the
negative embeddings first under classifier-free guidance: exactly the layout in which the stock
pipeline passes its repeated prompt embedding. Negative prompts are as in diffusers: one per video,
the same on every frame. A single prompt (or a one-state schedule) is passed to
the stock pipeline unchanged, so it gives the stock output bit for bit.

How the per-frame embeddings get in: the stock ``__call__`` always repeats one embedding per frame,
so this class lets it run with the first state's embedding and swaps the UNet's
``encoder_hidden_states`` for the per-frame tensor in a forward pre-hook held for the call (its
shape is checked on every call). A ``callback_on_step_end`` that asks for ``prompt_embeds`` sees the
per-frame tensor and may replace it.

Attention techniques: ``pipe(..., techniques=[...])`` installs attncraft techniques for this call
(:func:`~attncraft.attention_processors.apply_techniques`, run start declared with the step count);
``with apply_techniques(pipe, ...)`` around any call works too. The two temporal techniques have
their own call arguments (:func:`temporal_techniques`): ``broadway=True`` (BroadWay's AnimateDiff
preset, guided from :func:`~attncraft.attention_processors.broadway.default_reference_block` of this
UNet: ``up_blocks.1`` on SD 1.5), a preset name, a dict of ``BroadWay`` arguments or a ``BroadWay``;
``vstar=True`` (TAR preset ``64D4``), a preset name, a dict or a ``TemporalAttentionRegularization``.
On one run they compose in a fixed order, whatever order they are given in: on a temporal layer both
select, TAR edits the logits, then the softmax, then BroadWay's temporal self-guidance, then its
Fourier motion enhancement (TAR -> softmax -> TSG -> FME; BroadWay's guidance map is the reference
block's map after TAR). Video synopsis prompting (the prompt's states) is a prompt schedule:
``pipe(PromptSchedule.from_states(make_synopsis(prompt).states))``.

CTGM (FancyVideo's cross-frame textual guidance, :mod:`attncraft.attention_processors.ctgm`):
``pipe(..., ctgm="ctgm.safetensors")`` (or a ``CTGM`` module, or ``"shapes"`` for the trained Shapes
one; ``ctgm_components=[...]`` switches parts off) runs the trained CTGM in this call. The file is
loaded once, strictly and checked against this UNet, and kept while it does not change. It composes
with the other techniques of the call and with per-frame schedules: in every spatial transformer
CTGM's TII turns the (per-frame) text into its own per-frame condition, keeping frame 0's; in
cross-attention its TAR refines the scores and its TFB the output; the temporal techniques act in
the motion modules after that, VSTAR's TAR on the logits, then BroadWay on the probabilities. So
one run with all three has the order TII -> cross-attention (TAR, softmax, TFB) -> motion module
(VSTAR TAR, softmax, BroadWay TSG, FME), whatever order they are passed in.

Frames: the motion modules' sinusoidal frame positions stop at the adapter's
``motion_max_seq_length`` (32 for the published adapters). More frames in one pass are refused before
any work, naming the limit and the route to longer videos: FreeNoise's sliding windows
(``pipe.enable_free_noise()``; ``attncraft video --free-noise``). Under FreeNoise the per-frame
prompts work as without it, and attncraft techniques compose with it as far as they can: the core
follows the motion blocks FreeNoise rebuilds, techniques on spatial layers are unaffected, and a
temporal technique that needs attention over the whole clip (``supports_frame_windows = False``,
e.g. BroadWay) is refused with one line by the attention manager (VSTAR's TAR acts per window).

:func:`generate_video` / :func:`save_video` are the Python API of ``attncraft video``:
:class:`TextToVideoSettings` holds everything that reproduces a video and travels in its JSON
sidecar (and the contact sheet's PNG text chunk).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AnimateDiffPipeline

from attncraft import __version__
from attncraft.errors import InputError
from attncraft.loading import LoadedPipeline
from attncraft.pipelines.latents import UserLatentsMixin
from attncraft.progress import step_counter
from attncraft.video.prompts import PromptSchedule, as_schedule, interpolate_embeddings

__all__ = [
    "TextToVideoPipeline",
    "resolve_broadway",
    "temporal_techniques",
    "TextToVideoSettings",
    "check_frame_count",
    "default_video_settings",
    "frame_limit",
    "generate_video",
    "save_video",
    "validate_video",
]

_STOCK_SIGNATURE = inspect.signature(AnimateDiffPipeline.__call__)


# --------------------------------------------------------------------------------------------------
# Frame limit, FreeNoise
# --------------------------------------------------------------------------------------------------


def frame_limit(pipe) -> int | None:
    """Frames one pass of this motion UNet takes (its ``motion_max_seq_length``), or None."""
    value = getattr(getattr(pipe, "unet", None), "config", {}).get("motion_max_seq_length")
    return int(value) if value else None


def free_noise_enabled(pipe) -> bool:
    return bool(getattr(pipe, "free_noise_enabled", False))


def check_frame_count(pipe, num_frames: Any) -> int:
    """``num_frames`` if one pass of ``pipe`` can generate it; else one line naming the limit and the
    route to longer videos."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"the number of frames must be a whole number >= 1, got {num_frames!r}", "pass e.g. --frames 16")
    limit = frame_limit(pipe)
    if free_noise_enabled(pipe):
        context = getattr(pipe, "_free_noise_context_length", None)
        if limit is not None and context is not None and context > limit:
            raise InputError(
                f"the FreeNoise window of {context} frames is longer than this motion adapter's limit of {limit}",
                f"enable FreeNoise with a context length of at most {limit}",
            )
        if context is not None and num_frames < context:
            raise InputError(
                f"{num_frames} frames are fewer than one FreeNoise window ({context} frames)",
                f"pass at least {context} frames, or disable FreeNoise for short videos",
            )
        return num_frames
    if limit is not None and num_frames > limit:
        raise InputError(
            f"{num_frames} frames exceed this motion adapter's limit of {limit} frames in one pass (motion_max_seq_length)",
            f"generate at most {limit} frames, or use FreeNoise sliding windows for longer videos "
            "(attncraft video --free-noise; Python: pipe.enable_free_noise())",
        )
    return num_frames


# --------------------------------------------------------------------------------------------------
# BroadWay and VSTAR as call arguments
# --------------------------------------------------------------------------------------------------


def _technique_from(spec: Any, cls: type, what: str, example: str, fill: Callable[[dict], None] | None = None) -> Any:
    """``cls`` from True (its defaults), a preset name, a dict of its arguments, or an instance (as is)."""
    if isinstance(spec, cls):
        return spec
    if spec is True:
        spec = {}
    elif isinstance(spec, str):
        spec = {"preset": spec}
    elif not isinstance(spec, Mapping):
        raise InputError(f"{what}= takes True, a preset name, a dict or a {cls.__name__}, got {type(spec).__name__}",
                         f"pass e.g. {what}=True or {what}={example}")
    spec = dict(spec)
    if fill is not None:
        fill(spec)
    return cls.from_settings(spec)


def resolve_broadway(unet: Any, spec: Any) -> Any:
    """A ``BroadWay`` from ``spec``: True, a preset name, a dict of its arguments (a sidecar's
    ``broadway`` entry) or a ``BroadWay`` (returned as is). Without a ``reference_block`` the
    reference is :func:`~attncraft.attention_processors.broadway.default_reference_block` of ``unet``."""
    from attncraft.attention_processors.broadway import BroadWay, default_reference_block

    def reference(settings: dict) -> None:
        if settings.get("reference_block") is None:
            settings["reference_block"] = default_reference_block(unet)

    return _technique_from(spec, BroadWay, "broadway", "{'beta': 2.0}", reference)


def resolve_vstar(spec: Any) -> Any:
    """A ``TemporalAttentionRegularization`` from True, a preset name, a dict of its arguments or one."""
    from attncraft.attention_processors.vstar import TemporalAttentionRegularization

    return _technique_from(spec, TemporalAttentionRegularization, "vstar", "'64D1_32D8'")


def temporal_techniques(unet: Any, broadway: Any = None, vstar: Any = None) -> list[Any]:
    """The techniques of the ``broadway=`` / ``vstar=`` arguments (None or False: off), TAR first.

    The list order does not matter for the result (the processor runs logit edits before probability
    edits); it is the order of the composition: TAR -> softmax -> TSG -> FME.
    """
    out = []
    if vstar is not None and vstar is not False:
        out.append(resolve_vstar(vstar))
    if broadway is not None and broadway is not False:
        out.append(resolve_broadway(unet, broadway))
    return out


def check_techniques_fit(techniques: Sequence[Any], num_frames: int, frame_windows: bool = False) -> None:
    """Before any work: each technique's frame check (BroadWay's tau against the frame count). Under
    FreeNoise's windows (``frame_windows``) the attention manager refuses, at installation, the
    techniques that need attention over the whole clip, and the windows' length is what counts."""
    if frame_windows:
        return
    for technique in techniques:
        check = getattr(technique, "check_frames", None)
        if check is not None:
            check(num_frames)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def _is_schedule(prompt: Any) -> bool:
    return isinstance(prompt, (Mapping, PromptSchedule)) or (
        isinstance(prompt, (list, tuple)) and any(isinstance(p, (Mapping, PromptSchedule, list, tuple)) for p in prompt)
    )


def video_schedules(prompt: Any) -> list[PromptSchedule] | None:
    """Per-video schedules of a ``prompt`` argument, or None for what the stock pipeline takes as it is
    (a string, a list of strings, nothing)."""
    if prompt is None or isinstance(prompt, str):
        return None
    if isinstance(prompt, (Mapping, PromptSchedule)):
        return [as_schedule(prompt)]
    if isinstance(prompt, (list, tuple)):
        if all(isinstance(p, str) for p in prompt):
            return None
        return [as_schedule(p) for p in prompt]
    raise InputError(
        f"cannot use a {type(prompt).__name__} as a video prompt",
        "pass a string, a {frame: text} dict, a PromptSchedule, or a list of those (one per video)",
    )


class _FrameEmbeddings:
    """Holds the per-frame text embeddings of one call and puts them into the UNet's calls."""

    def __init__(self, embeds: torch.Tensor):
        self.embeds = embeds

    def pre_forward(self, module, args, kwargs):
        stock = kwargs.get("encoder_hidden_states")
        if stock is None:
            return None
        if stock.shape != self.embeds.shape:
            raise RuntimeError(
                f"the UNet received text embeddings of shape {tuple(stock.shape)}, but the per-frame schedule "
                f"has {tuple(self.embeds.shape)}; this diffusers version passes prompt embeddings in a layout "
                "TextToVideoPipeline does not know"
            )
        kwargs["encoder_hidden_states"] = self.embeds.to(device=stock.device, dtype=stock.dtype)
        return args, kwargs

    def wrap_callback(self, callback: Callable | None, tensor_inputs: Sequence[str]) -> Callable | None:
        if callback is None or "prompt_embeds" not in tensor_inputs:
            return callback

        def with_frame_embeddings(pipe, step, timestep, callback_kwargs):
            callback_kwargs["prompt_embeds"] = self.embeds
            outputs = callback(pipe, step, timestep, callback_kwargs)
            new = (outputs or {}).get("prompt_embeds")
            if new is not None and new is not self.embeds:
                if new.shape != self.embeds.shape:
                    raise ValueError(f"callback_on_step_end returned prompt_embeds of shape {tuple(new.shape)}; "
                                     f"the per-frame embeddings are {tuple(self.embeds.shape)}")
                self.embeds = new
            return outputs

        return with_frame_embeddings


class TextToVideoPipeline(UserLatentsMixin, AnimateDiffPipeline):
    """``AnimateDiffPipeline`` with per-frame prompt schedules and per-call attention techniques.

    Extra call arguments (everything else as in ``AnimateDiffPipeline.__call__``):

    * ``prompt``: also ``{frame: text}``, a :class:`~attncraft.video.prompts.PromptSchedule`, or a list
      of those (one per video); a plain list of strings is a batch, as in diffusers;
    * ``techniques``: attncraft :class:`~attncraft.attention_processors.AttentionTechnique` objects
      active for this call only;
    * ``broadway`` / ``vstar``: BroadWay and VSTAR's temporal attention regularization for this call
      (True, a preset name, a dict of arguments, or the technique; see :func:`temporal_techniques`).
      With both, the order on a layer is TAR -> softmax -> TSG -> FME, whatever the argument order.
    * ``ctgm``: a trained CTGM for this call (a file path, ``"shapes"``, a ``CTGM`` or its technique),
      ``ctgm_components``: the parts of it to run (default: all its mode has); see the module doc.

    The frame count is checked against the adapter's limit before any work (see module doc).
    ``save_pretrained`` writes a stock ``AnimateDiffPipeline`` folder (the per-frame prompts are code,
    not weights), which diffusers and this class both load.
    """

    @torch.no_grad()
    def __call__(self, prompt: Any = None, num_frames: int | None = 16, *args: Any,
                 techniques: Sequence[Any] | None = None, broadway: Any = None, vstar: Any = None,
                 ctgm: Any = None, ctgm_components: Sequence[str] | None = None, **kwargs: Any):
        bound = _STOCK_SIGNATURE.bind(self, prompt, num_frames, *args, **kwargs)
        call = {k: v for k, v in bound.arguments.items() if k not in ("self", "kwargs")}
        call.update(bound.arguments.get("kwargs", {}))
        frames = check_frame_count(self, call["num_frames"] if call.get("num_frames") is not None else 16)
        call["num_frames"] = frames
        techniques = (*(techniques or ()), *temporal_techniques(self.unet, broadway, vstar))
        if ctgm is not None:
            from attncraft.attention_processors.ctgm import ctgm_technique

            techniques += (ctgm_technique(self, ctgm, ctgm_components),)
        elif ctgm_components is not None:
            raise InputError("ctgm_components without ctgm", "pass ctgm=... too, or drop ctgm_components")
        check_techniques_fit(techniques, frames, free_noise_enabled(self))
        with contextlib.ExitStack() as stack:
            if techniques:
                from attncraft.attention_processors import apply_techniques

                manager = stack.enter_context(apply_techniques(self, *techniques))
                manager.start_run(call.get("num_inference_steps", _default("num_inference_steps")))
            schedules = video_schedules(call.get("prompt"))
            if schedules is not None and all(s.is_single for s in schedules):
                # one state per video: the stock path, bit for bit
                single = [s.texts[0] for s in schedules]
                call["prompt"] = single[0] if isinstance(call["prompt"], (Mapping, PromptSchedule)) else single
                schedules = None
            if schedules is None:
                return AnimateDiffPipeline.__call__(self, **call)
            return self._call_with_schedules(schedules, call, stack)

    # ---------------------------------------------------------------------------------------
    def encode_prompt_schedules(
        self,
        schedules: Sequence[PromptSchedule],
        num_frames: int,
        device: torch.device,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Encode every distinct state once; returns ``(frame_embeds, first_embeds, negative_embeds)``.

        ``frame_embeds`` is what the UNet receives: ``(n * B * F, T, D)`` b-major (``n`` = 2 under
        guidance: the negatives first, one per video, repeated over its frames); ``first_embeds``
        ``(B, T, D)`` are the first states and ``negative_embeds`` ``(B, T, D)`` the negatives (None
        without guidance), as the stock pipeline's ``encode_prompt`` returns them.
        """
        firsts = [s.texts[0] for s in schedules]
        first_embeds, negative_embeds = self.encode_prompt(
            firsts, device, 1, do_classifier_free_guidance, negative_prompt, lora_scale=lora_scale, clip_skip=clip_skip,
        )
        table = dict(zip(firsts, first_embeds))
        rest = list(dict.fromkeys(t for s in schedules for t in s.texts if t not in table))
        if rest:
            rest_embeds, _ = self.encode_prompt(rest, device, 1, False, lora_scale=lora_scale, clip_skip=clip_skip)
            table.update(zip(rest, rest_embeds))
        per_video = torch.stack([
            interpolate_embeddings(torch.stack([table[t] for t in s.texts]), s.weights(num_frames)) for s in schedules
        ])  # (B, F, T, D)
        if do_classifier_free_guidance:
            negatives = negative_embeds[:, None].expand_as(per_video)
            per_video = torch.cat([negatives, per_video])
        return per_video.reshape(-1, *per_video.shape[2:]), first_embeds, negative_embeds

    def _call_with_schedules(self, schedules: list[PromptSchedule], call: dict[str, Any], stack: contextlib.ExitStack):
        if call.get("prompt_embeds") is not None or call.get("negative_prompt_embeds") is not None:
            raise InputError("a prompt schedule cannot be combined with prompt_embeds / negative_prompt_embeds",
                             "pass either the schedule or precomputed embeddings")
        frames = call["num_frames"]
        for schedule in schedules:
            schedule.anchors(frames)  # states that do not fit the frames fail here, before any work
        guidance = call.get("guidance_scale", _default("guidance_scale"))
        cfg = guidance > 1
        attention_kwargs = call.get("cross_attention_kwargs") or {}
        frame_embeds, first_embeds, negative_embeds = self.encode_prompt_schedules(
            schedules, frames, self._execution_device, cfg, call.get("negative_prompt"),
            lora_scale=attention_kwargs.get("scale"), clip_skip=call.get("clip_skip"),
        )
        holder = _FrameEmbeddings(frame_embeds)
        if free_noise_enabled(self):
            # FreeNoise encodes prompts itself (it refuses embeddings); its result is replaced per call
            call["prompt"] = schedules[0].texts[0] if len(schedules) == 1 else [s.texts[0] for s in schedules]
        else:
            call.update(prompt=None, prompt_embeds=first_embeds, negative_prompt=None,
                        negative_prompt_embeds=negative_embeds if cfg else None)
        inputs = call.get("callback_on_step_end_tensor_inputs", _default("callback_on_step_end_tensor_inputs"))
        call["callback_on_step_end"] = holder.wrap_callback(call.get("callback_on_step_end"), inputs)
        handle = self.unet.register_forward_pre_hook(holder.pre_forward, with_kwargs=True, prepend=True)
        stack.callback(handle.remove)
        return AnimateDiffPipeline.__call__(self, **call)

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any):
        """Save as a stock ``AnimateDiffPipeline`` folder (loadable without attncraft)."""
        import json

        result = super().save_pretrained(save_directory, *args, **kwargs)
        index = Path(save_directory) / "model_index.json"
        data = json.loads(index.read_text())
        data["_class_name"] = AnimateDiffPipeline.__name__
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return result


def _default(name: str) -> Any:
    return _STOCK_SIGNATURE.parameters[name].default


# --------------------------------------------------------------------------------------------------
# Settings, generation, outputs
# --------------------------------------------------------------------------------------------------

MAX_SIDE = 2048
MAX_FPS = 120.0


@dataclass
class TextToVideoSettings:
    """Everything needed to reproduce one video (stored in its sidecar and contact sheet).

    ``prompt`` describes the whole video; it is what the model reads unless ``states`` are given
    (then each state is anchored at ``state_frames``, or spread evenly when that is None) and the
    caption that ``attncraft world score`` checks by default.
    """

    prompt: str
    states: list[str] | None = None
    state_frames: list[int] | None = None
    negative_prompt: str | None = None
    num_frames: int = 16
    fps: float = 8.0
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    scheduler: str | None = None
    free_noise: bool = False
    free_noise_context: int = 16
    free_noise_stride: int = 4
    ctgm: str | None = None
    """A trained CTGM (file or ``shapes``); its fingerprint and mode are recorded in ``extra["ctgm"]``."""
    ctgm_components: list[str] | None = None
    model: str = "shapes"
    adapter: str | None = "shapes"
    model_label: str = ""
    broadway: dict[str, Any] | None = None
    """BroadWay's settings (``BroadWay.settings()``), or None: off."""
    vstar: dict[str, Any] | None = None
    """VSTAR temporal attention regularization's settings, or None: off."""
    synopsis: dict[str, Any] | None = None
    """Where ``states`` came from when a video synopsis made them (method, source, states, the
    language model and its answer); a record: ``states`` is what the model reads."""
    extra: dict[str, Any] = field(default_factory=dict)

    def schedule(self) -> PromptSchedule:
        if self.states:
            frames = tuple(self.state_frames) if self.state_frames is not None else None
            return PromptSchedule(tuple(self.states), frames)
        return PromptSchedule.single(self.prompt)

    def techniques(self, unet: Any) -> list[Any]:
        """The attention techniques these settings switch on (BroadWay, VSTAR TAR)."""
        return temporal_techniques(unet, self.broadway, self.vstar)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.states:
            data["state_frames_resolved"] = self.schedule().anchors(self.num_frames)
        data.update(attncraft_version=__version__, task="video")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextToVideoSettings:
        names = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("prompt",) if k not in data]
        if missing or data.get("task", "video") != "video":
            raise InputError("the sidecar holds no video settings", "pass the .json sidecar written beside an attncraft video")
        return cls(**{k: v for k, v in data.items() if k in names})


def default_video_settings(loaded: LoadedPipeline, prompt: str) -> TextToVideoSettings:
    """Settings with this model's recommended size, frames, steps and guidance filled in."""
    pipe = loaded.pipeline
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    d = loaded.defaults
    return TextToVideoSettings(
        prompt=prompt,
        num_frames=int(d.get("num_frames", 16)),
        fps=float(d.get("fps", 8.0)),
        num_inference_steps=int(d.get("num_inference_steps", 25)),
        guidance_scale=float(d.get("guidance_scale", 7.5)),
        width=int(d.get("width", side)),
        height=int(d.get("height", side)),
        scheduler=d.get("scheduler"),
        model=loaded.reference,
        adapter=loaded.adapter,
        model_label=loaded.label,
    )


def validate_video(settings: TextToVideoSettings, loaded: LoadedPipeline) -> None:
    """Raise :class:`InputError` (one line, with the fix) for any setting the model cannot take."""
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.schedulers import SCHEDULERS
    from attncraft.validation import check_finite, check_int_range, check_text, check_token_count

    pipe = loaded.pipeline
    check_values(settings.prompt, settings.negative_prompt, settings.num_inference_steps, settings.guidance_scale,
                 settings.seed)
    check_int_range("--frames", settings.num_frames, 1, example=16)
    check_finite("--fps", settings.fps, 0.0, MAX_FPS, low_inclusive=False, example=8)
    if settings.free_noise:
        check_int_range("--free-noise-context", settings.free_noise_context, 1, example=16)
        check_int_range("--free-noise-stride", settings.free_noise_stride, 1, settings.free_noise_context, example=4)
        limit = frame_limit(pipe)
        if limit is not None and settings.free_noise_context > limit:
            raise InputError(f"--free-noise-context {settings.free_noise_context} is longer than this motion adapter's "
                             f"limit of {limit} frames", f"pass --free-noise-context {min(16, limit)}")
        if settings.num_frames < settings.free_noise_context:
            raise InputError(f"{settings.num_frames} frames are fewer than one FreeNoise window ({settings.free_noise_context})",
                             "drop --free-noise for short videos, or pass more --frames")
    else:
        check_frame_count(pipe, settings.num_frames)
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for name, value in (("width", settings.width), ("height", settings.height)):
        check_int_range(f"--{name}", value, 1, MAX_SIDE)
        if value < multiple or value % multiple:
            raise InputError(
                f"the {name} {value} is not usable by this model: it must be a multiple of {multiple}",
                f"pass e.g. --size {max(multiple, round(value / multiple) * multiple)}",
            )
    texts = [("prompt", settings.prompt)] + [(f"state {i + 1}", s) for i, s in enumerate(settings.states or [])]
    if settings.negative_prompt:
        texts.append(("negative prompt", settings.negative_prompt))
    for what, text in texts:
        check_text(what, text)
        check_token_count(pipe.tokenizer, text, what)
    if settings.states:
        if loaded.family != "animatediff":
            raise InputError("per-frame states need an SD 1.x/2.x base model (TextToVideoPipeline)",
                             "use a single prompt with SDXL motion adapters")
        settings.schedule().anchors(settings.num_frames)
    check_techniques_fit(settings.techniques(pipe.unet), settings.num_frames, settings.free_noise)
    if settings.scheduler is not None and settings.scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {settings.scheduler!r}", f"pass one of {', '.join(SCHEDULERS)}")
    if settings.ctgm is not None:
        check_ctgm_settings(settings.ctgm, settings.ctgm_components, settings.extra.get("ctgm"))
    elif settings.ctgm_components:
        raise InputError("--ctgm-parts without --ctgm", "pass --ctgm too, or drop --ctgm-parts")


def check_ctgm_settings(reference: str, components: Sequence[str] | None, recorded: Mapping[str, Any] | None = None) -> None:
    """One line unless ``reference`` is a readable CTGM file whose mode has ``components``, and, when a
    sidecar ``recorded`` it, the same file (fingerprint) that made the video; reads no tensors."""
    from attncraft.attention_processors.ctgm import file_fingerprint, read_ctgm_metadata, resolve_ctgm_file

    path = resolve_ctgm_file(reference)
    config, _ = read_ctgm_metadata(path)
    unknown = sorted(set(components or ()) - set(config.components))
    if unknown:
        raise InputError(f"the CTGM {reference} ({config.mode}) has no {', '.join(unknown)}",
                         f"pass --ctgm-parts among {','.join(config.components)}")  # fmt: skip
    was = (recorded or {}).get("sha256_16")
    if was and was != file_fingerprint(path):
        raise InputError(f"the CTGM file {path} is not the one that made this video (sha256 {was}...)",
                         "pass the original CTGM file with --ctgm")  # fmt: skip


def generate_video(
    loaded: LoadedPipeline,
    settings: TextToVideoSettings,
    on_step: Callable[[int, int], None] | None = None,
    techniques: Sequence[Any] = (),
    **pipeline_kwargs: Any,
):
    """Generate one video; returns the diffusers pipeline output (``.frames``).

    ``on_step(step, total)`` is called after every denoising step; ``techniques`` are attncraft
    attention techniques active for this call, besides those of ``settings.broadway`` /
    ``settings.vstar``; extra keyword arguments go to the pipeline call.
    FreeNoise (``settings.free_noise``) is enabled for the call and restored afterwards.
    """
    from attncraft.schedulers import use_scheduler

    validate_video(settings, loaded)
    pipe = loaded.pipeline
    techniques = (*settings.techniques(pipe.unet), *techniques)
    use_scheduler(pipe, settings.scheduler)
    device = pipe._execution_device
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(settings.seed)
    total = settings.num_inference_steps * (getattr(pipe, "_free_init_num_iters", 1) if getattr(pipe, "free_init_enabled", False) else 1)
    callback = step_counter(on_step, total)
    if settings.ctgm is not None:
        from attncraft.attention_processors.ctgm import ctgm_technique

        ctgm = ctgm_technique(pipe, settings.ctgm, settings.ctgm_components)
        techniques = (*techniques, ctgm)
        settings.extra["ctgm"] = ctgm.settings()
    prompt: Any = settings.schedule() if settings.states else settings.prompt
    call = dict(
        prompt=prompt, negative_prompt=settings.negative_prompt, num_frames=settings.num_frames,
        height=settings.height, width=settings.width, num_inference_steps=settings.num_inference_steps,
        guidance_scale=settings.guidance_scale, generator=generator, callback_on_step_end=callback,
    )
    call.update(pipeline_kwargs)
    was_free_noise = free_noise_enabled(pipe)
    with contextlib.ExitStack() as stack:
        if settings.free_noise and not was_free_noise:
            if getattr(pipe, "motion_adapter", None) is None:
                raise InputError("FreeNoise needs the pipeline's motion adapter (diffusers reads its frame limit), "
                                 "and this model folder holds only the motion UNet",
                                 "pass the base image model as --model and the adapter as --adapter")
            pipe.enable_free_noise(context_length=settings.free_noise_context, context_stride=settings.free_noise_stride)
            stack.callback(pipe.disable_free_noise)
        if isinstance(pipe, TextToVideoPipeline):
            return pipe(**call, techniques=techniques)
        # diffusers' own AnimateDiff pipelines (SDXL): the same checks, techniques around the call
        from attncraft.attention_processors import apply_techniques

        check_frame_count(pipe, settings.num_frames)
        with apply_techniques(pipe, *techniques):
            return pipe(**call)


def video_frames_uint8(output) -> Any:
    """The first video of a pipeline output as ``(F, H, W, 3)`` uint8 (any ``output_type`` but latent)."""
    import numpy as np

    from attncraft.video.io import frames_to_uint8

    frames = output.frames if hasattr(output, "frames") else output[0]
    first = frames[0]
    if isinstance(first, list):  # PIL images
        return np.stack([np.asarray(im.convert("RGB")) for im in first])
    return frames_to_uint8(first)


def save_video(
    frames: Any,
    settings: TextToVideoSettings,
    out_dir: str | Path,
    fmt: str = "mp4",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the video, its contact sheet (``<name>_frames.png``) and its JSON sidecar.

    The name is ``<prompt>_s<seed>.<fmt>``; nothing existing is replaced (the next free name is
    taken, atomically) unless ``overwrite``. Returns the paths by kind.
    """
    from attncraft.outputs import sidecar_path
    from attncraft.pipelines.text_to_image import output_name
    from attncraft.video.io import sheet_path, write_video

    path = Path(out_dir) / f"{output_name(settings.prompt, settings.seed)}.{fmt}"
    video = write_video(path, frames, fps=settings.fps, settings=settings.to_dict(), overwrite=overwrite, sheet=True,
                        caption=settings.prompt)
    return {"video": video, "sidecar": sidecar_path(video), "sheet": sheet_path(video)}
