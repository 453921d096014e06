"""Fused attention backends for layers where no technique needs the attention map.

``sdpa`` (default) is ``torch.nn.functional.scaled_dot_product_attention``, the same call diffusers'
``AttnProcessor2_0`` makes, so outputs are identical. ``xformers`` uses
``xformers.ops.memory_efficient_attention``; it is available only when the optional ``xformers``
extra is installed, its CUDA kernels load with the installed torch, and a CUDA device is present
(xformers has no CPU kernels). All three are checked when the backend is chosen, with one tiny
attention call, so a bad choice fails early with a clear message instead of mid-generation.
Tensors that are not on CUDA take SDPA even with the xformers backend.

Batch chunking: the fused CUDA kernels put the batch on a grid dimension limited to 65535 blocks, and
fail with ``CUDA error: invalid argument`` beyond it. Where that limit binds depends on the kernel:

* PyTorch's SDPA kernels (flash, memory-efficient) take the batch and the heads on *separate* grid
  dimensions, so only ``batch <= 65535`` is needed. Evidence on an H200 (torch 2.11): stock diffusers
  runs AnimateDiff's temporal attention at 512x512 with guidance (2 * 64 * 64 = 8,192 sequences, 8
  heads: 65,536 (sequence, head) pairs) in one SDPA call, and SDPA failed on CTGM's TAR with 65,536
  *sequences* (``benchmarks/RESULTS.md``). :func:`sdpa` therefore slices only a batch above the limit,
  and otherwise makes exactly the call ``AttnProcessor2_0`` makes: an earlier rule that sliced at
  ``batch * heads > 65535`` split every AnimateDiff temporal call at that size into 8,191 + 1 rows and
  cost the stock path 1-2 % a UNet call there (the inactive steps of the BroadWay / VSTAR benchmark).
* xformers' flash forward fails already at ``batch * heads = 65,536`` (measured, same table), so
  :func:`fused_attention` with the xformers backend keeps ``batch * heads <= 65535``.

Slices are equal in size (``ceil(batch / pieces)`` rows), and the result is the one-call result
because every sequence is attended on its own (tests: chunked == unchunked exactly, on CPU).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from attncraft.errors import InputError

BACKENDS = ("sdpa", "xformers")

MAX_KERNEL_BATCH = 65535
"""CUDA's limit on a grid's y and z dimensions: the largest batch of one SDPA call, and the largest
``batch * heads`` of one xformers call (see the module doc)."""


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


def batch_chunk_size(heads: int = 1, limit: int | None = None) -> int:
    """Most rows of the batch per kernel call so that ``rows * heads <= limit`` (at least one row);
    ``limit`` None is :data:`MAX_KERNEL_BATCH` (read at call time). ``heads`` 1 for kernels whose grid
    holds the batch alone (SDPA), the head count where it holds ``batch * heads`` (xformers)."""
    limit = MAX_KERNEL_BATCH if limit is None else limit
    if limit < 1:
        raise ValueError(f"the kernel batch limit must be positive, not {limit}")
    return max(1, limit // max(1, heads))


def chunk_rows(batch: int, heads: int = 1, limit: int | None = None) -> int:
    """Rows per slice of a batch of ``batch`` rows: the whole batch when it fits, else equal slices
    (``ceil(batch / pieces)`` rows, the fewest pieces within :func:`batch_chunk_size`)."""
    most = batch_chunk_size(heads, limit)
    if batch <= most:
        return batch
    pieces = -(-batch // most)
    return -(-batch // pieces)


def map_batch_chunks(fn: Callable[..., torch.Tensor], tensors: Sequence[torch.Tensor | None], heads: int = 1,
                     limit: int | None = None) -> torch.Tensor:
    """``fn(*tensors)`` computed on equal slices of the batch (dim 0) with ``rows * heads <= limit``
    (:func:`chunk_rows`).

    For work that is independent per batch row (attention, or a whole temporal block): the slices'
    results are concatenated along dim 0. ``None`` entries pass through; every tensor must have the
    batch as its first dimension. One call, on the tensors as given, when the batch fits.
    """
    batch = next(t for t in tensors if t is not None).shape[0]
    rows = chunk_rows(batch, heads, limit)
    if batch <= rows:
        return fn(*tensors)
    pieces = [fn(*(None if t is None else t[start:start + rows] for t in tensors)) for start in range(0, batch, rows)]
    return torch.cat(pieces)


def _heads(query: torch.Tensor) -> int:
    return query.shape[1] if query.dim() == 4 else 1


def _batch_mask(mask: torch.Tensor | None, query: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(per_row, shared)``: a mask with one entry per batch row is sliced with the batch; a
    broadcast one (batch 1, or fewer dimensions) is given whole to every slice."""
    if mask is not None and mask.dim() == query.dim() and mask.shape[0] == query.shape[0] != 1:
        return mask, None
    return None, mask


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None, *,
         limit: int | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on ``(batch, heads, tokens, dim)`` (or ``(batch, tokens, dim)``,
    one head) tensors; a batch above the kernels' grid limit in slices (see the module doc), the heads
    on their own grid dimension."""
    if query.shape[0] <= (MAX_KERNEL_BATCH if limit is None else limit):  # the usual case: AttnProcessor2_0's call
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
    per_row, shared = _batch_mask(mask, query)

    def attend(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=shared if m is None else m, dropout_p=0.0,
                                              is_causal=False)  # fmt: skip

    return map_batch_chunks(attend, (query, key, value, per_row), 1, limit)


def _xformers_attention(xops, query, key, value, mask, limit: int | None = None):
    """xformers on (batch, heads, tokens, head_dim) tensors; it wants (batch, tokens, heads, head_dim).
    In batch slices with ``batch * heads`` within the grid limit (its flash forward fails beyond)."""
    per_row, shared = _batch_mask(mask, query)

    def attend(q, k, v, m):
        bias = shared if m is None else m
        return xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)

    return map_batch_chunks(attend, (query, key, value, per_row), _heads(query), limit).transpose(1, 2)


def fused_attention(
    backend: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
    limit: int | None = None,
) -> torch.Tensor:
    """Attention on (batch, heads, tokens, head_dim) tensors, without materialising the map, in batch
    slices within the kernels' grid limit."""
    if backend == "xformers" and query.is_cuda:
        import xformers.ops as xops

        return _xformers_attention(xops, query, key, value, mask, limit)
    return sdpa(query, key, value, mask, limit=limit)
