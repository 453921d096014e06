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

Reading the timestep value is one host sync per UNet call (microseconds against milliseconds of
UNet work); the hook body is excluded from ``torch.compile`` tracing so it never splits the UNet
graph itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attncraft.attention_processors.context import AttentionContext


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

    def attach(self, unet: nn.Module) -> None:
        if self._handle is None:
            self._handle = unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)

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
        sample = args[0] if args else kwargs.get("sample")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        t = _timestep_value(timestep)
        if sample is not None:
            if sample.ndim == 5:
                ctx.batch_size, _, ctx.num_frames, h, w = sample.shape
            else:
                ctx.batch_size, _, h, w = sample.shape
                ctx.num_frames = None
            ctx.latent_hw = (int(h), int(w))
        if self._force_new_run or ctx.timestep is None or t is None or t > ctx.timestep:
            self._force_new_run = False
            self._begin_run()
            ctx.step_index = 0
        elif t < ctx.timestep:
            ctx.step_index += 1
        ctx.timestep = t
        ctx.unet_calls += 1
