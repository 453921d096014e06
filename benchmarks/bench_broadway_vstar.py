"""Cost of BroadWay and VSTAR TAR on AnimateDiff at SD 1.5 size (random weights), whole runs.

What it measures: diffusers' ``AnimateDiffPipeline`` with an SD 1.5-architecture UNet and the default
``MotionAdapter`` (``UNetMotionModel.from_unet2d``), an SD 1.5-size CLIP text encoder and VAE, all
with **random weights** (the architectures cost the same as trained ones; no trained weights are
reachable from the benchmark machine). 16 frames, 512x512, 25 DDIM steps, CFG 7.5 (batched), fp16,
decoded to frames (``output_type="pt"``, the VAE 4 frames at a time), as a user runs it. Variants, installed with
``apply_techniques`` on the same pipeline and timed in interleaved rounds (order rotated each round):

* ``stock``    - the pipeline as diffusers ships it;
* ``broadway`` - :class:`BroadWay` (AnimateDiff preset: tau 7, alpha 0.6, beta 1.5, first 20 % =
  5 of 25 steps; 18 temporal layers of ``up_blocks.1/2/3``);
* ``vstar``    - :class:`TemporalAttentionRegularization` (preset ``64D4``: level 0, sigma 4; steps
  0..13 = 14 of 25; 10 temporal layers);
* ``both``     - the two on one run.

Reported per variant: whole-run seconds (median over rounds) and ratio to stock (target <= 1.02,
goal 1.01), peak allocated memory during denoising and over the whole run (the VAE decode), and the per-UNet-call time of active and inactive steps (CUDA
events around every UNet call, read after the run) with their ratios to the same steps of stock.
Outside their windows the techniques' layers take the stock fused path, so inactive steps should
cost what stock costs.

Usage (GPU, about 3-4 minutes on one H200 including the build):
``python benchmarks/bench_broadway_vstar.py --device cuda --rounds 3 --json $OUT/bench_broadway_vstar.json``.
``--tiny --device cpu`` runs the same code on a tiny pipeline (a smoke test; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from attncraft.attention_processors import apply_techniques
from attncraft.attention_processors.broadway import BroadWay
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from attncraft.devices import DTYPES

VARIANTS = ("stock", "broadway", "vstar", "both")


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype):
    """AnimateDiffPipeline, random weights: SD 1.5 architecture + default MotionAdapter, or tiny."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            unet = UNet2DConditionModel(
                block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32, norm_num_groups=2,
            )  # fmt: skip
            adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=2,
                                    motion_num_attention_heads=4)  # fmt: skip
            text = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                  num_hidden_layers=2, max_position_embeddings=77)  # fmt: skip
            vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)  # fmt: skip
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5
            adapter = MotionAdapter()
            text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                  num_hidden_layers=12, max_position_embeddings=77, projection_dim=768)  # fmt: skip
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
                                sample_size=512)  # fmt: skip
        motion = UNetMotionModel.from_unet2d(unet, adapter)
        encoder = CLIPTextModel(text)
    pipe = AnimateDiffPipeline(
        vae=vae, text_encoder=encoder, tokenizer=load_clip_tokenizer(), unet=motion, motion_adapter=None,
        scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False, steps_offset=1),
    )  # fmt: skip
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def techniques_for(variant: str, frames: int, tiny: bool) -> list:
    tau = min(7, frames // 2 - 1)  # the preset's 7 at 16 frames; the largest that fits below
    reference = 0 if tiny else 1  # the tiny UNet's up blocks: 0 (half resolution) and 1 (full)
    out = []
    if variant in ("broadway", "both"):
        out.append(BroadWay(tau=tau, reference_block=reference))
    if variant in ("vstar", "both"):
        out.append(TemporalAttentionRegularization("64D4"))
    return out


class CallTimer:
    """Device time of every UNet call of a run (CUDA events, read once the run is over; wall clock on CPU)."""

    def __init__(self, unet, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self._handles = [unet.register_forward_pre_hook(self._start), unet.register_forward_hook(self._stop)]

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _start(self, *_):
        self.marks.append([self._mark(), None])

    def _stop(self, *_):
        self.marks[-1][1] = self._mark()

    def ms_per_call(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in self.marks]
        return [(b - a) * 1000 for a, b in self.marks]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def timed_run(pipe, techniques, args, device) -> dict:
    """One whole run with ``techniques``: seconds, per-UNet-call ms, peak memory (denoising, whole run)."""
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


def active_steps(variant: str, steps: int) -> set[int]:
    """Steps on which the variant's techniques act (the same rules the techniques apply)."""
    active: set[int] = set()
    if variant in ("broadway", "both"):
        active |= set(range(BroadWay().active_steps(steps)))
    if variant in ("vstar", "both"):
        active |= set(range(min(steps, TemporalAttentionRegularization().last_active_step(steps) + 1)))
    return active


def summarise(results: dict[str, list[dict]], steps: int) -> dict[str, dict]:
    stock_calls = [statistics.median(r["calls_ms"][i] for r in results["stock"]) for i in range(steps)]
    stock_seconds = statistics.median(r["seconds"] for r in results["stock"])
    summary = {}
    for variant, runs in results.items():
        calls = [statistics.median(r["calls_ms"][i] for r in runs) for i in range(steps)]
        active = sorted(active_steps(variant, steps))
        inactive = [i for i in range(steps) if i not in active]

        def mean(values):
            return statistics.fmean(values) if values else None

        def ratio(idx):
            return sum(calls[i] for i in idx) / sum(stock_calls[i] for i in idx) if idx else None

        seconds = statistics.median(r["seconds"] for r in runs)
        peaks = [r["peak_gib"] for r in runs if r["peak_gib"] is not None]
        loop_peaks = [r["loop_peak_gib"] for r in runs if r["loop_peak_gib"] is not None]
        summary[variant] = {
            "seconds": seconds, "min_seconds": min(r["seconds"] for r in runs), "ratio": seconds / stock_seconds,
            "peak_gib": max(peaks) if peaks else None, "loop_peak_gib": max(loop_peaks) if loop_peaks else None,
            "active_steps": len(active),
            "active_ms": mean([calls[i] for i in active]), "active_ratio": ratio(active),
            "inactive_ms": mean([calls[i] for i in inactive]), "inactive_ratio": ratio(inactive),
            "rounds_seconds": [r["seconds"] for r in runs],
        }  # fmt: skip
    return summary


def fmt(value, pattern="{:.3f}") -> str:
    return "-" if value is None else pattern.format(value)


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a whole-run AnimateDiff cost benchmark (size, steps, rounds, tiny smoke mode)."""
    parser = argparse.ArgumentParser(description=description)
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
    return parser


def interleaved(pipe, variants: Sequence[str], techniques_of, args, device) -> dict[str, list[dict]]:
    """``args.warmup`` untimed rounds, then ``args.rounds`` timed ones, every variant once per round in
    an order rotated each round; ``techniques_of(variant)`` gives the techniques of a run."""
    results: dict[str, list[dict]] = {v: [] for v in variants}
    variants = tuple(variants)
    with torch.inference_mode():
        for _ in range(args.warmup):
            for variant in variants:
                timed_run(pipe, techniques_of(variant), args, device)
        for r in range(args.rounds):
            for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
                results[variant].append(timed_run(pipe, techniques_of(variant), args, device))
    return results


def main(argv: list[str] | None = None) -> int:
    args = run_arguments(__doc__.split("\n")[0]).parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    built = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, dtype)
    built = time.perf_counter() - built
    results = interleaved(pipe, VARIANTS, lambda v: techniques_for(v, args.frames, args.tiny), args, device)
    summary = summarise(results, args.steps)

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### BroadWay and VSTAR cost ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"Pipeline: AnimateDiffPipeline, {'tiny' if args.tiny else 'SD 1.5 UNet + default MotionAdapter, random weights'}, "
          f"{args.frames} frames, {args.size}x{args.size}, {args.steps} DDIM steps, CFG 7.5 (batched), {args.dtype}, "
          f"decoded {args.decode_chunk} frames at a time; median of {args.rounds} interleaved rounds after {args.warmup} warm-up round(s); build {built:.0f} s.  ")
    bw_steps, tar_last = BroadWay().active_steps(args.steps), TemporalAttentionRegularization().last_active_step(args.steps)
    print("Per-call times: CUDA events around each UNet call (wall clock on CPU), median over rounds per step; active = "
          f"steps where the variant's techniques act (BroadWay 0..{bw_steps - 1}, VSTAR 0..{tar_last} of {args.steps}).")
    print()
    print("| variant | run s (median) | min | ratio to stock | peak GiB (denoising) | peak GiB (run) | active steps | ms / call, active | ratio, active | ms / call, inactive | ratio, inactive |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant in VARIANTS:
        s = summary[variant]
        print(f"| {variant} | {s['seconds']:.3f} | {s['min_seconds']:.3f} | {s['ratio']:.4f} | "
              f"{fmt(s['loop_peak_gib'], '{:.2f}')} | {fmt(s['peak_gib'], '{:.2f}')} | "
              f"{s['active_steps']} | {fmt(s['active_ms'], '{:.2f}')} | {fmt(s['active_ratio'], '{:.4f}')} | "
              f"{fmt(s['inactive_ms'], '{:.2f}')} | {fmt(s['inactive_ratio'], '{:.4f}')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "runs": results, "device": hw}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
