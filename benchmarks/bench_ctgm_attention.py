"""TAR's temporal attention at SD 1.5's 64x64 layers: SDPA's kernels against explicit products, and one
whole TAR temporal module with each attention path (and compiled).

Part 1 times one slice of the attention a TAR temporal module makes at the 64x64 layers of SD 1.5 at
512x512 with guidance: 32,768 sequences x 8 heads x 15 frames x 9 channels (77 text tokens as channels,
``proj_in`` to 72; two such slices per call). Variants: SDPA restricted to each of its backends (cuDNN,
memory-efficient, flash, math) on heads of 9 and on heads zero-padded to 16, and the explicit form
``q @ k^T``, softmax, ``@ v`` with the softmax in fp32 (``ShortSequenceProcessor``) or in the input dtype.
Every variant's output is compared with the explicit fp32-softmax one (max abs difference).

Part 2 times :class:`~attncraft.attention_processors.ctgm.TemporalModule` (77 channels, 8 heads) on the
input of one TAR module at those layers, ``(16 * 15, 77, 64, 64)`` (2 CFG halves x 8 ``attn2`` heads, 15
frames), with diffusers' SDPA processor, with ``ShortSequenceProcessor``, and (``--compile``) with the
latter under ``torch.compile``. CUDA events, mean of ``--calls`` calls after 3 warm-up calls.

Part 3 (``--kernel``) times TAR whole (both temporal modules) on the fp32 scores the core hands it, at
each layer size of SD 1.5 at 512x512 with guidance (2 x 16 frames, 8 heads, 64x64 down to 8x8 pixels,
77 tokens): the eager modules against the fused Triton kernel of
``attncraft/attention_processors/ctgm_kernels.py`` in each launch configuration (``--configs``) and its
hybrid form (``hybrid_tar``: the per-token steps as library operations, a Triton kernel for the attention
over the frames), with each path's relative error against the same modules in fp32, for fp16 and bf16
modules.

Usage (GPU, under a minute; the compile adds about 20 s): ``python benchmarks/bench_ctgm_attention.py
--device cuda --compile --kernel``. ``--tiny --device cpu`` runs the same code at tiny sizes (a smoke test; numbers mean
nothing).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import torch
import torch.nn.functional as F


def timer(device: torch.device):
    def measure(fn, calls: int) -> float:
        with torch.no_grad():
            for _ in range(3):
                fn()
            if device.type != "cuda":
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                return (time.perf_counter() - t0) * 1e3 / calls
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / calls

    return measure


def explicit_half_softmax(q, k, v, scale):
    """:func:`~attncraft.attention_processors.ctgm.frame_attention` with the softmax in the input dtype."""
    return torch.matmul((torch.matmul(q, k.transpose(-1, -2)) * scale).softmax(dim=-1), v)


def attention_rows(device, dtype, sequences: int, calls: int) -> list[tuple[str, float | None, float | None]]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attncraft.attention_processors.ctgm import frame_attention

    heads, frames, width = 8, 15, 9
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(sequences, heads, frames, width, generator=g).to(device, dtype) for _ in range(3))
    padded = [F.pad(x, (0, 16 - width)) for x in (q, k, v)]
    scale = width**-0.5
    measure = timer(device)
    with torch.no_grad():
        ref = frame_attention(q, k, v, scale)
    rows = []

    def row(name, fn):
        try:
            ms = measure(fn, calls)
            with torch.no_grad():
                out = fn()[..., :width]  # padded heads: their true channels
            diff = float((out - ref).abs().max())
            rows.append((name, ms, diff))
        except RuntimeError:  # this backend takes no such input here
            rows.append((name, None, None))

    backends = [("cuDNN", "CUDNN_ATTENTION"), ("memory-efficient", "EFFICIENT_ATTENTION"),
                ("flash", "FLASH_ATTENTION"), ("math", "MATH")]  # fmt: skip
    for label, name in backends:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        for what, (a, b, c) in (("heads of 9", (q, k, v)), ("heads padded to 16", padded)):
            def sdpa(a=a, b=b, c=c, backend=backend):
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(a, b, c, scale=scale)

            row(f"SDPA, {label}, {what}", sdpa)
    row("explicit, softmax in fp32", lambda: frame_attention(q, k, v, scale))
    row("explicit, softmax in the input dtype", lambda: explicit_half_softmax(q, k, v, scale))
    return rows


def module_rows(device, dtype, clips: int, size: int, calls: int, compile_too: bool) -> list[tuple[str, float, float]]:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from attncraft.attention_processors.ctgm import ShortSequenceProcessor, TemporalModule

    torch.manual_seed(0)
    module = TemporalModule(77).to(device, dtype).eval()
    for p in module.proj_out.parameters():  # a non-zero branch
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(clips * 15, 77, size, size, device=device, dtype=dtype)
    attentions = [a for b in module.transformer_blocks for a in (b.attn1, b.attn2) if a is not None]
    measure = timer(device)
    rows = []
    for a in attentions:
        a.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        ref = module(x, 15)
    rows.append(("diffusers' SDPA processor", measure(lambda: module(x, 15), calls), 0.0))
    for a in attentions:
        a.set_processor(ShortSequenceProcessor(explicit_on_cpu=True))
    with torch.no_grad():
        diff = float((module(x, 15) - ref).abs().max())
    rows.append(("ShortSequenceProcessor (explicit, fp32 softmax)", measure(lambda: module(x, 15), calls), diff))
    if compile_too:
        compiled = torch.compile(module)
        t0 = time.perf_counter()
        with torch.no_grad():
            diff = float((compiled(x, 15) - ref).abs().max())
        seconds = time.perf_counter() - t0
        rows.append((f"the same, torch.compile ({seconds:.0f} s to compile)", measure(lambda: compiled(x, 15), calls), diff))
    return rows


def random_tar(dtype: torch.dtype, device, seed: int = 0) -> list:
    """TAR's two temporal modules over 77 text tokens, every weight random (no identity branch)."""
    from attncraft.attention_processors.ctgm import TemporalModule

    torch.manual_seed(seed)
    modules = [TemporalModule(77) for _ in range(2)]
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if name.endswith("weight") and "norm" in name:
                    param.copy_(1.0 + 0.1 * torch.randn_like(param))
                elif param.ndim > 1:
                    param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
                else:
                    param.copy_(0.02 * torch.randn_like(param))
    return [m.to(device, dtype).eval().requires_grad_(False) for m in modules]


