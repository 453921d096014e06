"""Cost of CTGM on AnimateDiff at SD 1.5 size (random weights), whole runs.

What it measures: diffusers' ``AnimateDiffPipeline`` with an SD 1.5-architecture UNet and the default
``MotionAdapter``, an SD 1.5-size CLIP text encoder and VAE (the pipeline of
``benchmarks/bench_broadway_vstar.py``, imported), all with **random weights**, and CTGM with random
weights too (every zero-initialised output projection drawn at random, so no part is a no-op); the
architectures cost the same as trained ones. 16 frames, 512x512, 25 DDIM steps, CFG 7.5 (batched),
fp16, decoded to frames, as a user runs it. Variants, installed with ``apply_techniques`` on the same
pipeline and timed in interleaved rounds (order rotated each round):

* ``stock`` - the pipeline as diffusers ships it;
* ``tar``   - CTGM in TAR-only mode on the 16 cross-attention sites (3.72 M parameters): those layers
  take the explicit attention path (scores needed) plus two temporal modules over the 77 text
  tokens; target: within 5 % of stock;
* ``all``   - CTGM ``all`` (TII + TAR + TFB) on the 16 sites (992.5 M parameters): the latent
  refinement alone is two extra motion modules per site.

Reported per variant: whole-run seconds (median over rounds) and ratio to stock, the median UNet call
(CUDA events around every call, read after the run) and its ratio, CTGM's parameters, and the peak
allocated memory during denoising and over the whole run.

Usage (GPU, about 2 minutes on one H200 including the build):
``python benchmarks/bench_ctgm.py --device cuda --rounds 3 --json $OUT/bench_ctgm.json``.
``--tiny --device cpu`` runs the same code on a tiny pipeline (a smoke test; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attncraft.attention_processors import apply_techniques
from attncraft.attention_processors.ctgm import CTGM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_broadway_vstar import CallTimer, build_pipeline  # noqa: E402  (the same pipeline and per-call timer)

VARIANTS = ("stock", "tar", "all")


def random_ctgm(pipe, mode: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> CTGM:
    """CTGM for ``pipe`` built on ``device``, every output projection random (nothing is a no-op)."""
    with torch.device(device):
        ctgm = CTGM.for_pipeline(pipe, mode=mode)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in ctgm.named_parameters():
            if ".proj_out." in name:
                param.copy_(torch.randn(param.shape, generator=g, device=device) * 0.02)
    return ctgm.to(dtype=dtype).eval().requires_grad_(False)


def one_run(pipe, techniques, args, device) -> dict:
    timer = CallTimer(pipe.unet, device)
    cuda = device.type == "cuda"
    loop_peak = [None]

    def after_step(pipeline, step, timestep, kwargs):
        if cuda and step == args.steps - 1:  # an allocator statistic: no device sync
            loop_peak[0] = torch.cuda.max_memory_allocated() / 2**30
        return kwargs

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with apply_techniques(pipe, *techniques):
        generator = torch.Generator(device=device).manual_seed(0)
        out = pipe("a red circle moves right, then turns blue", num_frames=args.frames, height=args.size,
                   width=args.size, num_inference_steps=args.steps, guidance_scale=7.5, generator=generator,
                   output_type="pt", decode_chunk_size=args.decode_chunk, callback_on_step_end=after_step).frames  # fmt: skip
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    calls = timer.ms_per_call()
    timer.close()
    assert out.shape[1] == args.frames and len(calls) == args.steps
    return {"seconds": seconds, "calls_ms": calls, "loop_peak_gib": loop_peak[0],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}  # fmt: skip


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    def median_call(runs):
        return statistics.median(ms for r in runs for ms in r["calls_ms"])

    stock_s = statistics.median(r["seconds"] for r in results["stock"])
    stock_call = median_call(results["stock"])
    out = {}
    for variant, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        call = median_call(runs)
        peaks = [r["peak_gib"] for r in runs if r["peak_gib"] is not None]
        loop = [r["loop_peak_gib"] for r in runs if r["loop_peak_gib"] is not None]
        out[variant] = {"seconds": seconds, "ratio": seconds / stock_s, "ms_per_call": call,
                        "call_ratio": call / stock_call, "peak_gib": max(peaks) if peaks else None,
                        "loop_peak_gib": max(loop) if loop else None,
                        "rounds_seconds": [r["seconds"] for r in runs]}  # fmt: skip
    return out


def fmt(value, pattern="{:.2f}") -> str:
    return "-" if value is None else pattern.format(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of every variant, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of every variant first")
    parser.add_argument("--decode-chunk", type=int, default=4, help="frames the VAE decodes at once")
    parser.add_argument("--tiny", action="store_true", help="tiny pipeline for a CPU smoke run")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]

    built = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, dtype)
    ctgms = {mode: random_ctgm(pipe, mode, device, dtype) for mode in ("tar", "all")}
    built = time.perf_counter() - built
    params = {mode: c.parameter_counts()["total"] for mode, c in ctgms.items()}

    def techniques(variant):
        return [] if variant == "stock" else [ctgms[variant].technique()]

    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for variant in VARIANTS:
                one_run(pipe, techniques(variant), args, device)
        for r in range(args.rounds):
            for variant in VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]:
                results[variant].append(one_run(pipe, techniques(variant), args, device))
    summary = summarise(results)

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### CTGM cost ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python {' '.join(['benchmarks/bench_ctgm.py', *(sys.argv[1:] if argv is None else argv)])}`  ")
    print(f"Pipeline: AnimateDiffPipeline, {'tiny' if args.tiny else 'SD 1.5 UNet + default MotionAdapter, random weights'}, "
          f"{args.frames} frames, {args.size}x{args.size}, {args.steps} DDIM steps, CFG 7.5 (batched), {args.dtype}, "
          f"decoded {args.decode_chunk} frames at a time; CTGM with random weights on all "
          f"{len(ctgms['tar'].sites)} cross-attention sites; median of {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up round(s); build {built:.0f} s.  ")
    print("Per-call times: CUDA events around each UNet call (wall clock on CPU), median over every call of every round.")
    print()
    print("| variant | CTGM parameters | run s (median) | ratio to stock | ms / UNet call | ratio | peak GiB (denoising) | peak GiB (run) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in VARIANTS:
        s = summary[variant]
        count = f"{params[variant] / 1e6:.2f} M" if variant in params else "-"
        print(f"| {variant} | {count} | {s['seconds']:.3f} | {s['ratio']:.4f} | {s['ms_per_call']:.2f} | "
              f"{s['call_ratio']:.4f} | {fmt(s['loop_peak_gib'])} | {fmt(s['peak_gib'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": results, "device": hw, "parameters": params}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
