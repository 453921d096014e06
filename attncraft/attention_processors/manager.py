"""Installing and removing techniques on a model: the :class:`AttentionManager`.

One manager per UNet (created on demand by :func:`get_manager`, stored on the model). It

* describes the model's attention layers (:func:`~.layers.discover_layers`);
* owns the shared :class:`~.context.AttentionContext` and the :class:`~.step_tracker.StepTracker`,
  and, while a technique that reads maps after the forward is installed, a forward hook that
  computes those deferred maps when the UNet returns (:mod:`.deferred_maps`);
* on :meth:`install`, puts an :class:`~.processor.AttncraftAttnProcessor` on exactly the layers the
  technique selects, over the processor that was there (its *base*), and leaves every other layer's
  processor untouched; on :meth:`remove`, puts the base back on layers no technique uses any more.
  A user's custom processor on a selected layer is replaced while the technique is active
  (attention processors do not nest) and comes back on removal. Two bases are not replaced but
  carried: an IP-Adapter processor (the layer gets
  :class:`~.processor.AttncraftIPAdapterAttnProcessor`, so the image prompt keeps acting) and
  ``FusedAttnProcessor2_0`` (the core projects with the fused weights).

Processors are set per module with ``Attention.set_processor`` rather than through
``set_attn_processor(dict)``, which requires a full dict and consumes it.

Keeping up with changes made underneath (:meth:`AttentionManager.sync`)
-----------------------------------------------------------------------

diffusers' features replace processors (``load_ip_adapter``, ``unload_ip_adapter``,
``set_default_attn_processor``, ``set_attn_processor``, ``fuse_qkv_projections``,
``enable_attention_slicing``) or whole attention modules (``enable_free_noise`` swaps the motion
transformer blocks; split inference wraps blocks). The manager synchronises at every run start
(through the step tracker, so only while a technique is installed), at every install and remove,
and when :meth:`~AttentionManager.sync` is called:

* **rebuilt modules**: it keeps the parent-child links on the paths to its attention modules; when
  one no longer holds, it rediscovers the layers and installs its processors on the new modules, so
  techniques keep acting (e.g. on the temporal layers FreeNoise rebuilt);
* **replaced processors**: on a managed layer whose processor is no longer the one it installed,
  the new processor becomes the layer's base and the manager's processor goes back on top of it,
  built for that base (IP-Adapter branch, fused projections). So a processor reset changes what
  lies *under* the techniques, not which techniques are on: to switch techniques off, remove them.
  A processor diffusers rebuilt from the core's own class (``AttncraftAttnProcessor()``, unbound)
  keeps the previous base. One of the manager's own earlier processors that comes back (as
  ``unfuse_qkv_projections`` restores the processors from before fusing) is adopted with its base;
* **incompatible features**: a technique that cannot work with a feature the model now uses
  (FreeNoise windows, split inference; see :class:`~.technique.AttentionTechnique`) raises a one-line
  :class:`~attncraft.errors.TechniqueError` naming both, at install or at the next run start.

The run-start check costs one identity test per parent-child link and per managed layer (no tensor
work, nothing per UNet call); the full rediscovery runs only when a link changed. With only the core
installed (:meth:`install_core`, no technique) nothing is watched: call ``install_core()`` or
:meth:`sync` again after such a change.

What ``enable_attention_slicing()`` means here: it sets diffusers' ``SlicedAttnProcessor`` on every
layer; on layers with a technique the core goes back on top at the next run (its hooks need whole
maps, and its fused path already runs SDPA's memory-efficient kernels), so slicing saves memory on
the other layers. The pipeline found calling the UNet at a run start becomes the one the context
asks about classifier-free guidance (a pipeline made with ``from_pipe`` shares the UNet).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from torch import nn

from attncraft.attention_processors.backends import check_backend
from attncraft.attention_processors.context import AttentionContext
from attncraft.attention_processors.deferred_maps import DeferredMaps
from attncraft.attention_processors.layers import LayerInfo, attention_modules, describe_modules
from attncraft.attention_processors.processor import (
    AttncraftAttnProcessor,
    AttncraftIPAdapterAttnProcessor,
    is_ip_adapter_processor,
)
from attncraft.attention_processors.selection import ALL_LAYERS, LayerSelector
from attncraft.attention_processors.step_tracker import StepTracker
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import TechniqueError

_MANAGER_ATTR = "_attncraft_attention_manager"
_CALLER_SEARCH_DEPTH = 64


def _tree_links(root: nn.Module, names: Iterable[str]) -> list[tuple[nn.Module, str, nn.Module]]:
    """The (parent, child name, child) links on the paths from ``root`` to the modules ``names``."""
    links: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
    for name in names:
        parent = root
        for part in name.split("."):
            child = parent._modules[part]
            links.setdefault((id(parent), part), (parent, part, child))
            parent = child
    return list(links.values())


class AttentionManager:
    """Technique installation, removal and composition for one UNet."""

    def __init__(self, unet: nn.Module, backend: str = "sdpa"):
        self.unet = unet
        self.backend = check_backend(backend)
        self.context = AttentionContext()
        self.tracker = StepTracker(self.context, on_run_start=self._on_run_start)
        self._techniques: list[AttentionTechnique] = []
        self._core_selectors: list[LayerSelector] = []
        self._installed: dict[str, AttncraftAttnProcessor] = {}
        self._post_handle = None
        self._discover()

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
        for processor in self._installed.values():
            processor.backend = self.backend

    def install_core(self, selector: LayerSelector = ALL_LAYERS) -> list[str]:
        """Put the core processor (no technique) on the selected layers; returns their names.

        Used to measure the processor's own cost and parity; techniques do not need it. Calling it
        again re-applies the core where something replaced it (see :meth:`sync`).
        """
        if selector not in self._core_selectors:
            self._core_selectors.append(selector)
        self.sync()
        return [layer.name for layer in self.layers.values() if selector(layer)]

    def install(self, technique: AttentionTechnique) -> AttentionTechnique:
        """Activate ``technique`` on the layers it selects. Raises if it selects none, or if it
        cannot work with a feature the model uses (FreeNoise windows, split inference)."""
        if technique in self._techniques:
            return technique
        self._rediscover_if_rebuilt()
        if not self.layers_for(technique):
            raise TechniqueError(
                f"technique {technique.name!r} selects no attention layer of this {type(self.unet).__name__}",
                "check the layer selection (e.g. temporal layers exist only in AnimateDiff motion UNets)",
            )
        self._check_compatible([*self._techniques, technique])
        self._techniques.append(technique)
        self._apply()
        self.tracker.attach(self.unet)
        self._update_deferred_hook()
        try:
            technique.on_install(self)
        except BaseException:
            self.remove(technique)  # on_remove undoes whatever on_install attached before it failed
            raise
        return technique

    def remove(self, technique: AttentionTechnique) -> None:
        """Deactivate ``technique``; layers left without techniques get their base processor back."""
        if technique not in self._techniques:
            return
        technique.on_remove(self)
        self._techniques.remove(technique)
        self._rediscover_if_rebuilt()
        self._apply()
        self._update_deferred_hook()
        if not self._techniques:
            self.tracker.detach()

    def remove_all(self) -> None:
        for technique in list(self._techniques):
            self.remove(technique)
        self._core_selectors.clear()
        self._apply()

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

    def sync(self) -> None:
        """Catch up with modules or processors replaced underneath the manager (module docstring):
        rediscover rebuilt layers, check that the techniques fit them, and re-apply the manager's
        processors over whatever now lies on its layers. Runs at every run start by itself."""
        self._rediscover_if_rebuilt()
        self._check_compatible(self._techniques)
        self._apply()

    def start_run(self, num_inference_steps: int | None = None) -> None:
        """Declare that a new sampling run begins with the next UNet call."""
        self.context.num_inference_steps = num_inference_steps
        self.tracker.start_run()

    def flush_maps(self) -> None:
        """Compute the deferred maps of the last UNet call now (the forward hook does this itself)."""
        if self.context.deferred is not None:
            self.context.deferred.flush()

    # -- internals: layers and processors ---------------------------------------------------
    def _discover(self) -> None:
        self._modules = attention_modules(self.unet)
        self.layers: dict[str, LayerInfo] = describe_modules(self.unet, self._modules)
        self._links = _tree_links(self.unet, self._modules)

    def _rediscover_if_rebuilt(self) -> bool:
        if all(parent._modules.get(key) is child for parent, key, child in self._links):
            return False
        self._discover()
        return True

    def _wanted_layers(self) -> set[str]:
        wanted = {name for name, layer in self.layers.items() if any(s(layer) for s in self._core_selectors)}
        for technique in self._techniques:
            wanted.update(layer.name for layer in self.layers_for(technique))
        return wanted

    def _apply(self) -> None:
        """Our processor on every wanted layer (over what is there now), bases back elsewhere."""
        wanted = self._wanted_layers()
        for name in [n for n in self._installed if n not in wanted or n not in self._modules]:
            self._release(name)
        for name in wanted:
            self._ensure_processor(name)
        self._refresh_processors()

    def _release(self, name: str) -> None:
        processor = self._installed.pop(name)
        module = self._modules.get(name)
        if module is not None and module.processor is processor:
            module.set_processor(processor.replaced)

    def _is_ours(self, processor: Any, name: str) -> bool:
        return (isinstance(processor, AttncraftAttnProcessor) and processor.context is self.context
                and processor.layer is not None and processor.layer.name == name)

    def _ensure_processor(self, name: str) -> None:
        module = self._modules[name]
        current = module.processor
        mine = self._installed.get(name)
        if current is mine:
            return
        if self._is_ours(current, name):  # one of ours came back (e.g. unfuse_qkv_projections)
            current.layer = self.layers[name]
            self._installed[name] = current
            return
        if isinstance(current, AttncraftAttnProcessor) and not current.bound and mine is not None:
            base = mine.replaced  # diffusers rebuilt the processor from our class: same base as before
        else:
            base = current
        processor = self._new_processor(self.layers[name], base)
        module.set_processor(processor)
        self._installed[name] = processor

    def _new_processor(self, layer: LayerInfo, base: Any) -> AttncraftAttnProcessor:
        if is_ip_adapter_processor(base):
            processor = AttncraftIPAdapterAttnProcessor(base, layer, self.context, backend=self.backend)
        else:
            processor = AttncraftAttnProcessor(layer, self.context, backend=self.backend)
        processor.fused_projections = isinstance(base, FusedAttnProcessor2_0) or getattr(base, "fused_projections", False)
        processor.set_replaced(base)
        return processor

    def _refresh_processors(self) -> None:
        ordered = [t for _, t in sorted(enumerate(self._techniques), key=lambda pair: (pair[1].order, pair[0]))]
        for name, processor in self._installed.items():
            layer = self.layers[name]
            processor.set_techniques([t for t in ordered if t.applies_to(layer)])

    def _check_compatible(self, techniques: Iterable[AttentionTechnique]) -> None:
        for technique in techniques:
            for layer in self.layers_for(technique):
                if layer.frame_windows and not technique.supports_frame_windows:
                    raise TechniqueError(
                        f"technique {technique.name!r} needs temporal attention over the whole clip, but FreeNoise "
                        f"runs {layer.name} on sliding windows of frames",
                        "disable FreeNoise (pipe.disable_free_noise()) or remove the technique",
                    )
                if layer.split_batches and not technique.supports_split_batches:
                    raise TechniqueError(
                        f"technique {technique.name!r} needs the whole batch in each attention call, but FreeNoise "
                        f"split inference runs {layer.name} on slices of it",
                        "build the pipeline without enable_free_noise_split_inference() or remove the technique",
                    )

    # -- internals: run hooks ---------------------------------------------------------------
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

    def _on_run_start(self) -> None:
        rebuilt = self._rediscover_if_rebuilt()
        if rebuilt:
            self._check_compatible(self._techniques)
        modules = self._modules
        if rebuilt or any(getattr(modules.get(n), "processor", None) is not p for n, p in self._installed.items()):
            self._apply()
        self._attach_calling_pipeline()
        for technique in self._techniques:
            technique.on_run_start(self.context)

    def _attach_calling_pipeline(self) -> None:
        """Point the context at the pipeline whose ``__call__`` is running this UNet, if any."""
        frame = sys._getframe(1)
        for _ in range(_CALLER_SEARCH_DEPTH):
            if frame is None:
                return
            if frame.f_code.co_name == "__call__":
                owner = frame.f_locals.get("self")
                if owner is not None and getattr(owner, "unet", None) is self.unet and not isinstance(owner, nn.Module):
                    self.context.attach_pipeline(owner)
                    return
            frame = frame.f_back


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
