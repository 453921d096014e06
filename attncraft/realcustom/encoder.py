"""The image encoder of RealCustom: any transformers vision model with hidden states.

:class:`ImageEncoder` wraps a vision model (``CLIPVisionModel``, ``SiglipVisionModel``,
``Dinov2Model``, or the vision tower of a dual ``CLIPModel``/``SiglipModel``) and returns the hidden
states of one layer (``encoder_layer``, the penultimate by default) for every token: those are the
``f_ci`` the projector and the scoring module work on. Preprocessing is done in torch (so it runs
on the training device, batched): resize of the shorter side to the encoder's input size (bilinear,
antialiased), centre crop, normalisation with the mean/std of the model folder's
``preprocessor_config.json`` (or the usual values of its model type).

:func:`load_image_encoder` takes ``shapes`` (the Shapes image encoder, the default of the Shapes adapter: the
shapes CLIP vision tower shipped beside the adapter in ``assets/models/shapes-realcustom/image_encoder``,
:data:`~attncraft.shapes.models.SHAPES_REALCUSTOM_ENCODER_DIR`; the shapes CLIP folder where that is absent), a local
folder or a Hub id. The encoder is always frozen.

The unconditional visual input of the release's guidance is the encoding of an all-zero (black)
image (:meth:`ImageEncoder.zero_image_states`), not zero tokens (spec, pitfall 9).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attncraft.errors import InputError, ModelLoadError

_MEANS = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ImageEncoder(nn.Module):
    """A frozen vision model returning one layer's hidden states, with torch preprocessing."""

    def __init__(self, model: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float],
                 layer: int = -2, reference: str = ""):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.image_size = int(image_size)
        self.layer = int(layer)
        self.reference = reference
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def pixels(self, images: Any) -> torch.Tensor:
        """Images -> ``(B, 3, H, W)`` float in [0, 1] on the encoder's device.

        Accepts a PIL image, a list of them, an ``(H, W, 3)`` / ``(B, H, W, 3)`` array in [0, 1] or
        uint8, or a ``(3, H, W)`` / ``(B, 3, H, W)`` tensor in [0, 1].
        """
        if isinstance(images, torch.Tensor):
            x = images if images.ndim == 4 else images[None]
            return x.to(self.device, torch.float32)
        items = images if isinstance(images, (list, tuple)) else [images]
        arrays = []
        for item in items:
            if isinstance(item, torch.Tensor):
                t = item.detach().float().cpu()
                arrays.append((t.permute(1, 2, 0) if t.ndim == 3 and t.shape[0] == 3 else t).numpy())
                continue
            if hasattr(item, "convert"):  # PIL
                item = np.asarray(item.convert("RGB"))
            arr = np.asarray(item)
            if arr.dtype == np.uint8:
                arr = arr.astype(np.float32) / 255.0
            if arr.ndim == 4:
                arrays.extend(list(arr))
                continue
            if arr.ndim != 3 or arr.shape[-1] != 3:
                raise InputError(f"a subject image must be RGB, got an array of shape {arr.shape}", "pass an RGB image")
            arrays.append(arr.astype(np.float32))
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in arrays])
        return x.to(self.device, torch.float32)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the encoder's normalised input (resize shorter side, centre crop)."""
        h, w = pixels.shape[-2:]
        s = self.image_size
        if (h, w) != (s, s):
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            pixels = F.interpolate(pixels, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (nh - s) // 2, (nw - s) // 2
            pixels = pixels[..., top:top + s, left:left + s]
        return ((pixels - self.mean) / self.std).to(self.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised input -> hidden states ``(B, tokens, hidden)`` of layer ``self.layer``."""
        out = self.model(pixel_values=pixel_values, output_hidden_states=True)
        return out.hidden_states[self.layer]

    @torch.no_grad()
    def encode(self, images: Any) -> torch.Tensor:
        """Any images (see :meth:`pixels`) -> hidden states."""
        return self(self.preprocess(self.pixels(images)))

    @torch.no_grad()
    def zero_image_states(self, batch: int = 1) -> torch.Tensor:
        """Hidden states of an all-zero (black) image: the release's unconditional visual input."""
        return self.encode(torch.zeros(batch, 3, self.image_size, self.image_size, device=self.device))


def _vision_tower(model: nn.Module) -> nn.Module:
    """The vision part of a dual text-image model; the model itself if it is a vision model."""
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):
        return model.vision_model
    return model


def _mean_std(folder: Path | None, model_type: str) -> tuple[Sequence[float], Sequence[float]]:
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return cfg["image_mean"], cfg["image_std"]
    for key, value in _MEANS.items():
        if model_type.startswith(key):
            return value
    return _MEANS["clip"]


def wrap_vision_model(model: nn.Module, layer: int = -2, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None, reference: str = "") -> ImageEncoder:
    """An :class:`ImageEncoder` around an already built vision (or dual) model."""
    tower = _vision_tower(model)
    config = tower.config
    model_type = str(getattr(config, "model_type", ""))
    default_mean, default_std = _mean_std(None, model_type)
    size = getattr(config, "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return ImageEncoder(tower, int(size), mean or default_mean, std or default_std, layer=layer, reference=reference)


def shapes_encoder_dir() -> Path:
    """The folder ``shapes`` names: RealCustom's own image encoder when shipped, else the shapes CLIP."""
    from attncraft.shapes.models import SHAPES_CLIP_DIR, SHAPES_REALCUSTOM_ENCODER_DIR

    own = Path(SHAPES_REALCUSTOM_ENCODER_DIR)
    return own if (own / "config.json").is_file() else Path(SHAPES_CLIP_DIR)


def load_image_encoder(reference: str = "shapes", layer: int = -2, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> ImageEncoder:
    """Load a vision model by reference: ``shapes``, a local folder or a Hub id (offline aware)."""
    from transformers import AutoModel

    from attncraft.loading import _is_hub_error, _unreachable, hub_offline

    ref = (reference or "shapes").strip()
    if ref.lower() in ("shapes", "default", ""):
        folder: Path | None = shapes_encoder_dir()
        source = str(folder)
        ref = "shapes"
    else:
        folder = Path(ref).expanduser() if Path(ref).expanduser().is_dir() else None
        source = str(folder) if folder is not None else ref
    try:
        model = AutoModel.from_pretrained(source, dtype=dtype, local_files_only=folder is not None or hub_offline())
    except Exception as exc:  # noqa: BLE001 - transformers raises many types
        if folder is None and _is_hub_error(exc):
            raise _unreachable(ref) from exc
        raise ModelLoadError(f"cannot load the image encoder {ref!r}: {' '.join(str(exc).split())[:200]}",
                             "pass a transformers vision model folder (CLIP, SigLIP, DINOv2) or a Hub id") from exc
    tower = _vision_tower(model)
    if not hasattr(tower, "config") or not hasattr(tower.config, "hidden_size"):
        raise ModelLoadError(f"the image encoder {ref!r} is a {type(model).__name__}, not a vision model",
                             "pass a CLIP, SigLIP or DINOv2 vision model")
    mean, std = _mean_std(folder, str(getattr(tower.config, "model_type", "")))
    encoder = wrap_vision_model(tower, layer=layer, mean=mean, std=std, reference=ref)
    return encoder.to(device)
