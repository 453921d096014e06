"""Choosing the layers a technique acts on: by name pattern, by layer facts, or by any predicate.

A :class:`LayerSelector` matches a :class:`~.layers.LayerInfo` when *all* its given criteria hold.
Name patterns are regular expressions searched in the module path (``re.search``), so
``"mid_block.*attn1"`` works as it does in diffusers' PAG.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from attncraft.attention_processors.layers import LayerInfo

LayerPredicate = Callable[[LayerInfo], bool]


@dataclass(frozen=True)
class LayerSelector:
    kinds: tuple[str, ...] | None = None
    """Any of "self", "cross", "temporal"."""
    places: tuple[str, ...] | None = None
    """Any of "down", "mid", "up"."""
    levels: tuple[int, ...] | None = None
    """Downsampling levels (0 = full latent resolution)."""
    name_patterns: tuple[str, ...] | None = None
    """Regular expressions; the layer matches if any of them is found in its name."""
    predicate: LayerPredicate | None = None

    def __call__(self, layer: LayerInfo) -> bool:
        if self.kinds is not None and layer.kind not in self.kinds:
            return False
        if self.places is not None and layer.place not in self.places:
            return False
        if self.levels is not None and layer.level not in self.levels:
            return False
        if self.name_patterns is not None and not any(re.search(p, layer.name) for p in self.name_patterns):
            return False
        if self.predicate is not None and not self.predicate(layer):
            return False
        return True


def select_layers(
    kinds: Iterable[str] | str | None = None,
    places: Iterable[str] | str | None = None,
    levels: Iterable[int] | int | None = None,
    names: Iterable[str] | str | None = None,
    predicate: LayerPredicate | None = None,
) -> LayerSelector:
    """Convenience constructor accepting single values or iterables."""

    def tup(value):
        if value is None:
            return None
        if isinstance(value, (str, int)):
            return (value,)
        return tuple(value)

    return LayerSelector(kinds=tup(kinds), places=tup(places), levels=tup(levels), name_patterns=tup(names), predicate=predicate)


ALL_LAYERS = LayerSelector()
CROSS_ATTENTION = LayerSelector(kinds=("cross",))
SELF_ATTENTION = LayerSelector(kinds=("self",))
TEMPORAL_ATTENTION = LayerSelector(kinds=("temporal",))
