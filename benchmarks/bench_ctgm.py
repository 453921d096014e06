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
* ``tar_part`` - TAR-only on the reference's 7 ``part_module`` sites (the Shapes CTGM's choice): on 16
  sites TAR is 8.7 % of the UNet call's FLOPs at this size, on these 7 3.5 % (``benchmarks/RESULTS.md``),
  so this is where the 5 % can be met;
* ``all``   - CTGM ``all`` (TII + TAR + TFB) on the 16 sites (992.5 M parameters): the latent
  refinement alone is two extra motion modules per site;
* ``tar_fused``, ``tar_part_fused`` - ``tar`` and ``tar_part`` with ``tar_kernel="auto"`` (the default,
  which ``all`` runs too): TAR's temporal modules as the fused Triton kernel of
  ``attncraft/attention_processors/ctgm_kernels.py``; ``tar`` and ``tar_part`` run them as PyTorch
  modules (``tar_kernel="eager"``).

Reported per variant: whole-run seconds (median over rounds) and ratio to stock, the median UNet call
(CUDA events around every call, read after the run) and its ratio, CTGM's parameters, and the peak
allocated memory during denoising and over the whole run.

Usage (GPU, about 2 minutes on one H200 including the build):
``python benchmarks/bench_ctgm.py --device cuda --rounds 3 --json $OUT/bench_ctgm.json``.
``--tiny --device cpu`` runs the same code on a tiny pipeline (a smoke test; numbers mean nothing).
"""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from attncraft.attention_processors.ctgm import CTGM
from attncraft.devices import DTYPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_broadway_vstar import build_pipeline, fmt, interleaved, run_arguments  # noqa: E402  (shared pieces)

VARIANTS = ("stock", "tar", "tar_fused", "tar_part", "tar_part_fused", "all")
MODES = {"tar": ("tar", "all"), "tar_part": ("tar", "part"), "all": ("all", "all")}  # CTGM: (mode, sites)
FUSED = {"tar_fused": "tar", "tar_part_fused": "tar_part"}  # variant: the CTGM it runs with tar_kernel="auto"


def techniques_of(ctgms: dict, variant: str) -> list:
    if variant == "stock":
        return []
    if variant in FUSED:
        return [ctgms[FUSED[variant]].technique(tar_kernel="auto")]
    if variant in ("tar", "tar_part"):
        return [ctgms[variant].technique(tar_kernel="eager")]
    return [ctgms[variant].technique()]


def random_ctgm(pipe, mode: str, device: torch.device, dtype: torch.dtype, seed: int = 0, sites: str = "all") -> CTGM:
    """CTGM for ``pipe`` built on ``device``, every output projection random (nothing is a no-op)."""
    with torch.device(device):
        ctgm = CTGM.for_pipeline(pipe, mode=mode, sites=sites)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in ctgm.named_parameters():
            if ".proj_out." in name:
                param.copy_(torch.randn(param.shape, generator=g, device=device) * 0.02)
    return ctgm.to(dtype=dtype).eval().requires_grad_(False)


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


def main(argv: list[str] | None = None) -> int:
    parser = run_arguments(__doc__.split("\n")[0])
    parser.add_argument("--tar-config", default=None, metavar="PIXELSxWARPS",
                        help="launch configuration of TAR's fused kernel (default: ctgm_kernels' own)")
    args = parser.parse_args(argv)
    if args.tar_config:
        from attncraft.attention_processors import ctgm_kernels

        ctgm_kernels.DEFAULT_BLOCK_PIXELS, ctgm_kernels.DEFAULT_WARPS = (int(v) for v in args.tar_config.split("x"))
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    built = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, dtype)
    ctgms = {v: random_ctgm(pipe, mode, device, dtype, sites=sites) for v, (mode, sites) in MODES.items()}
    built = time.perf_counter() - built
    params = {mode: c.parameter_counts()["total"] for mode, c in ctgms.items()}
    results = interleaved(pipe, VARIANTS, lambda v: techniques_of(ctgms, v), args, device)
    summary = summarise(results)

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### CTGM cost ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python {' '.join(['benchmarks/bench_ctgm.py', *(sys.argv[1:] if argv is None else argv)])}`  ")
    print(f"Pipeline: AnimateDiffPipeline, {'tiny' if args.tiny else 'SD 1.5 UNet + default MotionAdapter, random weights'}, "
          f"{args.frames} frames, {args.size}x{args.size}, {args.steps} DDIM steps, CFG 7.5 (batched), {args.dtype}, "
          f"decoded {args.decode_chunk} frames at a time; CTGM with random weights on all "
          f"{len(ctgms['tar'].sites)} cross-attention sites ({len(ctgms['tar_part'].sites)} for tar_part); median of {args.rounds} interleaved rounds after "
          f"{args.warmup} warm-up round(s); build {built:.0f} s.  ")
    print("Per-call times: CUDA events around each UNet call (wall clock on CPU), median over every call of every round.")
    print()
    print("| variant | CTGM parameters | run s (median) | ratio to stock | ms / UNet call | ratio | peak GiB (denoising) | peak GiB (run) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in VARIANTS:
        s = summary[variant]
        count = f"{params[FUSED.get(variant, variant)] / 1e6:.2f} M" if FUSED.get(variant, variant) in params else "-"
        print(f"| {variant} | {count} | {s['seconds']:.3f} | {s['ratio']:.4f} | {s['ms_per_call']:.2f} | "
              f"{s['call_ratio']:.4f} | {fmt(s['loop_peak_gib'], '{:.2f}')} | {fmt(s['peak_gib'], '{:.2f}')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": results, "device": hw, "parameters": params}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
