"""Fused attention backends for layers where no technique needs the attention map.

``sdpa`` (default) is ``torch.nn.functional.scaled_dot_product_attention``, the same call diffusers'
``AttnProcessor2_0`` makes, so outputs are identical. ``xformers`` uses
``xformers.ops.memory_efficient_attention``; it is available only when the optional ``xformers``
extra is installed, its CUDA kernels load with the installed torch, and a CUDA device is present
(xformers has no CPU kernels). All three are checked when the backend is chosen, with one tiny
attention call, so a bad choice fails early with a clear message instead of mid-generation.
Tensors that are not on CUDA take SDPA even with the xformers backend.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch
import torch.nn.functional as F

from attncraft.errors import InputError

BACKENDS = ("sdpa", "xformers")


def _probe_device() -> torch.device:
    return torch.device("cuda")


@lru_cache(maxsize=1)
def xformers_problem() -> str | None:
    """Why the xformers backend cannot run here, or None when it can.

    Importing xformers is not enough: a wheel built for another torch imports fine but cannot load
    its CUDA kernels, and would only fail at the first attention call, mid-generation. So one tiny
    attention is run here, once, when the backend is chosen.
    """
    try:
        import xformers
        import xformers.ops as xops
    except ModuleNotFoundError:
        return "the xformers attention backend needs the xformers package, which is not installed"
    except Exception as exc:  # noqa: BLE001 - an installed xformers that does not import is not usable
        return f"xformers is installed but does not import ({_first_line(exc)})"
    if not torch.cuda.is_available():
        return "the xformers attention backend needs a CUDA device, and none is available"
    try:
        probe = torch.zeros(1, 1, 8, 64, device=_probe_device(), dtype=torch.float16)
        _xformers_attention(xops, probe, probe, probe, None)
    except Exception as exc:  # noqa: BLE001 - whatever stops the kernel stops the backend
        version = getattr(xformers, "__version__", "?")
        missing = _missing_library(_extension_load_error())
        if missing is not None:
            return (f"xformers {version} is installed but its CUDA kernels cannot load: they need {missing}, "
                    f"which torch {torch.__version__} does not ship")
        return (f"xformers {version} is installed but its attention kernels do not run "
                f"with torch {torch.__version__} ({_first_line(exc)})")
    return None


_RUNTIME_PACKAGES = {"libcudart.so.12": "nvidia-cuda-runtime-cu12"}
"""Shared libraries xformers' kernels link against that a pip package provides beside it. xformers'
extension finds them through its relative search path, so installing the package into the same
environment is enough (no ``LD_LIBRARY_PATH``)."""


def _extension_load_error() -> BaseException | None:
    """The exception xformers caught when its C++/CUDA extension failed to load, if it kept one."""
    try:
        from xformers import _cpp_lib
    except Exception:  # noqa: BLE001 - an xformers without that module: nothing more to say
        return None
    error = getattr(_cpp_lib, "_cpp_library_load_exception", None)
    while error is not None and error.__cause__ is not None and not _missing_library(error):
        error = error.__cause__
    return error


def _missing_library(error: BaseException | None) -> str | None:
    """The shared library named in a loader error (``libX.so.N: cannot open shared object file``)."""
    if error is None:
        return None
    text = f"{error} {error.__cause__ or ''}"
    match = re.search(r"(lib[\w.+-]+\.so(?:\.\d+)*): cannot open shared object file", text)
    return match.group(1) if match else None


def _install_fix(problem: str) -> str:
    for library, package in _RUNTIME_PACKAGES.items():
        if library in problem:
            return (f"install it with pip install {package} (or pip install 'attncraft[xformers]', which includes it), "
                    "or use --attention-backend sdpa")
    return ("install an xformers build made for this torch and CUDA (pip install 'attncraft[xformers]') "
            "on a CUDA machine, or use --attention-backend sdpa")


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def xformers_available() -> bool:
    return xformers_problem() is None


def check_backend(name: str, probe: bool = True) -> str:
    """``name`` if it is a known backend that runs here; ``probe=False`` checks the name alone (for
    work that will run on another machine, e.g. batch jobs checked before they go to GPU workers)."""
    if name not in BACKENDS:
        raise InputError(f"unknown attention backend {name!r}", f"pass one of {', '.join(BACKENDS)}")
    if probe and name == "xformers":
        problem = xformers_problem()
        if problem is not None:
            raise InputError(problem, _install_fix(problem))
    return name


def _xformers_attention(xops, query, key, value, mask):
    """xformers on (batch, heads, tokens, head_dim) tensors; it wants (batch, tokens, heads, head_dim)."""
    out = xops.memory_efficient_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_bias=mask)
    return out.transpose(1, 2)


def fused_attention(
    backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention on (batch, heads, tokens, head_dim) tensors, without materialising the map."""
    if backend == "xformers" and query.is_cuda:
        import xformers.ops as xops

        return _xformers_attention(xops, query, key, value, mask)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
