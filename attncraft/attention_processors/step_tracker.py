"""Pipeline-independent tracking of the denoising step, by a forward pre-hook on the UNet.

The hook reads the UNet's ``sample`` and ``timestep`` arguments and updates the shared
:class:`~.context.AttentionContext`:

* latent size ``(h, w)``, number of frames (``UNetMotionModel`` samples are ``(B, C, F, h, w)``) and
  batch size, which temporal processors cannot see otherwise;
* the step index. Within a sampling run the timestep strictly decreases, so a call with the *same*
  timestep as the previous one is the same step (unbatched classifier-free guidance calls the UNet
  twice per step), a smaller one is the next step, and a *larger or equal* timestep after a
  finished step starts a new run (a new generation, or the next FreeInit iteration, which re-runs
  the loop from the top). Pipelines that know better call :meth:`StepTracker.start_run` explicitly.

No host sync in the loop: reading a CUDA timestep's value would stall the host until the GPU has
finished the previous step, which costs real time when the eager UNet is launch-bound. Pipelines
iterate over the scheduler's ``timesteps`` array on the device, so each ``t`` is a view into that
array: its storage identifies the run (a new ``set_timesteps`` makes a new array) and its storage
offset is its position, which grows by one per step. The tracker uses that when it can, and reads
the value (free for CPU tensors and numbers) only otherwise; the context exposes the value lazily.
The hook body is excluded from ``torch.compile`` tracing so it never splits the UNet graph itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attncraft.attention_processors.context import AttentionContext


def _position_in_schedule(timestep, read_values_on: frozenset[str]) -> tuple[int, int] | None:
    """(array identity, index) of a device timestep that is a view into a larger timesteps array.

    Returns None for numbers, CPU tensors (their value is free to read) and device tensors that own
    their storage (e.g. built fresh each step), whose position says nothing.
    """
    if not isinstance(timestep, torch.Tensor) or timestep.device.type in read_values_on:
        return None
    if any(stride != 0 for stride in timestep.stride()):  # 0-d, or a broadcast of one element
        return None
    storage = timestep.untyped_storage()
    if storage.nbytes() <= timestep.element_size():
        return None
    return storage.data_ptr(), timestep.storage_offset()


def _timestep_value(timestep) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            return None
        return float(timestep.reshape(-1)[0].item())
    return float(timestep)


class StepTracker:
    """Keeps ``context`` in step with the UNet's calls; ``on_run_start`` fires at each new run."""

    def __init__(self, context: AttentionContext, on_run_start: Callable[[], None] | None = None):
        self.context = context
        self.on_run_start = on_run_start
        self._handle = None
        self._force_new_run = True
        self._last_position: tuple[int, int] | None = None
        self.read_values_on: frozenset[str] = frozenset({"cpu"})
        """Device types whose timestep values are read directly (no sync cost there)."""

    def attach(self, unet: nn.Module) -> None:
        if self._handle is None:
            self._handle = unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            # the first call after (re-)attaching starts a run: the last run seen may have ended on
            # the timestep the next one starts with (a one-step run after any other run)
            self._force_new_run = True

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def start_run(self) -> None:
        """Make the next UNet call step 0 of a new run."""
        self._force_new_run = True

    def _begin_run(self) -> None:
        self.context.start_run()
        if self.on_run_start is not None:
            self.on_run_start()

    @torch.compiler.disable
    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx = self.context
        if ctx.deferred is not None and len(ctx.deferred):  # maps of a call whose forward hook did not run
            ctx.deferred.flush()
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        if sample is not None:
            if sample.ndim == 5:
                ctx.batch_size, _, ctx.num_frames, h, w = sample.shape
            else:
                ctx.batch_size, _, h, w = sample.shape
                ctx.num_frames = None
            ctx.latent_hw = (int(h), int(w))
        position = _position_in_schedule(timestep, self.read_values_on)
        if position is not None:
            last = self._last_position
            if self._force_new_run or last is None or position[0] != last[0] or position[1] < last[1]:
                self._start_step_zero()
            elif position[1] > last[1]:
                ctx.step_index += 1
            ctx.set_timestep(timestep)
        else:
            t = _timestep_value(timestep)
            previous = ctx.timestep if self._last_position is None else None
            if self._force_new_run or previous is None or t is None or t > previous:
                self._start_step_zero()
            elif t < previous:
                ctx.step_index += 1
            ctx.set_timestep(timestep, t)
        self._last_position = position
        ctx.unet_calls += 1

    def _start_step_zero(self) -> None:
        self._begin_run()  # may raise (a technique that no longer fits the model): the next call retries
        self._force_new_run = False
        self.context.step_index = 0
