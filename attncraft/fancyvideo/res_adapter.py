"""ResAdapter v2 on the base UNet, as every released FancyVideo configuration uses it.

ResAdapter (``resadapter_v2_sd1.5``, a separate public model) is two files:

* ``pytorch_lora_weights.safetensors``: a rank-``r`` (16) LoRA in kohya naming on the three
  downsampler and three upsampler convolutions of an SD 1.5 UNet
  (``lora_unet_{down,up}_blocks_{i}_{downsamplers,upsamplers}_0_conv.lora_{down,up}.weight``: a
  ``(r, in, 3, 3)`` convolution with the base layer's stride and padding, then a ``(out, r, 1, 1)``
  one; optionally ``.alpha``);
* ``diffusion_pytorch_model.safetensors``: replacement weights of the UNet's normalisation layers,
  in diffusers' UNet naming.

:func:`apply_res_adapter` writes both into a ``UNet2DConditionModel`` before the motion UNet is built
(the order of FancyVideo's loader: base model, ResAdapter, motion modules, ``conv_in``). The LoRA is
merged into the convolutions' weights (``W += s * up @ down``, exact: both are linear in the input)
rather than kept as a side branch. Strict: a LoRA tensor for a layer the UNet lacks, a layer with
half a pair, a norm weight whose name or shape the UNet does not have, or a file holding anything
else is a one-line error naming it.

The LoRA scale ``s``: FancyVideo's inference wraps the convolutions in ``peft`` LoRA layers created
with peft's default ``lora_alpha=1`` and never reads the file's ``alpha``, so the released model runs
with ``s = 1 / r`` (1/16). ``scale="reference"`` (the default) reproduces that; ``scale="file"`` uses
ResAdapter's own convention (``alpha / r``, 1 without an ``alpha``: what diffusers'
``load_lora_weights`` does); a number sets ``s`` directly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from attncraft.errors import ModelLoadError

__all__ = ["LORA_FILE", "NORM_FILE", "apply_res_adapter"]

LORA_FILE = "pytorch_lora_weights.safetensors"
NORM_FILE = "diffusion_pytorch_model.safetensors"
_LORA_KEY = re.compile(r"^lora_unet_(down|up)_blocks_(\d+)_(downsamplers|upsamplers)_(\d+)_conv\.(lora_down\.weight|lora_up\.weight|alpha)$")


def _read(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"the ResAdapter folder {str(path.parent)!r} has no {path.name}",
                             "pass the resadapter_v2_sd1.5 folder (its LoRA and normalisation safetensors)")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file", "re-download ResAdapter") from exc


def apply_res_adapter(unet, folder: str | os.PathLike, scale: str | float = "reference") -> dict[str, int]:
    """Merge ResAdapter's LoRA into ``unet``'s sampler convolutions and load its norm weights, in
    place (see the module doc); returns ``{"lora layers": n, "norm tensors": m}``."""
    folder = Path(folder)
    lora, norms = _read(folder / LORA_FILE), _read(folder / NORM_FILE)
    own = unet.state_dict()
    for key, value in norms.items():
        if key not in own or own[key].shape != value.shape:
            what = "no such tensor" if key not in own else f"shape {tuple(value.shape)}, the UNet's is {tuple(own[key].shape)}"
            raise ModelLoadError(f"ResAdapter's normalisation weight {key} does not fit this UNet ({what})",
                                 "use ResAdapter made for this base (resadapter_v2_sd1.5 for SD 1.5)")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in lora.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise ModelLoadError(f"ResAdapter's LoRA file holds {key}, which is not a sampler-convolution LoRA tensor",
                                 "pass the resadapter_v2_sd1.5 folder unmodified")
        layer = f"{m[1]}_blocks.{m[2]}.{m[3]}.{m[4]}.conv"
        pairs.setdefault(layer, {})[m[5].split(".")[0]] = value
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for layer, parts in sorted(pairs.items()):
            conv = modules.get(layer)
            if conv is None or not isinstance(conv, torch.nn.Conv2d):
                raise ModelLoadError(f"ResAdapter has a LoRA for {layer}, which this UNet does not have",
                                     "use ResAdapter made for this base (resadapter_v2_sd1.5 for SD 1.5)")
            if "lora_down" not in parts or "lora_up" not in parts:
                raise ModelLoadError(f"ResAdapter's LoRA for {layer} lacks its lora_{'up' if 'lora_down' in parts else 'down'} tensor",
                                     "pass the resadapter_v2_sd1.5 folder unmodified")
            down, up = parts["lora_down"].float(), parts["lora_up"].float()
            rank = down.shape[0]
            if down.shape[1:] != conv.weight.shape[1:] or up.shape[:2] != (conv.weight.shape[0], rank):
                raise ModelLoadError(f"ResAdapter's LoRA for {layer} has shapes {tuple(down.shape)} / {tuple(up.shape)}, "
                                     f"which do not fit its {tuple(conv.weight.shape)} convolution", "use ResAdapter made for this base")
            if scale == "reference":
                s = 1.0 / rank
            elif scale == "file":
                s = float(parts["alpha"]) / rank if "alpha" in parts else 1.0
            else:
                s = float(scale)
            delta = (up.flatten(1) @ down.flatten(1)).view_as(conv.weight) * s
            conv.weight.add_(delta.to(conv.weight.dtype))
        unet.load_state_dict(norms, strict=False)
    return {"lora layers": len(pairs), "norm tensors": len(norms)}
