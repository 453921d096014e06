"""Run-time state shared by the processors of one model, and the per-call view techniques receive.

:class:`AttentionContext` is the single place where a model's processors find what is not passed
to them by diffusers: the current denoising step and timestep, the latent size (temporal layers in
AnimateDiff get ``(batch*h*w, frames, channels)`` and no ``cross_attention_kwargs``), the number of
frames, and whether the batch is ``[uncond; cond]`` (classifier-free guidance). A UNet pre-forward
hook (:mod:`.step_tracker`) keeps it current, so it works with any pipeline, or none.

:class:`AttentionCall` is what each technique hook receives for one processor call: the layer's
static :class:`~.layers.LayerInfo`, the context, and the facts of this call (resolution, frames,
batch size, which batch rows are the unconditional / conditional halves).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from attncraft.attention_processors.layers import LayerInfo


@dataclass
class AttentionContext:
    """Mutable run state of one model (one instance per model, shared by all its processors)."""

    step_index: int = -1
    """Index of the current denoising step (0-based; -1 before the first UNet call of a run)."""
    timestep_tensor: Any = None
    """The UNet's timestep argument of the current call, unread (reading a device tensor syncs)."""
    num_inference_steps: int | None = None
    """Set by pipelines that know it; ``None`` otherwise."""
    latent_hw: tuple[int, int] | None = None
    num_frames: int | None = None
    batch_size: int | None = None
    """Batch of the UNet input (including the CFG doubling), without frames."""
    run_index: int = -1
    """Incremented at the start of every sampling run (e.g. each FreeInit iteration)."""
    unet_calls: int = 0
    """UNet forwards seen in the current run (two per step when CFG is not batched)."""
    cfg_batched: bool | None = None
    """Explicitly set: True if the batch is [uncond; cond]. None: ask the pipeline (see below)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Free-form per-run state for techniques (cleared at each run start)."""
    deferred: Any = None
    """The :class:`~.deferred_maps.DeferredMaps` queue while a manager's UNet hooks are attached."""
    _pipeline_ref: Any = None

    _timestep_value: float | None = None

    @property
    def timestep(self) -> float | None:
        """The current timestep as a float, read from the device only when someone asks."""
        if self._timestep_value is None and self.timestep_tensor is not None:
            t = self.timestep_tensor
            self._timestep_value = float(t.reshape(-1)[0].item()) if isinstance(t, torch.Tensor) else float(t)
        return self._timestep_value

    def set_timestep(self, timestep: Any, value: float | None = None) -> None:
        self.timestep_tensor = timestep
        self._timestep_value = value

    def attach_pipeline(self, pipeline: Any) -> None:
        """Let the context ask ``pipeline.do_classifier_free_guidance`` when ``cfg_batched`` is None."""
        self._pipeline_ref = weakref.ref(pipeline)

    def guidance_is_batched(self) -> bool:
        if self.cfg_batched is not None:
            return self.cfg_batched
        pipe = self._pipeline_ref() if self._pipeline_ref is not None else None
        if pipe is None:
            return False
        try:
            return bool(pipe.do_classifier_free_guidance)
        except (AttributeError, TypeError):
            return False

    def inference_steps(self) -> int | None:
        """Denoising steps of the current run: :attr:`num_inference_steps` when a pipeline set it,
        else the attached pipeline's scheduler's (diffusers schedulers keep ``num_inference_steps``
        after ``set_timesteps``, which pipelines call before the loop; FreeInit's fast sampling sets
        it per iteration); ``None`` when neither is known."""
        if self.num_inference_steps is not None:
            return self.num_inference_steps
        pipe = self._pipeline_ref() if self._pipeline_ref is not None else None
        steps = getattr(getattr(pipe, "scheduler", None), "num_inference_steps", None)
        return int(steps) if isinstance(steps, int) and steps > 0 else None

    def start_run(self) -> None:
        self.run_index += 1
        self.step_index = -1
        self.set_timestep(None)
        self.unet_calls = 0
        self.extras.clear()


@dataclass
class AttentionCall:
    """What a technique hook sees for one processor call."""

    layer: LayerInfo
    context: AttentionContext
    attn: Any
    """The diffusers ``Attention`` module (for its projections, heads, scale...)."""
    batch_size: int
    """Rows of this call's batch: B for SD, B*F for spatial video layers, B*h*w for temporal ones."""
    num_tokens: int
    """Query length: h*w for spatial layers, F for temporal ones."""
    hidden_states: torch.Tensor
    """The (normalised) input the query was computed from, (batch, tokens, channels)."""
    encoder_hidden_states: torch.Tensor | None
    """The text (or other) states keys/values come from in cross-attention, else None (without the
    IP-Adapter image tokens, which are in :attr:`ip_hidden_states`)."""
    query: torch.Tensor | None = None
    """(batch, heads, tokens, head_dim), set before the score hooks run."""
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    ip_hidden_states: list[torch.Tensor] | None = None
    """IP-Adapter image tokens of this call, one tensor per adapter, on layers that carry the image
    branch (:class:`~.processor.AttncraftIPAdapterAttnProcessor`); None elsewhere."""

    @property
    def step_index(self) -> int:
        return self.context.step_index

    @property
    def timestep(self) -> float | None:
        return self.context.timestep

    @property
    def resolution(self) -> tuple[int, int] | None:
        """(h, w) of the spatial grid this call's tokens (spatial) or rows (temporal) live on."""
        hw = self.layer.resolution(self.context.latent_hw)
        if hw is None:
            return None
        if self.layer.kind != "temporal" and hw[0] * hw[1] != self.num_tokens:
            return None
        return hw

    @property
    def num_frames(self) -> int | None:
        if self.layer.kind == "temporal":
            return self.num_tokens
        return self.context.num_frames

    @property
    def cfg_batched(self) -> bool:
        return self.context.guidance_is_batched() and self.batch_size % 2 == 0

    def halves(self) -> tuple[slice, slice] | None:
        """(uncond rows, cond rows) of this call's batch when CFG is batched, else None.

        Batches are b-major in every layout diffusers uses ([uncond; cond] then frames, or then
        h, w), so the halves are the first and second half of the rows.
        """
        if not self.cfg_batched:
            return None
        half = self.batch_size // 2
        return slice(0, half), slice(half, self.batch_size)

    def cond_rows(self) -> slice:
        """Rows of the conditional half (all rows when CFG is not batched)."""
        halves = self.halves()
        return halves[1] if halves else slice(0, self.batch_size)
