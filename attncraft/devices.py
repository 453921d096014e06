"""Choosing the device and dtype a model runs in.

Defaults follow what works on each device: fp32 on CPU (half precision is slow or unsupported for
many CPU kernels), bf16 on CUDA devices that support it and fp16 on older ones, fp32 on MPS for
numerical safety. Users override both with ``--device`` / ``--dtype``.
"""

from __future__ import annotations

import torch

from attncraft.errors import InputError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when available, else CPU; anything else is validated."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}", "pass auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available", "pass --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``/``"auto"``: fp32 on CPU/MPS, bf16 on CUDA with bf16 support, else fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}", f"pass one of auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def available_memory(device: str | torch.device) -> int | None:
    """Bytes a new allocation can still get on ``device``: free memory of a CUDA device, the
    kernel's ``MemAvailable`` (RAM not needed by anyone, page cache included) on the CPU; None
    where it cannot be known."""
    dev = torch.device(device)
    if dev.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(dev)
        except (RuntimeError, AssertionError):
            return None
        return int(free)
    if dev.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None
