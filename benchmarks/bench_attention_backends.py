"""SDPA against xformers on the layers no technique reads: SD 1.5 and AnimateDiff sizes (random weights).

What it measures, per model (one UNet call = one denoising step with batched CFG):

* ``sd15`` - SD 1.5 UNet, batch 2, 512x512 (64x64 latent);
* ``animatediff`` - SD 1.5 ``UNetMotionModel`` with the default ``MotionAdapter``, batch 2, 16 frames,
  512x512 (spatial layers see batch 32, temporal layers batch 8192 of 16 tokens);

and per backend, the core processor on every layer (no technique), running

* ``sdpa`` - PyTorch's ``scaled_dot_product_attention`` (what the stock processor runs);
* ``xformers`` - ``xformers.ops.memory_efficient_attention``;
* ``diffusers-xformers`` - diffusers' own ``enable_xformers_memory_efficient_attention`` (reference).

The core processor's xformers calls run in batch slices within the kernels' CUDA grid limit
(``attncraft.attention_processors.backends.MAX_KERNEL_BATCH``): the AnimateDiff temporal layers have
2 * 64 * 64 sequences * 8 heads = 65536 > 65535, where xformers' flash kernel fails with "CUDA error:
invalid argument" (SDPA's kernels hold the heads on a grid dimension of their own and take it whole). diffusers' own xformers processor does not slice; a variant that fails is reported
as such in the table instead of stopping the run. (The slicing is verified on CPU; the GPU numbers in
``benchmarks/RESULTS.md`` predate it.)

Variants are timed in rotated, interleaved rounds of ``--steps`` UNet calls with CUDA events after
warm-up; the median round and the peak memory of each are reported, plus the largest difference of
the xformers outputs from SDPA's on the same input. Without a usable xformers (no CUDA, or a build
whose kernels cannot load) only ``sdpa`` runs and the table says why.

The weights are random: the architectures cost the same with random weights as with real ones.

Usage: ``python benchmarks/bench_attention_backends.py --device cuda --steps 10 --rounds 6``
(``--tiny --device cpu --dtype fp32`` for a smoke run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from attncraft.attention_processors import get_manager
from attncraft.attention_processors.backends import xformers_problem
from attncraft.devices import DTYPES


def build(model: str, tiny: bool) -> tuple[torch.nn.Module, dict[str, int]]:
    """The UNet and its input sizes: latent side, context width, frames (0 for images)."""
    torch.manual_seed(0)
    if tiny:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=8,
        )
        if model == "animatediff":
            adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                                    motion_num_attention_heads=4)
            return UNetMotionModel.from_unet2d(unet, adapter), {"latent": 8, "ctx": 32, "frames": 4}
        return unet, {"latent": 8, "ctx": 32, "frames": 0}
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.x architecture
    if model == "animatediff":
        return UNetMotionModel.from_unet2d(unet, MotionAdapter()), {"latent": 64, "ctx": 768, "frames": 16}
    return unet, {"latent": 64, "ctx": 768, "frames": 0}


def make_inputs(sizes: dict[str, int], device, dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    lat, frames = sizes["latent"], sizes["frames"]
    shape = (2, 4, frames, lat, lat) if frames else (2, 4, lat, lat)
    ehs = torch.randn(2, 77, sizes["ctx"], device=device, dtype=dtype, generator=g)
    if frames:  # the motion UNet takes one text embedding per frame, (batch*frames, tokens, dim), as the pipeline passes it
        ehs = ehs.repeat_interleave(frames, dim=0)
    return {"sample": torch.randn(*shape, device=device, dtype=dtype, generator=g), "ehs": ehs}


def calls(unet, inputs, steps: int):
    out = None
    for t in torch.linspace(999, 0, steps).round().long().tolist():
        out = unet(inputs["sample"], t, encoder_hidden_states=inputs["ehs"]).sample
    return out


def timed(unet, inputs, steps: int, device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        calls(unet, inputs, steps)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps
    t0 = time.perf_counter()
    calls(unet, inputs, steps)
    return (time.perf_counter() - t0) * 1000 / steps


def installer(unet, variant: str):
    """A function that puts ``variant``'s processors on every layer of ``unet``."""
    manager = get_manager(unet)

    def use() -> None:
        manager.remove_all()
        unet.set_attn_processor(AttnProcessor2_0())
        if variant == "diffusers-xformers":
            unet.enable_xformers_memory_efficient_attention()
        else:
            manager.set_backend(variant)
            manager.install_core()

    return use


