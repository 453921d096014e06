"""Convert the released FancyVideo checkpoint into diffusers folders, strictly.

Inputs (:func:`read_checkpoint`):

* the DeepSpeed file of the release, ``fancyvideo_ckpts/<variant>/mp_rank_00_model_states.pt``: a
  ``torch.save`` pickle whose ``module`` entry is the UNet's state dict (next to DeepSpeed's
  metadata). Pickles are refused unless ``trust_pickle`` (``--trust-pickle``); a trusted one is read
  with torch's ``weights_only`` unpickler, and the few non-tensor objects DeepSpeed stores beside the
  weights are replaced by inert placeholders named in the report instead of being constructed, so
  nothing in the file ever runs (not even a payload smuggled into a trusted file);
* the third-party single file ``FancyVideo_v1.safetensors`` (a ``FancyVideo`` marker tensor, the
  motion modules, ``conv_in``, the two embeddings). Safetensors need no flag.

What is kept is what FancyVideo's own loader keeps (keys containing ``motion_modules.``,
``conv_in.weight``, ``fps_embedding.``, ``motion_embedding.``, after a leading ``module.``):

* the motion modules (original AnimateDiff layout, or diffusers') go through diffusers' motion-module
  converter into a ``MotionAdapter`` sized from the weights (v2 layout: mid block, 32 frame
  positions; 8 heads and 32 norm groups, which the weights do not record) with
  ``conv_in_channels=9``; its ``conv_in.weight`` is the checkpoint's. The fixed sinusoidal tables
  (``pos_encoder.pe``) are not weights in diffusers (rebuilt from ``motion_max_seq_length``): each is
  checked against the rebuilt table, within the checkpoint's precision, so a file whose tables differ
  is refused rather than silently changed;
* ``fps_embedding.linear.*`` and ``motion_embedding.linear.*`` become a
  :class:`~attncraft.fancyvideo.conditioning.FancyVideoConditioning`.

Everything else is named in the report and not used, as in the reference: the spatial UNet weights
(the base model's are used), ``conv_in.bias`` (the base model's bias is used; ``UNetMotionModel.
from_unet2d`` takes it too) and CTGM modules (never part of the release). Loading is strict: a tensor
the adapter or the embeddings expect but the file lacks, or a kept tensor they cannot place, is an
error naming it. One tensor the adapter needs is not among those FancyVideo keeps: ``conv_in.bias``
(replaced by the base model's bias when the motion UNet is built); the file's is stored, or zeros
when the file has none, and the report says which.

Output (:func:`convert_fancyvideo`): ``DIR`` is a ``MotionAdapter`` folder (``MotionAdapter.
from_pretrained(DIR)`` with diffusers alone), ``DIR/conditioning`` the embeddings
(``FancyVideoConditioning.from_pretrained(DIR / "conditioning")``), ``DIR/conversion.json``
the report. :func:`load_fancyvideo_adapter` reads such a folder (or a checkpoint file, converted in
memory) back strictly.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from attncraft.checkpoints import PICKLE_SUFFIXES
from attncraft.errors import ModelLoadError, short_reason
from attncraft.fancyvideo.conditioning import FancyVideoConditioning
from attncraft.fancyvideo.strict import strict_from_pretrained

__all__ = [
    "CONDITIONING_SUBFOLDER",
    "ConversionReport",
    "FancyVideoParts",
    "convert_fancyvideo",
    "convert_state_dict",
    "load_fancyvideo_adapter",
    "read_checkpoint",
]

CONDITIONING_SUBFOLDER = "conditioning"
REPORT_NAME = "conversion.json"
MARKER_KEY = "FancyVideo"
"""The marker tensor of the third-party single-file conversion."""
EMBEDDING_KEYS = tuple(f"{name}.linear.{part}" for name in ("fps_embedding", "motion_embedding")
                       for part in ("weight", "bias"))
CTGM_MARKERS = ("ctm_", "spatial_cross_text_modules", "temporal_self_text_modules")
SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


@dataclass
class ConversionReport:
    """What a conversion read, kept and left out (written as ``conversion.json``)."""

    source: str
    layout: str  # "deepspeed" or "single-file"
    kept: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    ignored_examples: dict[str, str] = field(default_factory=dict)
    placeholders: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    adapter_config: dict[str, Any] = field(default_factory=dict)
    conditioning_config: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"read {self.source} ({self.layout})"]
        out += [f"  kept {n} {what}" for what, n in self.kept.items()]
        out += [f"  not used: {n} {what} (e.g. {self.ignored_examples.get(what, '?')})" for what, n in self.ignored.items()]
        if self.placeholders:
            out.append(f"  non-tensor objects left as inert placeholders (never constructed): {', '.join(self.placeholders)}")
        out += [f"  note: {note}" for note in self.notes]
        return out


@dataclass
class FancyVideoParts:
    """A converted checkpoint: the 9-channel ``MotionAdapter`` and the fps/motion embeddings."""

    adapter: Any
    conditioning: FancyVideoConditioning
    report: ConversionReport


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


class _Placeholder:
    """Stands in for a non-tensor object of a trusted pickle: records its arguments, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        return _Placeholder(*args, **kwargs)


