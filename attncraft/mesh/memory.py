"""How much memory a stylisation will need, known before it starts.

The style field runs on every vertex at once and keeps its activations for the backward pass, so
memory grows linearly with the vertex count: a 2M-vertex mesh needs tens of GB, and used to fill a
machine for minutes before the first iteration. :func:`estimate_memory` gives the peak from the
mesh size and the settings, and :func:`check_memory` refuses a run that does not fit, with the
figure (``--skip-memory-check`` runs it anyway).

The coefficients were measured (peak RSS of one iteration on the CPU, torch 2.13, fp32) over
162-164k vertices, field widths 128/256, 2-10 rendered views of 64-224 px; the linear model below
is within 15 % of every measurement (2 % at 164k vertices):

* the field: ``V x (8.8 kB + 61 B x width)`` (24.4 kB a vertex at the X-Mesh width 256): Fourier
  features, MLP and TDAM activations, displaced vertices and their gradients;
* rendering: 400 B a rendered pixel (2 x views images with the geometry loss, 1 x without);
* CLIP: its saved activations for every augmented view (views x augmentations images), from the
  model's configuration (about 24 MB an image for ViT-B/32 at 224 px; a few kB for a tiny CLIP);
* 192 MB for the field's weights, gradients and Adam state, and the CLIP call's workspace.
"""

from __future__ import annotations

from typing import Any

from attncraft.errors import InputError

BYTES_PER_VERTEX = 8_800
BYTES_PER_VERTEX_PER_WIDTH = 61
BYTES_PER_PIXEL = 400
FIXED_BYTES = 192 * 2**20
SKIP_FLAG = "--skip-memory-check"


def clip_image_bytes(guide: Any | None) -> int:
    """Activation bytes one image keeps through CLIP's vision tower for the backward pass."""
    config = getattr(getattr(getattr(guide, "model", None), "config", None), "vision_config", None)
    if config is None:
        return 0
    tokens = (int(config.image_size) // int(config.patch_size)) ** 2 + 1
    hidden, inner = int(config.hidden_size), int(config.intermediate_size)
    heads, layers = int(config.num_attention_heads), int(config.num_hidden_layers)
    return 4 * layers * tokens * (8 * hidden + inner + heads * tokens)


def estimate_memory(num_vertices: int, settings: Any, guide: Any | None = None) -> int:
    """Estimated peak bytes of one X-Mesh iteration on a mesh of ``num_vertices`` vertices."""
    s = settings
    geometry = s.geoloss and s.n_geoaugs > 0
    rendered = s.views * (2 if geometry else 1)
    augmented = s.views * (s.n_augs + s.n_normaugs + (s.n_geoaugs if geometry else 0))
    field = num_vertices * (BYTES_PER_VERTEX + BYTES_PER_VERTEX_PER_WIDTH * s.width)
    render = rendered * s.resolution**2 * BYTES_PER_PIXEL
    return int(FIXED_BYTES + field + render + augmented * clip_image_bytes(guide))


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def check_memory(num_vertices: int, settings: Any, device: Any, guide: Any | None = None,
                 skip: bool = False) -> tuple[int, int | None]:
    """``(estimate, available)`` in bytes; refuses (one line, with the figure) a run whose estimate
    exceeds the device's available memory, unless ``skip``."""
    from attncraft.devices import available_memory

    need = estimate_memory(num_vertices, settings, guide)
    have = available_memory(device)
    if not skip and have is not None and need > have:
        raise InputError(
            f"stylizing {num_vertices:,} vertices with {settings.views} view{'s' if settings.views != 1 else ''} of "
            f"{settings.resolution} px needs about "
            f"{_gb(need)} of memory, more than the {_gb(have)} available on {device}",
            f"decimate the mesh, lower --views or --resolution, use a larger device, or pass {SKIP_FLAG} to try anyway",
        )
    return need, have


def describe(need: int, have: int | None) -> str:
    """``about 1.2 GB (21.0 GB available)`` for the log."""
    return f"about {_gb(need)} estimated" + ("" if have is None else f" ({_gb(have)} available)")
