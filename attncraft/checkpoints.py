"""Pickled checkpoints: never opened unless trusted, and converted to safetensors once.

A ``.bin`` / ``.pt`` / ``.pth`` / ``.ckpt`` checkpoint is a Python pickle, and opening a pickle can
run any code its author put in it. torch's ``weights_only`` unpickler blocks the known payloads, but
it is a filter on a format built to run code, so attncraft follows one rule everywhere a model is
loaded (text-to-image models, CLIP, and the loaders other commands add): safetensors are loaded,
pickles are refused with one line saying so, unless the user passes ``--trust-pickle``.

* :func:`weight_files` / :func:`pickled_only` - what a model folder holds;
* :func:`check_pickle_trust` - the refusal (one line: the file, that it was not loaded, the way out);
* :func:`convert_to_safetensors` and ``python -m attncraft.checkpoints PATH`` - turn a trusted pickle
  (a single file, or every pickle of a model folder) into safetensors beside it, so later runs need
  no trust flag. Conversion unpickles with ``weights_only=True`` (tensors only).
* :func:`strict_mismatches` - what a file of tensors lacks, has in excess, or has of the wrong shape
  against the tensors a loader expects (the wording of every strict loader's one-line error).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from attncraft.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_SUFFIX = ".safetensors"
TRUST_FLAG = "--trust-pickle"

_INDEX_SUFFIX = ".index.json"


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def strict_mismatches(expected: Mapping[str, Any], tensors: Mapping[str, Any]) -> list[str]:
    """How ``tensors`` (name -> tensor) fail to match ``expected`` (name -> tensor or parameter): the
    missing names, the unexpected ones and the ones of another shape, each counted with the first few
    named (``[]`` when they match)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shapes = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
    if shapes:
        wrong = [f"{k} {tuple(tensors[k].shape)} for {tuple(expected[k].shape)}" for k in shapes]
        problems.append(f"{len(shapes)} of the wrong shape ({_listing(wrong)})")
    return problems


