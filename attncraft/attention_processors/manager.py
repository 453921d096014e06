"""Installing and removing techniques on a model: the :class:`AttentionManager`.

One manager per UNet (created on demand by :func:`get_manager`, stored on the model). It

* describes the model's attention layers once (:func:`~.layers.discover_layers`);
* owns the shared :class:`~.context.AttentionContext` and the :class:`~.step_tracker.StepTracker`,
  and, while a technique that reads maps after the forward is installed, a forward hook that
  computes those deferred maps when the UNet returns (:mod:`.deferred_maps`);
* on :meth:`install`, puts an :class:`~.processor.AttncraftAttnProcessor` on exactly the layers the
  technique selects (remembering the processor that was there) and leaves every other layer's
  processor untouched; on :meth:`remove`, restores the remembered processors of layers no technique
  uses any more. A user's custom processor on a selected layer is replaced while the technique is
  active (attention processors do not nest) and comes back on removal.

Processors are set per module with ``Attention.set_processor`` rather than through
``set_attn_processor(dict)``, which requires a full dict and consumes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from attncraft.attention_processors.backends import check_backend
from attncraft.attention_processors.context import AttentionContext
from attncraft.attention_processors.deferred_maps import DeferredMaps
from attncraft.attention_processors.layers import LayerInfo, attention_modules, discover_layers
from attncraft.attention_processors.processor import AttncraftAttnProcessor
from attncraft.attention_processors.selection import ALL_LAYERS, LayerSelector
from attncraft.attention_processors.step_tracker import StepTracker
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import TechniqueError

_MANAGER_ATTR = "_attncraft_attention_manager"


class AttentionManager:
    """Technique installation, removal and composition for one UNet."""

    def __init__(self, unet: nn.Module, backend: str = "sdpa"):
        self.unet = unet
        self.backend = check_backend(backend)
        self.layers: dict[str, LayerInfo] = discover_layers(unet)
        self._modules = attention_modules(unet)
        self.context = AttentionContext()
        self.tracker = StepTracker(self.context, on_run_start=self._notify_run_start)
        self._techniques: list[AttentionTechnique] = []
        self._original: dict[str, Any] = {}
        self._core_layers: set[str] = set()
        self._post_handle = None

    # -- queries ----------------------------------------------------------------------------
    @property
    def techniques(self) -> list[AttentionTechnique]:
        return list(self._techniques)

    def layers_for(self, technique: AttentionTechnique) -> list[LayerInfo]:
        return [layer for layer in self.layers.values() if technique.applies_to(layer)]

    def processor(self, name: str):
        return self._modules[name].processor

    # -- installing -------------------------------------------------------------------------
    def set_backend(self, backend: str) -> None:
        self.backend = check_backend(backend)
        for name in self._owned_layers():
            self._modules[name].processor.backend = self.backend

    def install_core(self, selector: LayerSelector = ALL_LAYERS) -> list[str]:
        """Put the core processor (no technique) on the selected layers; returns their names.

        Used to measure the processor's own cost and parity; techniques do not need it.
        """
        names = [layer.name for layer in self.layers.values() if selector(layer)]
        for name in names:
            self._ensure_processor(name)
            self._core_layers.add(name)
        return names

    def install(self, technique: AttentionTechnique) -> AttentionTechnique:
        """Activate ``technique`` on the layers it selects. Raises if it selects none."""
        if technique in self._techniques:
            return technique
        layers = self.layers_for(technique)
        if not layers:
            raise TechniqueError(
                f"technique {technique.name!r} selects no attention layer of this {type(self.unet).__name__}",
                "check the layer selection (e.g. temporal layers exist only in AnimateDiff motion UNets)",
            )
        self._techniques.append(technique)
        for layer in layers:
            self._ensure_processor(layer.name)
        self._refresh_processors()
        self.tracker.attach(self.unet)
        self._update_deferred_hook()
        return technique

    def remove(self, technique: AttentionTechnique) -> None:
        """Deactivate ``technique``; layers left without techniques get their old processor back."""
        if technique not in self._techniques:
            return
        self._techniques.remove(technique)
        self._refresh_processors()
        used = {layer.name for t in self._techniques for layer in self.layers_for(t)} | self._core_layers
        for name in list(self._original):
            if name not in used:
                self._modules[name].set_processor(self._original.pop(name))
        self._update_deferred_hook()
        if not self._techniques:
            self.tracker.detach()

    def remove_all(self) -> None:
        for technique in list(self._techniques):
            self.remove(technique)
        self._core_layers.clear()
        for name in list(self._original):
            self._modules[name].set_processor(self._original.pop(name))

    @contextlib.contextmanager
    def applied(self, *techniques: AttentionTechnique) -> Iterator[AttentionManager]:
        """Context manager: install ``techniques`` for the block, remove them afterwards."""
        installed = []
        try:
            for technique in techniques:
                self.install(technique)
                installed.append(technique)
            yield self
        finally:
            for technique in reversed(installed):
                self.remove(technique)

    def start_run(self, num_inference_steps: int | None = None) -> None:
        """Declare that a new sampling run begins with the next UNet call."""
        self.context.num_inference_steps = num_inference_steps
        self.tracker.start_run()

    def flush_maps(self) -> None:
        """Compute the deferred maps of the last UNet call now (the forward hook does this itself)."""
        if self.context.deferred is not None:
            self.context.deferred.flush()

    # -- internals --------------------------------------------------------------------------
    def _update_deferred_hook(self) -> None:
        """Hold the deferred-maps queue and its forward hook exactly while some installed
        technique reads maps after the forward (no hook otherwise, e.g. under torch.compile
        benchmarks of the plain core)."""
        wanted = any(t.reads_maps_after_forward for t in self._techniques)
        if wanted and self._post_handle is None:
            self.context.deferred = DeferredMaps()
            self._post_handle = self.unet.register_forward_hook(self._after_forward, always_call=True)
        elif not wanted and self._post_handle is not None:
            self.flush_maps()
            self._post_handle.remove()
            self._post_handle = None
            self.context.deferred = None

    @torch.compiler.disable
    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        deferred = self.context.deferred
        if deferred is None:
            return
        if output is None:  # the forward raised: its half-recorded maps are dropped
            deferred.clear()
        else:
            deferred.flush()

    def _owned_layers(self) -> list[str]:
        return [n for n, m in self._modules.items() if isinstance(m.processor, AttncraftAttnProcessor)]

    def _ensure_processor(self, name: str) -> AttncraftAttnProcessor:
        module = self._modules[name]
        current = module.processor
        if isinstance(current, AttncraftAttnProcessor) and current.context is self.context:
            return current
        self._original[name] = current
        processor = AttncraftAttnProcessor(self.layers[name], self.context, backend=self.backend)
        module.set_processor(processor)
        return processor

    def _refresh_processors(self) -> None:
        ordered = sorted(enumerate(self._techniques), key=lambda pair: (pair[1].order, pair[0]))
        for name in self._owned_layers():
            processor = self._modules[name].processor
            layer = self.layers[name]
            processor.set_techniques([t for _, t in ordered if t.applies_to(layer)])

    def _notify_run_start(self) -> None:
        for technique in self._techniques:
            technique.on_run_start(self.context)


def _resolve_unet(target: Any) -> tuple[nn.Module, Any]:
    """Accept a UNet or a pipeline with a ``unet`` attribute; return (unet, pipeline or None)."""
    unet = getattr(target, "unet", None)
    if isinstance(unet, nn.Module):
        return unet, target
    if isinstance(target, nn.Module):
        return target, None
    raise TechniqueError(
        f"cannot install attention techniques on a {type(target).__name__}",
        "pass a diffusers UNet or a pipeline that has a .unet",
    )


def get_manager(target: Any, backend: str | None = None) -> AttentionManager:
    """The :class:`AttentionManager` of a UNet or pipeline (created on first use)."""
    unet, pipeline = _resolve_unet(target)
    manager = getattr(unet, _MANAGER_ATTR, None)
    if manager is None or manager.unet is not unet:
        manager = AttentionManager(unet, backend=backend or "sdpa")
        # stored outside nn.Module's attribute machinery so it is not treated as a submodule
        object.__setattr__(unet, _MANAGER_ATTR, manager)
    elif backend is not None and backend != manager.backend:
        manager.set_backend(backend)
    if pipeline is not None:
        manager.context.attach_pipeline(pipeline)
    return manager


@contextlib.contextmanager
def apply_techniques(target: Any, *techniques: AttentionTechnique, backend: str | None = None) -> Iterator[AttentionManager]:
    """``with apply_techniques(pipe, tech_a, tech_b): pipe(...)`` - active only inside the block."""
    manager = get_manager(target, backend=backend)
    with manager.applied(*techniques):
        yield manager


def install_techniques(target: Any, techniques: Iterable[AttentionTechnique], backend: str | None = None) -> AttentionManager:
    """Install ``techniques`` until :meth:`AttentionManager.remove` / ``remove_all`` is called."""
    manager = get_manager(target, backend=backend)
    for technique in techniques:
        manager.install(technique)
    return manager