def bench_model(model: str, args, device, dtype, variants: list[str]) -> dict:
    unet, sizes = build(model, args.tiny)
    unet = unet.to(device=device, dtype=dtype).eval()
    inputs = make_inputs(sizes, device, dtype)
    uses = {v: installer(unet, v) for v in variants}
    result: dict = {"sizes": sizes, "processors": len(unet.attn_processors), "variants": {}, "failed": {}}
    with torch.inference_mode():
        outputs = {}
        for v in list(variants):
            try:
                uses[v]()
                outputs[v] = calls(unet, inputs, 1).float()
            except Exception as exc:  # noqa: BLE001 - a reference variant that cannot run this size is reported
                if v == "sdpa":
                    raise
                result["failed"][v] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                variants = [u for u in variants if u != v]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                continue
            if args.warmup:  # --warmup 0: no untimed calls
                timed(unet, inputs, args.warmup, device)
        rounds = {v: [] for v in variants}
        peaks = {}
        for r in range(args.rounds):
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                uses[v]()
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rounds[v].append(timed(unet, inputs, args.steps, device))
                if device.type == "cuda":
                    peaks[v] = max(peaks.get(v, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    for v in variants:
        result["variants"][v] = {
            "ms_per_call": statistics.median(rounds[v]), "min_ms": min(rounds[v]), "rounds": rounds[v],
            "peak_gib": peaks.get(v), "max_abs_diff_to_sdpa": float((outputs[v] - outputs["sdpa"]).abs().max()),
        }
    del unet
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--models", default="sd15,animatediff")
    parser.add_argument("--steps", type=int, default=10, help="UNet calls per timed round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3, help="untimed UNet calls per variant first (0: none)")
    parser.add_argument("--tiny", action="store_true", help="tiny UNets for a CPU smoke run")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    problem = xformers_problem() if device.type == "cuda" else "xformers has no CPU kernels"
    variants = ["sdpa"] + (["xformers", "diffusers-xformers"] if problem is None else [])
    results = {m: bench_model(m, args, device, dtype, variants) for m in args.models.split(",")}

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    try:
        import xformers

        xf = f"xformers {xformers.__version__}"
    except Exception:  # noqa: BLE001
        xf = "xformers not installed"
    print(f"### Attention backends: SDPA vs xformers ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__}, {xf})")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"{'Tiny UNets' if args.tiny else 'SD 1.5 architectures with random weights'}, {args.dtype}, batch 2 (CFG), "
          f"{args.steps} UNet calls per round, median of {args.rounds} interleaved rounds; every layer runs the core "
          "processor with no technique.  ")
    if problem is not None:
        print(f"xformers not benchmarked: {problem}.  ")
    print()
    print("| model | backend | ms / UNet call (median) | min | ratio to sdpa | peak GiB | max abs diff to sdpa |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for model, res in results.items():
        base = res["variants"]["sdpa"]["ms_per_call"]
        for v, r in res["variants"].items():
            peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            print(f"| {model} | {v} | {r['ms_per_call']:.2f} | {r['min_ms']:.2f} | {r['ms_per_call'] / base:.3f} | "
                  f"{peak} | {r['max_abs_diff_to_sdpa']:.2e} |")
        for v, reason in res["failed"].items():
            print(f"| {model} | {v} | fails: {reason.replace('|', '/')} | - | - | - | - |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"xformers_problem": problem, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
