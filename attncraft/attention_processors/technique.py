"""The base class every attention technique derives from.

A technique is a set of hooks run by :class:`~.processor.AttncraftAttnProcessor` on the layers its
:attr:`selector` matches, at three places of the attention computation:

1. :meth:`edit_scores` - the pre-softmax scores ``Q K^T / sqrt(d)`` (plus mask), shape
   ``(batch, heads, queries, keys)``;
2. :meth:`edit_probs` - the post-softmax probabilities, same shape;
3. :meth:`edit_output` - the attention output before ``to_out``, shape ``(batch, queries, heads*dim)``.

A subclass overrides only the hooks it needs. The processor computes scores and probabilities
explicitly only on layers where some active technique overrides hook 1 or 2 (or asks for maps via
:meth:`needs_maps`); everywhere else it takes the fused SDPA path, exactly as diffusers'
``AttnProcessor2_0``.

Composition: when several techniques act on one layer they run in ascending :attr:`order`, ties
broken by installation order; each hook receives the previous technique's result. Conventions for
``order``: 100 for techniques that *edit* maps (P2P-style replacement, regularisation), 1000 for
observers such as :class:`~.store.AttentionStore`, so observers see the final maps by default.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.layers import LayerInfo
from attncraft.attention_processors.selection import ALL_LAYERS, LayerSelector

EDIT_ORDER = 100
OBSERVE_ORDER = 1000


class AttentionTechnique:
    """Base class: select layers, then edit scores, probabilities and/or output there."""

    name: str = "technique"
    order: int = EDIT_ORDER
    edits_maps: bool = True
    """False for observers, whose score/probability hooks return their input unchanged: on a layer
    where every map-reading technique only observes, the output comes from the fused kernel and the
    maps are computed on the side (same output as stock, fewer operations)."""
    reads_maps_after_forward: bool = False
    """True for observers (``edits_maps = False``) that use the maps only once the UNet call has
    returned, like the attention store. On a layer where every map reader says so, the maps are
    computed when the UNet returns, batched with the other such layers of the same shape
    (:mod:`.deferred_maps`), and delivered through :meth:`observe_maps`. Leave it False for a
    technique that reads a map in one layer to act in a later layer of the same call."""
    supports_frame_windows: bool = True
    """False for a technique that needs each temporal call to span the whole clip. FreeNoise
    (``pipe.enable_free_noise()``) runs temporal layers on sliding windows of frames (then
    ``call.num_frames`` is the window's length, ``call.context.num_frames`` the clip's); the manager
    refuses such a technique on such layers with a :class:`~attncraft.errors.TechniqueError`."""
    supports_split_batches: bool = False
    """True for a technique that treats every row of a call alike. FreeNoise split inference
    (``pipe.enable_free_noise_split_inference()``) runs layers on slices of their batch, so the CFG
    halves of a call are not its halves; the manager refuses other techniques on such layers."""

    def __init__(self, selector: LayerSelector | None = None):
        self.selector = selector if selector is not None else self.default_selector()

    # -- selection -------------------------------------------------------------------------
    def default_selector(self) -> LayerSelector:
        return ALL_LAYERS

    def applies_to(self, layer: LayerInfo) -> bool:
        return self.selector(layer)

    def needs_maps(self, layer: LayerInfo) -> bool:
        """True if this technique needs the explicit path (scores/probabilities) on ``layer``."""
        cls = type(self)
        return cls.edit_scores is not AttentionTechnique.edit_scores or cls.edit_probs is not AttentionTechnique.edit_probs

    # -- lifecycle -------------------------------------------------------------------------
    def on_install(self, manager) -> None:
        """Called once the technique's processors are in place on a model (``manager`` is its
        :class:`~.manager.AttentionManager`, ``manager.unet`` the model). A technique that needs
        more than attention processors (forward hooks on other modules, trainable parts that must
        fit the model) attaches or checks them here; an exception undoes the installation (through
        :meth:`on_remove`, which must therefore also clean up after a partial ``on_install``)."""

    def on_remove(self, manager) -> None:
        """Called when the technique is removed from ``manager``'s model: undo :meth:`on_install`."""

    def on_run_start(self, context: AttentionContext) -> None:
        """Called at the start of every sampling run (new generation, each FreeInit iteration)."""

    def is_active(self, context: AttentionContext) -> bool:
        """Whether the technique acts in the current UNet call (default: always).

        Techniques that act on a window of denoising steps, or whose settings make them neutral,
        override it. The processor asks once per call on each layer: a technique that answers False
        runs none of its hooks there, and a layer left with no active technique takes the stock
        fused path, so outside the window the output is exactly the output without the technique
        and costs what the core costs.
        """
        return True

    # -- hooks -----------------------------------------------------------------------------
    def edit_scores(self, call: AttentionCall, scores: torch.Tensor) -> torch.Tensor:
        return scores

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        return output

    def observe_maps(self, calls: list[AttentionCall], probs: torch.Tensor) -> None:
        """Deferred observers: the probabilities of several layers of one UNet call, stacked.

        ``probs`` is ``(len(calls), batch, heads, queries, keys)``, layer ``i`` belonging to
        ``calls[i]`` (all of one shape). The default hands each layer to :meth:`edit_probs`;
        override it to reduce the whole stack at once.
        """
        for call, layer_probs in zip(calls, probs.unbind(0)):
            self.edit_probs(call, layer_probs)

    # -- settings ----------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any) -> AttentionTechnique:
        """The technique a ``settings()`` dict describes (e.g. a sidecar's entry): its keys are
        constructor arguments, checked again by the constructor. An unknown key, or something that
        is not a mapping, is an :class:`~attncraft.errors.InputError` naming it."""
        from attncraft.errors import InputError

        if not isinstance(settings, dict):
            raise InputError(f"{cls.name} settings must be a mapping, got {type(settings).__name__}",
                             "pass the dict that the technique's settings() returns")
        accepted = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                    if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]  # fmt: skip
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise InputError(f"unknown {cls.name} setting {unknown[0]!r}", f"use only: {', '.join(accepted)}")
        return cls(**settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order})"