def tar_layer(modules):
    """A bare ``CTGMLayer`` holding TAR's temporal ``modules`` (what ``refine_scores`` needs)."""
    from attncraft.attention_processors.ctgm import CTGMLayer

    out = CTGMLayer.__new__(CTGMLayer)
    torch.nn.Module.__init__(out)
    out.tar = torch.nn.ModuleList(modules)
    return out


def tar_case(reference, size: int, clips: int, frames: int, heads: int, device):
    """fp32 scores ``(clips * frames, heads, size^2, 77)`` (seeded by ``size``), the fp32 ``reference``
    layer's refinement of them, and the norm of its change (the error's denominator)."""
    g = torch.Generator(device="cpu").manual_seed(size)
    scores = (2.0 * torch.randn(clips * frames, heads, size * size, 77, generator=g) + 1.0).to(device)
    with torch.no_grad():
        ref = reference.refine_scores(scores, frames, (size, size), False, "eager")
    return scores, ref, float((ref - scores).norm())


def tar_rows(device, dtypes, clips: int, frames: int, heads: int, sizes, calls: int,
             configs) -> list[tuple[str, str, int, float | None, float | None]]:  # fmt: skip
    """TAR (both temporal modules) on fp32 scores ``(clips * frames, heads, size^2, 77)``, as the core hands
    them at each layer size: the eager modules against the fused kernel (each launch configuration).
    Rows: (path, modules' dtype, size, ms, relative error against the fp32 modules)."""
    from attncraft.attention_processors import ctgm_kernels

    measure = timer(device)
    reference = tar_layer(random_tar(torch.float32, device))
    rows = []
    for dtype in dtypes:
        low = tar_layer(random_tar(dtype, device))
        for size in sizes:
            scores, ref, change = tar_case(reference, size, clips, frames, heads, device)
            name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]

            def error(out):
                return float((out.float() - ref).norm()) / change

            def eager():
                return low.refine_scores(scores, frames, (size, size), False, "eager")

            with torch.no_grad():
                rows.append(("eager modules", name, size, measure(eager, calls), error(eager())))
            problem = ctgm_kernels.fused_tar_problem(low.tar, scores, frames)
            for block_pixels, warps in configs:
                label = f"fused kernel, {block_pixels} pixels x {warps} warps"
                refused = problem or ctgm_kernels.launch_problem(block_pixels, warps, frames)
                if refused is not None:
                    rows.append((f"{label} ({refused})", name, size, None, None))
                    continue

                def fused(bp=block_pixels, w=warps):
                    return ctgm_kernels.fused_tar(low.tar, scores, frames, block_pixels=bp, num_warps=w)

                with torch.no_grad():
                    err = error(fused())
                rows.append((label, name, size, measure(fused, calls), err))
            label = "hybrid: library products, Triton attention over the frames"
            if problem is not None:
                rows.append((f"{label} ({problem})", name, size, None, None))
                continue

            def hybrid():
                return ctgm_kernels.hybrid_tar(low.tar, scores, frames)

            with torch.no_grad():
                err = error(hybrid())
            rows.append((label, name, size, measure(hybrid, calls), err))
    return rows


