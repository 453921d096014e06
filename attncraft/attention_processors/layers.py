"""Discovering a model's attention layers and describing each one (:class:`LayerInfo`).

Techniques select layers by what they are (self/cross/temporal attention, down/mid/up, block index,
resolution), never by their position in ``model.attn_processors`` (whose key order is registration
order, not call order). This module derives those facts from the module names diffusers uses for
``UNet2DConditionModel`` (SD 1.x/2.x, SDXL) and ``UNetMotionModel`` (AnimateDiff):

* ``{down,up}_blocks.I.attentions.J.transformer_blocks.K.attn{1,2}`` and ``mid_block.attentions.0...``:
  spatial self (attn1) and cross (attn2) attention;
* ``{down,up}_blocks.I.motion_modules.J.transformer_blocks.0.attn{1,2}`` and ``mid_block.motion_modules``:
  temporal self-attention (both attn1 and attn2 of a motion module are self-attention).

The *level* of a layer is how many times the latent has been halved when it runs: down block ``i``
runs at level ``i`` (it downsamples at its end), the mid block at the deepest level, up block ``i`` at
``n_down - 1 - i`` (it upsamples at its end). Its spatial size at a given latent size follows from
that by repeated ceil-halving (stride-2 convolutions with padding 1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from diffusers.models.attention import FreeNoiseTransformerBlock
from torch import nn

AttentionKind = Literal["self", "cross", "temporal"]
Place = Literal["down", "mid", "up"]

_NAME_RE = re.compile(
    r"^(?:(?P<place>down|up)_blocks\.(?P<block>\d+)|(?P<mid>mid_block))"
    r"\.(?P<container>attentions|motion_modules)\.(?P<index>\d+)(?:\.module)?"
    r"\.transformer_blocks\.(?P<tblock>\d+)(?:\.module)?\.(?P<attn>attn\d)$"
)


@dataclass(frozen=True)
class LayerInfo:
    """Static facts about one attention layer of a UNet."""

    name: str
    """Module path, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2``."""
    kind: AttentionKind
    place: Place | None
    block_index: int | None
    level: int | None
    heads: int
    attention_index: int | None = None
    transformer_index: int | None = None
    frame_windows: bool = False
    """The layer runs on sliding windows of frames (FreeNoise), see the module docstring."""
    split_batches: bool = False
    """The layer runs on slices of its batch (FreeNoise split inference)."""

    @property
    def processor_key(self) -> str:
        """The key of this layer in ``model.attn_processors``."""
        return f"{self.name}.processor"

    @property
    def is_cross(self) -> bool:
        return self.kind == "cross"

    @property
    def is_temporal(self) -> bool:
        return self.kind == "temporal"

    def resolution(self, latent_hw: tuple[int, int] | None) -> tuple[int, int] | None:
        """Spatial (h, w) of this layer's tokens for a given latent size, or None if unknown."""
        if latent_hw is None or self.level is None:
            return None
        h, w = latent_hw
        for _ in range(self.level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w


def _num_down_blocks(model: nn.Module) -> int | None:
    blocks = getattr(model, "down_blocks", None)
    return len(blocks) if blocks is not None else None


def describe_layer(
    name: str, module: nn.Module, num_down_blocks: int | None, frame_windows: bool = False, split_batches: bool = False
) -> LayerInfo:
    """Build the :class:`LayerInfo` of the attention module ``module`` found at ``name``."""
    heads = int(getattr(module, "heads", 1))
    match = _NAME_RE.match(name)
    if match is None:
        kind: AttentionKind = "cross" if getattr(module, "is_cross_attention", False) else "self"
        return LayerInfo(name=name, kind=kind, place=None, block_index=None, level=None, heads=heads,
                         frame_windows=frame_windows, split_batches=split_batches)
    temporal = match["container"] == "motion_modules"
    if temporal:
        kind = "temporal"
    else:
        kind = "cross" if getattr(module, "is_cross_attention", match["attn"] == "attn2") else "self"
    if match["mid"]:
        place: Place = "mid"
        block = None
        level = num_down_blocks - 1 if num_down_blocks else None
    else:
        place = match["place"]  # type: ignore[assignment]
        block = int(match["block"])
        if num_down_blocks is None:
            level = None
        else:
            level = block if place == "down" else num_down_blocks - 1 - block
    return LayerInfo(
        name=name,
        kind=kind,
        place=place,
        block_index=block,
        level=level,
        heads=heads,
        attention_index=int(match["index"]),
        transformer_index=int(match["tblock"]),
        frame_windows=frame_windows,
        split_batches=split_batches,
    )


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """All modules of ``model`` that hold an attention processor, keyed by module path."""
    return {name: module for name, module in model.named_modules() if hasattr(module, "set_processor") and hasattr(module, "processor")}


def _surroundings(model: nn.Module, name: str) -> tuple[bool, bool]:
    """(frame_windows, split_batches) of the attention module at ``name``: what its parents are."""
    split = False
    parent = model
    for part in name.split(".")[:-1]:
        parent = parent._modules[part]
        split = split or type(parent).__name__ == "SplitInferenceModule"
    return isinstance(parent, FreeNoiseTransformerBlock), split


def describe_modules(model: nn.Module, modules: dict[str, nn.Module]) -> dict[str, LayerInfo]:
    """:class:`LayerInfo` of each of ``modules`` (as returned by :func:`attention_modules`)."""
    n_down = _num_down_blocks(model)
    return {name: describe_layer(name, module, n_down, *_surroundings(model, name)) for name, module in modules.items()}


def discover_layers(model: nn.Module) -> dict[str, LayerInfo]:
    """Describe every attention layer of ``model`` (keyed by module path, in registration order)."""
    return describe_modules(model, attention_modules(model))
