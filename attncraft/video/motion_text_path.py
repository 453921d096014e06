"""The motion text path: trained changes to a motion UNet's spatial cross-attention keys and values,
shipped beside a ``MotionAdapter``, so that the caption's motion words reach AnimateDiff's motion
modules.

**Why.** AnimateDiff's motion modules have no cross-attention: the caption reaches them only through
the features the frozen image UNet's cross-attention writes. A UNet trained on still images has no
reason to turn a motion word into features: on the Shapes motion model, swapping "moves up" for
"moves down" moves the features entering the motion modules by 4.5 % (t = 900; 2.2 % at t = 500),
"grows" for "shrinks" by 7.0 % (3.9 %), "rotates" for "stays still" by 5.7 % (2.7 %), while a colour
word moves them by 52 % (27 %); "moves right" / "moves left" (25 %) moves them about as much as the
absolute position "on the right" / "on the left" (31 %), i.e. the image layers read it as a place
(``benchmarks/probe_motion_words.py``). The adapter trained on such features does the stated motion
in 16 % of the videos. The text path
lets the motion training change the one place where text enters the spatial layers, the
cross-attention projections of the text states (``attn2.to_k`` and ``attn2.to_v`` of every spatial
transformer block, 0.28 M parameters on shapes SD), jointly with the motion modules. It is the same
kind of change as AnimateDiff v3's "domain adapter" (a LoRA on the image UNet trained with the motion
modules), at full rank because the layers are small.

**File.** ``text_path.safetensors`` in the adapter folder: for each trained tensor, its *difference*
from the base UNet it was trained on (fp16), keyed by the UNet's parameter name
(``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight``); the metadata holds the
format, the kind and the training record (the base's weights hash among it). A difference, not the
tensor, so that it carries over to a fine-tuned base as the adapter does; on the base it was trained
on it restores the trained tensors up to fp16 rounding of the difference.

**Loading.** :func:`~attncraft.loading.load_text_to_video` applies the file of an adapter folder (the
embedded Shapes adapter included) to the motion UNet it builds; ``UNetMotionModel.from_unet2d`` copies
the image UNet, so the image pipeline the base came from is untouched. :func:`apply_text_path` does the
same on a user's own ``AnimateDiffPipeline``'s UNet. Loading is strict (every tensor of the layout
present, none foreign, shapes equal, named in the error) and applying twice is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from attncraft.errors import InputError

TEXT_PATH_FILE = "text_path.safetensors"
FORMAT = "attncraft-motion-text-path/1"
KINDS = ("cross-kv",)
"""What a text path trains: ``cross-kv`` = ``attn2.to_k`` and ``attn2.to_v`` of every spatial transformer."""
METADATA_KEY = "attncraft_text_path"
APPLIED_ATTR = "_attncraft_text_path"


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InputError(f"unknown motion text path {kind!r}", f"use one of: {', '.join(KINDS)}")
    return kind


def text_path_names(unet: torch.nn.Module, kind: str = "cross-kv") -> list[str]:
    """The parameter names a text path of ``kind`` trains in ``unet`` (a ``UNetMotionModel`` or the
    ``UNet2DConditionModel`` it is built from: the spatial layers have the same names in both): the
    key and value projections (weights and any biases) of every cross-attention outside the motion
    modules."""
    check_kind(kind)
    names = []
    for name, module in unet.named_modules():
        if "motion_modules" in name or not name.endswith(".attn2"):
            continue
        if not getattr(module, "is_cross_attention", False):
            continue
        for proj in ("to_k", "to_v"):
            for pname, _ in getattr(module, proj).named_parameters():
                names.append(f"{name}.{proj}.{pname}")
    if not names:
        raise InputError(f"{type(unet).__name__} has no spatial cross-attention for a motion text path",
                         "pass the UNet of an AnimateDiff (SD 1.x) pipeline")
    return names


def mark_trainable(unet: torch.nn.Module, kind: str = "cross-kv") -> dict[str, torch.Tensor]:
    """Make the text path's parameters of ``unet`` trainable; returns a copy of their current values
    (the base the differences are taken from)."""
    params = dict(unet.named_parameters())
    base = {}
    for name in text_path_names(unet, kind):
        params[name].requires_grad_(True)
        base[name] = params[name].detach().clone()
    return base


def text_path_parameters(unet: torch.nn.Module, kind: str = "cross-kv") -> list[torch.nn.Parameter]:
    params = dict(unet.named_parameters())
    return [params[n] for n in text_path_names(unet, kind)]


def text_path_deltas(unet: torch.nn.Module, base: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors' differences from ``base`` (float32, on the CPU)."""
    params = dict(unet.named_parameters())
    return {n: (params[n].detach().float() - b.float()).cpu() for n, b in base.items()}