def main(argv: list[str] | None = None) -> int:
    from attncraft.devices import DTYPES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="also time the module under torch.compile")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU smoke run)")
    p.add_argument("--kernel", action="store_true",
                   help="also time TAR's fused Triton kernel against the eager modules, per layer size and launch configuration")
    p.add_argument("--kernel-only", action="store_true", help="only the --kernel part")
    p.add_argument("--configs", default="2x4,4x4,8x4,8x8",
                   help="the kernel's launch configurations, PIXELSxWARPS, comma-separated (first: the default's)")
    args = p.parse_args(argv)
    args.kernel = args.kernel or args.kernel_only
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    sequences, clips, size = (64, 2, 4) if args.tiny else (32768, 16, 64)

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### TAR's temporal attention ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__}, {args.dtype})")
    print()
    print(f"Command: `python benchmarks/bench_ctgm_attention.py {' '.join(sys.argv[1:] if argv is None else argv)}`")
    print()
    if args.kernel:
        try:
            configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
        except ValueError:
            raise SystemExit(f"error: --configs {args.configs!r} is not PIXELSxWARPS,...; pass e.g. 2x4,4x4") from None
        clips, frames, heads, sizes = (1, 4, 2, (2,)) if args.tiny else (2, 16, 8, (64, 32, 16, 8))
        print(f"TAR, both temporal modules, on fp32 scores ({clips} x {frames} frames, {heads} heads, size^2 pixels, 77 "
              f"tokens) as the core hands them; modules with random weights; mean of {args.calls} calls. Error: "
              "||out - ref|| / ||ref - scores||, ref the same modules in fp32.")
        print()
        print("| path | modules | layer | ms | relative error |")
        print("| --- | --- | ---: | ---: | ---: |")
        dtypes = (torch.float16,) if args.tiny else (torch.float16, torch.bfloat16)
        for name, kind, size, ms, err in tar_rows(device, dtypes, clips, frames, heads, sizes, args.calls, configs):
            print(f"| {name} | {kind} | {size}x{size} | {'-' if ms is None else f'{ms:.3f}'} | "
                  f"{'-' if err is None else f'{err:.2e}'} |")
        print()
        from attncraft.attention_processors.ctgm_kernels import compiled_resources

        resources = compiled_resources()
        if resources:
            print("The module kernels as compiled (read from Triton's handles):")
            print()
            print("| launch | with the next module's statistics | registers a thread | spilled bytes a thread | shared KiB |")
            print("| --- | --- | ---: | ---: | ---: |")
            for r in resources:
                print(f"| {r['block_pixels']} pixels x {r['num_warps']} warps | {'yes' if r['statistics'] else 'no'} | "
                      f"{r['registers']} | {r['spilled_bytes']} | {r['shared_bytes'] / 1024:.1f} |")
            print()
        if args.kernel_only:
            return 0
    print(f"One slice: {sequences:,} sequences x 8 heads x 15 frames x 9 channels; mean of {args.calls} calls.")
    print()
    print("| attention | ms | max abs difference to the explicit fp32-softmax form |")
    print("| --- | ---: | ---: |")
    for name, ms, diff in attention_rows(device, dtype, sequences, args.calls):
        print(f"| {name} | {'no kernel' if ms is None else f'{ms:.2f}'} | {'-' if diff is None else f'{diff:.4f}'} |")
    print()
    print(f"One TAR temporal module, input ({clips} x 15, 77, {size}, {size}); mean of {args.calls} calls.")
    print()
    print("| temporal module | ms | max abs difference to diffusers' processor |")
    print("| --- | ---: | ---: |")
    for name, ms, diff in module_rows(device, dtype, clips, size, args.calls, args.compile):
        print(f"| {name} | {ms:.2f} | {diff:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