def is_pickle_file(path: str | os.PathLike) -> bool:
    """True for a checkpoint stored as a pickle (by extension: torch zip pickles and legacy ones)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES


def weight_files(folder: str | os.PathLike, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """``(safetensors files, pickle files)`` of a model folder (``recursive``: also its subfolders,
    e.g. the components of a diffusers pipeline)."""
    folder = Path(folder)
    files = folder.rglob("*") if recursive else folder.glob("*")
    safe, pickled = [], []
    for path in sorted(files):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            safe.append(path)
        elif is_pickle_file(path):
            pickled.append(path)
    return safe, pickled


def pickled_only(folder: str | os.PathLike) -> list[Path]:
    """Pickle weight files of ``folder`` (a model folder, or one component of a pipeline) that have
    no safetensors beside them; empty when the folder can be loaded from safetensors alone."""
    safe, pickled = weight_files(folder)
    return [] if safe else pickled


def _refusal(pickle: Path, target: Path, what: str, option: str) -> ModelLoadError:
    if target.is_dir():
        problem = (f"the {what} {str(target)!r} holds only a pickled checkpoint ({pickle.name}), not safetensors, "
                   "and it was not loaded (opening a pickle can run code)")
    else:
        problem = (f"the {what} {str(target)!r} is a pickle, not safetensors, and it was not loaded "
                   "(opening a pickle can run code)")
    return ModelLoadError(
        problem,
        f"if you trust its source, convert it once with: python -m attncraft.checkpoints {target} "
        f"(writes safetensors beside it), or pass {option}",
    )


def check_pickle_trust(path: str | os.PathLike, what: str = "checkpoint", trust_pickle: bool = False,
                       option: str = TRUST_FLAG, components: bool = False) -> None:
    """Refuse ``path`` (a pickle file, or a model folder holding pickles and no safetensors) unless
    ``trust_pickle``; does nothing for safetensors. ``components``: ``path`` is a pipeline folder
    whose subfolders (unet/, vae/, ...) are checked one by one. ``option`` is the flag to name."""
    if trust_pickle:
        return
    path = Path(path)
    if path.is_dir():
        folders = sorted(p for p in path.iterdir() if p.is_dir()) if components else [path]
        for folder in folders:
            pickles = pickled_only(folder)
            if pickles:
                raise _refusal(pickles[0], path, what, option)
    elif is_pickle_file(path):
        raise _refusal(path, path, what, option)


def _safetensors_name(path: Path) -> Path:
    """``pytorch_model.bin`` -> ``model.safetensors`` (the transformers name), ``X.bin`` -> ``X.safetensors``."""
    name = path.name
    stem = name[: -len(path.suffix)]
    if stem.startswith("pytorch_model"):  # diffusers' diffusion_pytorch_model keeps its stem
        stem = "model" + stem[len("pytorch_model"):]
    return path.with_name(stem + SAFETENSORS_SUFFIX)


def _tensor_dict(obj: Any, source: Path) -> dict[str, Any]:
    import torch

    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # Lightning / LDM .ckpt files
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{source} does not hold a plain dictionary of tensors", "convert it with the tool that wrote it")
    out, seen = {}, set()
    for key, tensor in obj.items():
        tensor = tensor.detach().cpu()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset()) if tensor.numel() else None
        # safetensors stores no shared or strided views: give each tensor its own contiguous memory
        if ptr is not None and ptr in seen:
            tensor = tensor.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[str(key)] = tensor.contiguous()
    return out


def _convert_file(src: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from attncraft.outputs import atomic_path

    dst = _safetensors_name(src)
    if dst.exists():
        raise ModelLoadError(f"{dst} already exists", "remove it first if it should be rewritten from the pickle")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad or unsafe pickles
        reason = " ".join(str(exc).split()).split(". ")[0][:160]
        raise ModelLoadError(f"cannot convert {src}: it is not a plain tensor checkpoint ({type(exc).__name__}: {reason})",
                             "convert it with the tool that wrote it") from None
    tensors = _tensor_dict(state, src)
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return dst


def _convert_index(index: Path) -> Path:
    """A sharded checkpoint's ``*.bin.index.json`` -> ``*.safetensors.index.json`` with renamed shards."""
    from attncraft.outputs import atomic_path

    data = json.loads(index.read_text())
    renamed = {shard: _safetensors_name(index.with_name(shard)).name for shard in set(data.get("weight_map", {}).values())}
    data["weight_map"] = {k: renamed[v] for k, v in data.get("weight_map", {}).items()}
    weights = _safetensors_name(index.with_name(index.name[: -len(_INDEX_SUFFIX)]))
    dst = weights.with_name(weights.name + _INDEX_SUFFIX)
    with atomic_path(dst) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return dst


def convert_to_safetensors(path: str | os.PathLike) -> list[Path]:
    """Convert a trusted pickle checkpoint (a file, or every pickle in a model folder and its
    subfolders) to safetensors beside it; returns the files written. Existing safetensors are kept."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist", "pass a .bin/.pt/.ckpt file or a model folder")
    if path.is_file():
        if not is_pickle_file(path):
            raise ModelLoadError(f"{path} is not a pickle checkpoint ({', '.join(PICKLE_SUFFIXES)})", "pass a pickle file")
        return [_convert_file(path)]
    written: list[Path] = []
    for folder in sorted({p.parent for p in weight_files(path, recursive=True)[1]}):
        for pickle in pickled_only(folder):
            written.append(_convert_file(pickle))
        for index in sorted(folder.glob(f"*.bin{_INDEX_SUFFIX}")):
            written.append(_convert_index(index))
    if not written:
        raise ModelLoadError(f"{path} holds no pickle checkpoint without a safetensors copy", "nothing to convert")
    return written


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m attncraft.checkpoints PATH...``: convert trusted pickles to safetensors."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m attncraft.checkpoints PATH [PATH...]\n"
              "Convert trusted pickle checkpoints (.bin/.pt/.ckpt, or every pickle of a model folder) to safetensors.")
        return 0 if args else 2
    try:
        for arg in args:
            for written in convert_to_safetensors(arg):
                print(written)
    except ModelLoadError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