def save_text_path(path: str | os.PathLike, deltas: Mapping[str, torch.Tensor], kind: str = "cross-kv",
                   training: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float16) -> Path:
    """Write a text path file (``dtype`` differences, default fp16), atomically."""
    from safetensors.torch import save_file

    from attncraft.outputs import atomic_path, to_strict_json

    check_kind(kind)
    tensors = {n: d.detach().to(device="cpu", dtype=dtype).contiguous() for n, d in deltas.items()}
    info = {"format": FORMAT, "kind": kind, "training": dict(training) if training is not None else None}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", METADATA_KEY: to_strict_json(info)})
    return path


def resolve_text_path_file(source: str | os.PathLike) -> Path:
    """``source`` itself, or ``source/text_path.safetensors`` when it is a folder."""
    path = Path(source).expanduser()
    return path / TEXT_PATH_FILE if path.is_dir() else path


def read_text_path(source: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The differences and the record (format, kind, training) of a text path file or adapter folder."""
    from safetensors import safe_open

    from attncraft.errors import short_reason
    from attncraft.validation import check_input_file

    path = check_input_file(resolve_text_path_file(source), "motion text path", suffixes=(".safetensors",))
    fix = "pass a text_path.safetensors written by the motion training (--text-path)"
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"motion text path {path} cannot be read ({short_reason(exc)})", fix) from None
    try:
        info = json.loads(metadata[METADATA_KEY])
    except (KeyError, ValueError):
        raise InputError(f"{path} is not a motion text path (no {METADATA_KEY} metadata)", fix) from None
    if info.get("format") != FORMAT:
        raise InputError(f"{path} is a motion text path of format {info.get('format')!r}, this version reads {FORMAT!r}",
                         "retrain it with this version, or use the version that wrote it")  # fmt: skip
    check_kind(info.get("kind", ""))
    return tensors, info


@torch.no_grad()
def apply_text_path(unet: torch.nn.Module, source: str | os.PathLike) -> dict[str, Any]:
    """Add a text path's differences to ``unet``'s parameters, in place; returns its record.

    Strict: the file must hold exactly the tensors of its kind for this UNet's layout, each of the
    parameter's shape; a UNet that already has a text path is refused (its differences would add up)."""
    from attncraft.checkpoints import strict_mismatches

    tensors, info = read_text_path(source)
    path = resolve_text_path_file(source)
    if getattr(unet, APPLIED_ATTR, None) is not None:
        raise InputError(f"this UNet already has a motion text path ({getattr(unet, APPLIED_ATTR)})",
                         "apply a text path once, to a UNet built from the base model")  # fmt: skip
    expected = text_path_names(unet, info["kind"])
    params = dict(unet.named_parameters())
    problems = strict_mismatches({n: params[n] for n in expected}, tensors)
    if problems:
        raise InputError(f"motion text path {path} does not fit this UNet: {'; '.join(problems)}",
                         "pass the text path trained with this adapter on this base model's layout")  # fmt: skip
    for name in expected:
        param = params[name]
        delta = tensors[name].to(device=param.device, dtype=torch.float32)
        param.copy_((param.float() + delta).to(param.dtype))
    setattr(unet, APPLIED_ATTR, str(path))
    return info


def has_text_path(folder: str | os.PathLike | None) -> bool:
    return folder is not None and (Path(folder) / TEXT_PATH_FILE).is_file()
