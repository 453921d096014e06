"""Where CTGM's TAR spends its time: a profiled short run of the ``bench_ctgm.py`` pipeline.

``bench_ctgm.py`` measures TAR-only at 3.3-3.5x stock on an H200 although TAR adds 8.7 % of a UNet
call's FLOPs (``benchmarks/RESULTS.md``), so the time goes somewhere other than arithmetic. This script
builds the same pipeline (SD 1.5 UNet + default MotionAdapter, random weights, 16 frames, 512x512,
fp16, CFG batched), warms it, and profiles a short run (2 steps, latent output) of stock and of each variant with
``torch.profiler`` (CUDA activity on a GPU), printing per variant the operators that take the most
device time (self time, top ``--top``) and the call's total.

Usage (GPU, about a minute after the build): ``python benchmarks/profile_ctgm.py --device cuda``.
``--tiny --device cpu`` runs the same code on a tiny pipeline (a smoke test; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from attncraft.attention_processors import apply_techniques
from attncraft.devices import DTYPES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_broadway_vstar import build_pipeline  # noqa: E402
from bench_ctgm import MODES, random_ctgm  # noqa: E402


def profile_run(pipe, frames: int, size: int, steps: int, device, top: int) -> tuple[float, str]:
    """Profile one pipeline call of ``steps`` steps (latent output) after a warm-up call."""
    from torch.profiler import ProfilerActivity, profile

    def call():
        return pipe("a cat walking", num_frames=frames, height=size, width=size, num_inference_steps=steps,
                    guidance_scale=7.5, output_type="latent", generator=torch.Generator("cpu").manual_seed(0))

    with torch.no_grad():
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            call()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    total_us = sum(getattr(e, key, 0) or 0 for e in events)
    return total_us / 1e3, events.table(sort_by=key, row_limit=top, max_name_column_width=60)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--variants", default="tar,tar_part", help="comma-separated, from " + ",".join(MODES))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    frames = args.frames or (4 if args.tiny else 16)
    size = args.size or (64 if args.tiny else 512)

    pipe = build_pipeline(args.tiny, device, dtype)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### A profiled short run: stock and CTGM ({hw}, torch {torch.__version__}, {args.dtype}, "
          f"{frames} frames, {size}x{size}, CFG, {args.steps} steps)\n")
    print(f"Command: `python benchmarks/profile_ctgm.py {' '.join(sys.argv[1:] if argv is None else argv)}`\n")
    for variant in ["stock", *[v for v in args.variants.split(",") if v]]:
        techniques = []
        if variant != "stock":
            mode, sites = MODES[variant]
            techniques = [random_ctgm(pipe, mode, device, dtype, sites=sites).technique()]
        with apply_techniques(pipe, *techniques):
            total_ms, table = profile_run(pipe, frames, size, args.steps, device, args.top)
        print(f"#### {variant}: {total_ms:.1f} ms of {'device' if device.type == 'cuda' else 'CPU'} self time\n")
        print("```\n" + table + "\n```\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
