"""Recording attention probabilities, only where and when asked: :class:`AttentionStore`.

The store is an observer technique (order 1000, so it sees the maps after editing techniques). It
records the probabilities of the layers its selector matches, at the steps it is told to (all by
default), reduced on the fly so memory stays bounded by what was asked for:

* heads are averaged (``reduce_heads=True``), and only the conditional half of a CFG batch is kept
  (``cond_only=True``);
* ``per_step=False`` (default) keeps one running sum per layer (memory = one map per layer);
  ``per_step=True`` keeps one map per layer per recorded step.

Maps stay on their device (no host sync during sampling) unless ``device`` is given. The store reads
maps only after each UNet call, so in eager mode its layers' maps are computed when the UNet returns,
batched across layers (:mod:`.deferred_maps`); the stored values are the same. Results are
read with :meth:`layer_maps`, :meth:`average` (over layers of one resolution) and
:meth:`spatial_token_maps` (cross-attention maps reshaped to ``(batch, tokens, h, w)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.selection import CROSS_ATTENTION, LayerSelector
from attncraft.attention_processors.technique import OBSERVE_ORDER, AttentionTechnique

StepFilter = Callable[[int], bool]


class AttentionStore(AttentionTechnique):
    name = "attention-store"
    order = OBSERVE_ORDER
    edits_maps = False
    reads_maps_after_forward = True

    def __init__(
        self,
        selector: LayerSelector = CROSS_ATTENTION,
        steps: Iterable[int] | StepFilter | None = None,
        per_step: bool = False,
        cond_only: bool = True,
        reduce_heads: bool = True,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        reset_each_run: bool = True,
    ):
        super().__init__(selector)
        if steps is None or callable(steps):
            self._step_filter = steps
        else:
            wanted = frozenset(int(s) for s in steps)
            self._step_filter = wanted.__contains__
        self.per_step = per_step
        self.cond_only = cond_only
        self.reduce_heads = reduce_heads
        self.device = torch.device(device) if device is not None else None
        self.dtype = dtype
        self.reset_each_run = reset_each_run
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, torch.Tensor | int] = {}
        self._steps: dict[str, dict[int, torch.Tensor]] = {}
        self._resolutions: dict[str, tuple[int, int] | None] = {}

    def needs_maps(self, layer) -> bool:
        return True

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self._steps.clear()
        self._resolutions.clear()

    def on_run_start(self, context: AttentionContext) -> None:
        if self.reset_each_run:
            self.reset()

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        step = call.step_index
        if self._step_filter is not None and not self._step_filter(step):
            return probs
        self._record(call, step, self._reduce(call, probs, head_dim=1))
        return probs

    def observe_maps(self, calls: list[AttentionCall], probs: torch.Tensor) -> None:
        """A stack of layers of one UNet call (same shape, so the same CFG rows): reduced at once."""
        step = calls[0].step_index
        if self._step_filter is not None and not self._step_filter(step):
            return
        kept = self._reduce(calls[0], probs, head_dim=2)
        for call, layer_map in zip(calls, kept.unbind(0)):
            self._record(call, step, layer_map)

    def _reduce(self, call: AttentionCall, probs: torch.Tensor, head_dim: int) -> torch.Tensor:
        """Conditional rows (dim ``head_dim - 1``), head mean (dim ``head_dim``), storage dtype/device."""
        if self.cond_only:
            rows = call.cond_rows()
            probs = probs[rows] if head_dim == 1 else probs[:, rows]
        kept = probs.detach()
        if self.reduce_heads:
            kept = kept.mean(dim=head_dim)
        return kept.to(dtype=self.dtype, device=self.device or kept.device)

    def _record(self, call: AttentionCall, step: int, kept: torch.Tensor) -> None:
        name = call.layer.name
        self._resolutions[name] = call.resolution
        if self.per_step:
            self._steps.setdefault(name, {})[step] = kept.clone()
        elif name in self._sums:
            self._sums[name].add_(kept)
            # host-side count in eager mode (no kernel launch per layer); a tensor under
            # torch.compile, where a Python counter would be guarded on and recompile every step
            count = self._counts[name]
            if isinstance(count, torch.Tensor):
                count.add_(1)
            elif torch.compiler.is_compiling():
                self._counts[name] = torch.full((), count + 1, dtype=torch.int64, device=kept.device)
            else:
                self._counts[name] = count + 1
        else:
            self._sums[name] = kept.clone()
            compiling = torch.compiler.is_compiling()
            self._counts[name] = torch.ones((), dtype=torch.int64, device=kept.device) if compiling else 1

    # -- reading -------------------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return list(self._steps if self.per_step else self._sums)

    def layer_maps(self) -> dict[str, torch.Tensor]:
        """Per layer: the mean over recorded steps (``per_step=False``) or a stack over steps."""
        if self.per_step:
            return {n: torch.stack([m for _, m in sorted(s.items())]) for n, s in self._steps.items()}
        return {n: self._sums[n] / self._counts[n] for n in self._sums}

    def recorded_count(self, name: str) -> int:
        """How many calls were accumulated for layer ``name`` (per_step=False)."""
        return int(self._counts[name]) if name in self._counts else len(self._steps.get(name, {}))

    def step_maps(self, name: str) -> dict[int, torch.Tensor]:
        if not self.per_step:
            raise ValueError("step_maps needs AttentionStore(per_step=True)")
        return dict(self._steps.get(name, {}))

    def resolution(self, name: str) -> tuple[int, int] | None:
        return self._resolutions.get(name)

    def average(self, resolution: tuple[int, int] | None = None) -> torch.Tensor:
        """Mean of the recorded maps over layers (of one spatial ``resolution`` if given)."""
        maps = [m for n, m in self.layer_maps().items() if resolution is None or self._resolutions.get(n) == tuple(resolution)]
        if not maps:
            raise ValueError(f"no attention maps recorded at resolution {resolution}")
        if self.per_step:
            maps = [m.mean(dim=0) for m in maps]
        return torch.stack(maps).mean(dim=0)

    def spatial_token_maps(self, resolution: tuple[int, int]) -> torch.Tensor:
        """Cross-attention maps at ``resolution`` as ``(batch, [heads,] tokens, h, w)``."""
        avg = self.average(resolution)
        h, w = resolution
        return avg.transpose(-1, -2).reshape(*avg.shape[:-2], avg.shape[-1], h, w)
