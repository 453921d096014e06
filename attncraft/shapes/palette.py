"""The colours of the Shapes world: object palette, pattern shades and backgrounds.

Why a module of its own: the renderer (:mod:`attncraft.shapes.world`) paints with these values and
the reader (:mod:`attncraft.shapes.reader`) segments images by the nearest of them, so both must
use the very same table. The values were chosen for *separability*, not for beauty:

* the 8 object colours are far apart in RGB;
* every object colour has one **pattern shade** (the colour mixed 35 % towards white; white's shade is
  a light gray), used for the stripes / dots / checks of patterned objects. A shade stays closer to
  its own colour than to anything else, so a patterned object is still one component of one colour;
* backgrounds are dark or muted colours that appear nowhere in the object palette.

Seen as segments (each colour together with every mixture of it and its shade, which is what
anti-aliased pattern edges are made of), the object colours are at least 0.26 apart in RGB ([0, 1]
units), and from every background; ``tests/shapes`` checks it.
"""

from __future__ import annotations

import torch

COLOR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.00),
    "yellow": (0.95, 0.92, 0.08),
    "green": (0.10, 0.72, 0.15),
    "cyan": (0.08, 0.85, 0.92),
    "blue": (0.12, 0.22, 0.95),
    "purple": (0.62, 0.12, 0.82),
    "white": (0.97, 0.97, 0.97),
}
"""Object colours, by name, as RGB in [0, 1]."""

SHADE_MIX = 0.35
"""How far a pattern shade moves from its colour towards white."""

WHITE_SHADE = (0.62, 0.62, 0.62)
"""White has no lighter shade: its pattern is drawn in light gray."""


def _shade(name: str) -> tuple[float, float, float]:
    if name == "white":
        return WHITE_SHADE
    r, g, b = COLOR_RGB[name]
    return tuple(round(c + (1.0 - c) * SHADE_MIX, 4) for c in (r, g, b))  # type: ignore[return-value]


SHADE_RGB: dict[str, tuple[float, float, float]] = {name: _shade(name) for name in COLOR_RGB}
"""Pattern shade of each object colour."""

BACKGROUND_RGB: dict[str, tuple[float, float, float]] = {
    "gray": (0.40, 0.40, 0.40),
    "black": (0.03, 0.03, 0.03),
    "navy": (0.05, 0.08, 0.30),
    "brown": (0.38, 0.22, 0.10),
}
"""Background colours, by name; none of them is close to an object colour or shade."""

COLORS: tuple[str, ...] = tuple(COLOR_RGB)
BACKGROUNDS: tuple[str, ...] = tuple(BACKGROUND_RGB)


def color_table(device: str | torch.device = "cpu") -> torch.Tensor:
    """(8, 3) float32 tensor of the object colours, in :data:`COLORS` order."""
    return torch.tensor([COLOR_RGB[c] for c in COLORS], dtype=torch.float32, device=device)


def shade_table(device: str | torch.device = "cpu") -> torch.Tensor:
    """(8, 3) float32 tensor of the pattern shades, in :data:`COLORS` order."""
    return torch.tensor([SHADE_RGB[c] for c in COLORS], dtype=torch.float32, device=device)


def background_table(device: str | torch.device = "cpu") -> torch.Tensor:
    """(4, 3) float32 tensor of the background colours, in :data:`BACKGROUNDS` order."""
    return torch.tensor([BACKGROUND_RGB[b] for b in BACKGROUNDS], dtype=torch.float32, device=device)