def _load_pickle(path: Path) -> tuple[Any, list[str]]:
    from torch import serialization

    try:
        names = list(serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # noqa: BLE001 - not a zip checkpoint, or damaged
        raise ModelLoadError(f"{str(path)!r} is not a readable torch checkpoint: {short_reason(exc, 120)}",
                             "re-download it, or pass the safetensors conversion") from exc
    stand_ins = [(type(name.rsplit(".", 1)[-1], (_Placeholder,), {}), name) for name in names]
    try:
        with serialization.safe_globals(stand_ins):
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True), names
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {str(path)!r} with torch's weights-only loader: {short_reason(exc, 160)}",
                             "convert it where it was made, or pass the safetensors conversion") from exc


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """``(state dict, layout, placeholders)`` of a FancyVideo checkpoint (see the module doc)."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ModelLoadError(f"{str(path)!r} is not a FancyVideo checkpoint (.pt from DeepSpeed or .safetensors)",
                             "pass fancyvideo_ckpts/<variant>/mp_rank_00_model_states.pt or FancyVideo_v1.safetensors")
    if path.suffix.lower() != ".safetensors" and not trust_pickle:
        raise ModelLoadError(
            f"the FancyVideo checkpoint {str(path)!r} is a pickle, not safetensors, and it was not opened "
            "(opening a pickle can run code)",
            "if you trust its source, pass --trust-pickle: it is then read with torch's weights-only loader, "
            "and 'attncraft convert fancyvideo' writes safetensors so later runs need no flag",
        )
    placeholders: list[str] = []
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{str(path)!r} is not a readable safetensors file: {short_reason(exc, 120)}",
                                 "re-download it") from exc
    else:
        data, placeholders = _load_pickle(path)
    layout = "single-file"
    if isinstance(data, dict) and isinstance(data.get("module"), dict):
        data, layout = data["module"], "deepspeed"
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict) and len(data) < 8:
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"{str(path)!r} holds a {type(data).__name__}, not a state dict",
                             "pass FancyVideo's mp_rank_00_model_states.pt or FancyVideo_v1.safetensors")
    state = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, layout, placeholders


# --------------------------------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------------------------------


def _kind(key: str) -> str:
    if key == MARKER_KEY:
        return "marker"
    if any(m in key for m in CTGM_MARKERS):
        return "CTGM tensors (not part of the released model)"
    if "motion_modules." in key:
        return "motion"
    if key == "conv_in.weight":
        return "conv_in.weight"
    if key == "conv_in.bias":
        return "conv_in.bias"
    if key.startswith(("fps_embedding.", "motion_embedding.")):
        return "embedding"
    return "spatial UNet tensors (the base model's are used)"


def _check_tables(original: dict[str, torch.Tensor], adapter) -> int:
    """Compare every ``pos_encoder.pe`` / ``pos_embed.pe`` table of the file with the adapter's rebuilt
    one; returns how many were checked."""
    tables = {k: v for k, v in original.items() if k.endswith(("pos_encoder.pe", "pos_embed.pe"))}
    rebuilt = next((b for n, b in adapter.named_buffers() if n.endswith("pos_embed.pe")), None)
    for key, value in tables.items():
        width = value.shape[-1]
        reference = next((b for n, b in adapter.named_buffers() if n.endswith("pos_embed.pe") and b.shape[-1] == width),
                         rebuilt)
        if reference is None or value.shape != reference.shape:
            raise ModelLoadError(f"the frame-position table {key} has shape {tuple(value.shape)}, which this adapter "
                                 "layout cannot hold", "pass an unmodified FancyVideo checkpoint")
        tolerance = 4 * torch.finfo(value.dtype).eps if value.dtype.is_floating_point else 0
        diff = float((value.float() - reference.float()).abs().max())
        if diff > tolerance:
            raise ModelLoadError(f"the frame-position table {key} differs from the sinusoidal table diffusers builds "
                                 f"(max difference {diff:.3g})", "this checkpoint's motion modules cannot be ported as they are")
    return len(tables)


def convert_state_dict(state: dict[str, torch.Tensor], source: str = "(state dict)", layout: str = "single-file",
                       placeholders: list[str] | None = None) -> FancyVideoParts:
    """Build the ``MotionAdapter`` and the embeddings from a FancyVideo state dict, strictly."""
    from diffusers import MotionAdapter

    from attncraft.loading import infer_motion_adapter_config, motion_state_dict_to_diffusers

    report = ConversionReport(source=source, layout=layout, placeholders=list(placeholders or []))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        groups.setdefault(_kind(key), {})[key] = value
    motion = groups.pop("motion", {})
    embeddings = groups.pop("embedding", {})
    conv_w = groups.pop("conv_in.weight", {}).get("conv_in.weight")
    conv_b = groups.pop("conv_in.bias", {}).get("conv_in.bias")
    groups.pop("marker", None)
    for what, tensors in sorted(groups.items()):
        report.ignored[what] = len(tensors)
        report.ignored_examples[what] = next(iter(sorted(tensors)))
    if not motion:
        raise ModelLoadError(f"{source!r} holds no motion modules, so it is not a FancyVideo checkpoint",
                             "pass fancyvideo_ckpts/<variant>/mp_rank_00_model_states.pt or FancyVideo_v1.safetensors")
    if conv_w is None or conv_w.dim() != 4:
        raise ModelLoadError(f"{source!r} has no 4-D conv_in.weight (FancyVideo's 9-channel input layer)",
                             "pass a FancyVideo checkpoint (an AnimateDiff motion module alone is not one)")
    missing = [k for k in EMBEDDING_KEYS if k not in embeddings]
    extra = sorted(set(embeddings) - set(EMBEDDING_KEYS))
    if missing or extra:
        raise ModelLoadError(f"{source!r}: the fps/motion embeddings do not match FancyVideo's "
                             f"({len(missing)} missing, e.g. {missing[0] if missing else '-'}; "
                             f"{len(extra)} unexpected, e.g. {extra[0] if extra else '-'})",
                             "pass an unmodified FancyVideo checkpoint")

    converted = motion_state_dict_to_diffusers(motion)
    converted["conv_in.weight"] = conv_w
    try:
        cfg = infer_motion_adapter_config(converted, motion)
        adapter = MotionAdapter(**cfg)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the motion-module layout of {source!r}: {short_reason(exc, 200)}",
                             "pass an unmodified FancyVideo checkpoint") from exc
    if conv_b is None:
        conv_b = torch.zeros(conv_w.shape[0], dtype=conv_w.dtype)
        report.notes.append("the checkpoint has no conv_in.bias; the adapter stores zeros there (never used: the "
                            "base model's bias is)")
    converted["conv_in.bias"] = conv_b
    missing_keys, unexpected = adapter.load_state_dict(converted, strict=False)
    missing_keys = [k for k in missing_keys if not k.endswith("pos_embed.pe")]
    if missing_keys or unexpected:
        raise ModelLoadError(
            f"the motion modules of {source!r} do not fill a MotionAdapter of the layout read from them: "
            f"{len(missing_keys)} missing (e.g. {missing_keys[0] if missing_keys else '-'}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[0] if unexpected else '-'})",
            "pass an unmodified FancyVideo checkpoint",
        )
    tables = _check_tables(motion, adapter)
    fps_w = embeddings["fps_embedding.linear.weight"]
    conditioning = FancyVideoConditioning(in_channels=int(fps_w.shape[1]), embed_dim=int(fps_w.shape[0]))
    try:
        conditioning.load_state_dict({k: v for k, v in embeddings.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the fps/motion embeddings of {source!r} have unexpected shapes: {short_reason(exc, 160)}",
                             "pass an unmodified FancyVideo checkpoint") from exc
    n_motion = len([k for k in motion if not k.endswith("pe")])
    report.kept = {"motion-module tensors": n_motion, "conv_in.weight (9 input channels)": 1,
                   "fps/motion embedding tensors": len(embeddings)}
    if tables:
        report.notes.append(f"{tables} frame-position tables equal the sinusoidal ones diffusers rebuilds "
                            f"({cfg['motion_max_seq_length']} positions)")
    if conv_b is not None and "conv_in.bias" in state:
        report.notes.append("conv_in.bias is stored but not used: the base model's bias is (as in FancyVideo)")
    report.notes.append("conv_in input channels 0..3 are replaced by the base model's conv_in when the motion UNet "
                        "is built (UNetMotionModel.from_unet2d), as FancyVideo's loader does")
    report.adapter_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    report.conditioning_config = dict(in_channels=conditioning.config.in_channels, embed_dim=conditioning.config.embed_dim)
    return FancyVideoParts(adapter.eval(), conditioning.eval(), report)


def _out_dir_problem(out: Path, overwrite: bool) -> None:
    from attncraft.errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file", "pass a folder for the converted model")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} exists and is not empty", "pass another --out, or --overwrite to replace its files")


def convert_fancyvideo(checkpoint: str | os.PathLike, out: str | os.PathLike, trust_pickle: bool = False,
                       overwrite: bool = False, dtype: torch.dtype | None = None) -> FancyVideoParts:
    """Convert ``checkpoint`` into the folder ``out`` (see the module doc); returns the parts.

    The folder is written under a temporary name and renamed when complete (with ``overwrite`` into
    an existing folder, each file replaces its old version atomically). ``dtype`` casts the weights
    before saving (default: as stored)."""
    from attncraft.outputs import prepare_output_dir

    out = Path(out)
    _out_dir_problem(out, overwrite)
    prepare_output_dir(out.parent if str(out.parent) else Path("."))
    state, layout, placeholders = read_checkpoint(checkpoint, trust_pickle)
    parts = convert_state_dict(state, str(checkpoint), layout, placeholders)
    if dtype is not None:
        parts.adapter.to(dtype)
        parts.conditioning.to(dtype)
    tmp = out.parent / f".{out.name}.attncraft-converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        parts.adapter.save_pretrained(tmp)
        parts.conditioning.save_pretrained(tmp / CONDITIONING_SUBFOLDER)
        (tmp / REPORT_NAME).write_text(json.dumps(asdict(parts.report), indent=2) + "\n", encoding="utf-8")
        if not out.exists():
            os.replace(tmp, out)
        else:
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                target = out / file.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file, target)
    except OSError as exc:
        from attncraft.errors import InputError

        raise InputError(f"cannot write the converted model to {out}: {exc.strerror or exc}",
                         "free some space or pass another --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return parts


# --------------------------------------------------------------------------------------------------
# Loading a converted folder
# --------------------------------------------------------------------------------------------------


_RECONVERT = "convert the checkpoint again with: attncraft convert fancyvideo CKPT --out DIR"


def load_fancyvideo_adapter(reference: str | os.PathLike, dtype: torch.dtype | None = None,
                            trust_pickle: bool = False) -> FancyVideoParts:
    """A converted folder (strictly), or a checkpoint file converted in memory."""
    from diffusers import MotionAdapter

    path = Path(reference).expanduser()
    if path.is_file():
        state, layout, placeholders = read_checkpoint(path, trust_pickle)
        parts = convert_state_dict(state, str(path), layout, placeholders)
        if dtype is not None:
            parts.adapter.to(dtype)
            parts.conditioning.to(dtype)
        return parts
    if not path.is_dir():
        raise ModelLoadError(f"FancyVideo adapter {str(reference)!r} does not exist",
                             "pass the folder written by 'attncraft convert fancyvideo', or the checkpoint file")
    if not (path / CONDITIONING_SUBFOLDER / "config.json").is_file() or not (path / "config.json").is_file():
        raise ModelLoadError(f"{str(path)!r} is not a converted FancyVideo folder (config.json and "
                             f"{CONDITIONING_SUBFOLDER}/config.json)",
                             "convert the checkpoint with: attncraft convert fancyvideo CKPT --out DIR")
    adapter = strict_from_pretrained(MotionAdapter, path, "FancyVideo motion adapter", _RECONVERT, dtype, trust_pickle)
    if not adapter.config.get("conv_in_channels"):
        raise ModelLoadError(f"the motion adapter in {str(path)!r} has no 9-channel conv_in, so it is not FancyVideo's",
                             "convert the FancyVideo checkpoint with: attncraft convert fancyvideo CKPT --out DIR")
    # (a folder, not ``subfolder=``: diffusers prefers weights at the top of a local folder to a subfolder's)
    conditioning = strict_from_pretrained(FancyVideoConditioning, path / CONDITIONING_SUBFOLDER, "fps/motion embeddings",
                                          _RECONVERT, dtype, trust_pickle)
    report_file = path / REPORT_NAME
    data = json.loads(report_file.read_text(encoding="utf-8")) if report_file.is_file() else {"source": str(path),
                                                                                              "layout": "folder"}
    report = ConversionReport(**{k: v for k, v in data.items() if k in ConversionReport.__dataclass_fields__})
    return FancyVideoParts(adapter, conditioning, report)
