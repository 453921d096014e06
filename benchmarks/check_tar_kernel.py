"""Run TAR's fused Triton kernel once, at one layer size and launch configuration, and compare it with
the same temporal modules in fp32 (``attncraft/attention_processors/ctgm_kernels.py``).

Built to find a fault: run it under ``compute-sanitizer --tool memcheck`` to see whether a launch
configuration reads or writes out of bounds, one configuration a process (a CUDA fault poisons the
process's context). ``--force`` launches a configuration that :func:`fused_tar` refuses (it bypasses the
check, for re-testing a new Triton). Random weights, every zero-initialised projection drawn.

Usage (GPU): ``compute-sanitizer --tool memcheck python benchmarks/check_tar_kernel.py --size 4 --config 2x4``.
On a CPU, ``TRITON_INTERPRET=1 python benchmarks/check_tar_kernel.py --device cpu --size 2`` runs the
kernel in Triton's interpreter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ctgm_attention import random_tar  # noqa: E402


def check(device: str, size: int, block_pixels: int, num_warps: int, frames: int = 16, clips: int = 2,
          heads: int = 8, force: bool = False, seed: int = 0, dtype: torch.dtype = torch.float16) -> float:  # fmt: skip
    """The kernel's relative error ``||out - ref|| / ||ref - scores||`` against the fp32 modules."""
    from attncraft.attention_processors import ctgm_kernels
    from attncraft.attention_processors.ctgm import CTGMLayer

    modules = random_tar(dtype, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    scores = (2.0 * torch.randn(clips * frames, heads, size * size, 77, generator=g) + 1.0).to(device)
    problem = ctgm_kernels.fused_tar_problem(modules, scores, frames)
    if problem is not None:
        raise SystemExit(f"error: the kernel cannot run here: {problem}")
    if force:
        original = ctgm_kernels.launch_problem
        ctgm_kernels.launch_problem = lambda *args: None
    try:
        with torch.no_grad():
            out = ctgm_kernels.fused_tar(modules, scores, frames, block_pixels=block_pixels, num_warps=num_warps)
    except ValueError as error:
        raise SystemExit(f"error: {error}; pass --force to launch it anyway") from None
    finally:
        if force:
            ctgm_kernels.launch_problem = original
    if scores.is_cuda:
        torch.cuda.synchronize()
    layer = CTGMLayer.__new__(CTGMLayer)
    torch.nn.Module.__init__(layer)
    layer.tar = torch.nn.ModuleList(random_tar(torch.float32, device, seed))
    with torch.no_grad():
        ref = layer.refine_scores(scores, frames, (size, size), False, "eager")
    return float((out.float() - ref).norm() / (ref - scores).norm())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=4, help="the layer's latent side (pixels: size^2)")
    p.add_argument("--config", default="2x4", help="PIXELSxWARPS (default: the kernel's)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16", help="the modules' dtype")
    p.add_argument("--force", action="store_true", help="launch a configuration the kernel refuses")
    args = p.parse_args(argv)
    try:
        block_pixels, num_warps = (int(v) for v in args.config.split("x"))
    except ValueError:
        raise SystemExit(f"error: --config {args.config!r} is not PIXELSxWARPS; pass e.g. 2x4") from None
    error = check(args.device, args.size, block_pixels, num_warps, frames=args.frames, force=args.force,
                  dtype={"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype])  # fmt: skip
    print(f"{args.config} at {args.size}x{args.size} ran clean ({args.dtype}); relative error against the fp32 modules {error:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
