"""Cost of per-frame prompt schedules: TextToVideoPipeline with a 4-state schedule vs stock AnimateDiff.

What it measures: AnimateDiff at SD 1.5 size (``UNet2DConditionModel`` with SD 1.x defaults and the
default ``MotionAdapter``, CLIP ViT-L/14-size text encoder, SD VAE; **random weights**: the cost is the
architecture's, and no trained weights are reachable from the benchmark machines), 16 frames,
512x512, 25 DDIM steps, classifier-free guidance 7.5 (one batched UNet call per step), batch 1:

* ``stock``    - diffusers' ``AnimateDiffPipeline`` with one prompt;
* ``schedule`` - :class:`~attncraft.pipelines.text_to_video.TextToVideoPipeline` (the same components)
  with a 4-state schedule spread over the 16 frames (target: at most 1 % slower per step).

Both run with ``output_type="latent"`` (the VAE decode is the same for both and not part of the
question). Per run: the time per denoising step (CUDA events at the first and last step callbacks),
the whole call (prompt encoding included: the schedule encodes 4 states + the negative once, stock 1 +
1) and the peak memory. Variants alternate in rounds after a warm-up run each; medians are reported.

Usage: ``python benchmarks/bench_text_to_video.py --device cuda --rounds 4`` (about 2 minutes on an
H200); ``--tiny --device cpu`` for a quick local check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import torch

STATES = [
    "a red car parked on a street, morning light",
    "a red car starts driving down the street",
    "a red car drives fast past the houses",
    "a red car disappears at the end of the street, evening light",
]
SINGLE = STATES[0]


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    """(stock AnimateDiffPipeline, TextToVideoPipeline sharing its components)."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.loading import pipeline_as
    from attncraft.pipelines.text_to_video import TextToVideoPipeline
    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            unet = UNet2DConditionModel(
                block_out_channels=(32, 64), layers_per_block=1, sample_size=16, cross_attention_dim=32,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                norm_num_groups=8,
            )
            adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=8,
                                    motion_num_attention_heads=4)
            text = CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                                  hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
            vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5
            adapter = MotionAdapter()  # AnimateDiff v1.5-2 layout
            text = CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                                  hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                  projection_dim=768)  # CLIP ViT-L/14 text tower
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, sample_size=512)
        text_encoder = CLIPTextModel(text)
        motion = UNetMotionModel.from_unet2d(unet, adapter)
    del unet
    stock = AnimateDiffPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=motion, motion_adapter=None,
        scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False, steps_offset=1),
    ).to(device=device, dtype=dtype)
    stock.set_progress_bar_config(disable=True)
    # not TextToVideoPipeline.from_pipe(stock): without a dtype, diffusers' from_pipe casts the shared modules
    # (and so stock's) to float32 in place
    ours = pipeline_as(TextToVideoPipeline, stock)
    assert ours.unet is stock.unet and ours.unet.dtype == dtype
    ours.set_progress_bar_config(disable=True)
    return stock, ours


class StepClock:
    """Device-side time between the first and the last step callbacks of a run."""

    def __init__(self, device: torch.device):
        self.device = device
        self.marks: list = []

    def __call__(self, pipe, step, timestep, kwargs):
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        return kwargs

    def ms_per_step(self) -> float:
        if len(self.marks) < 2:
            return float("nan")
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return self.marks[0].elapsed_time(self.marks[-1]) / (len(self.marks) - 1)
        return (self.marks[-1] - self.marks[0]) * 1000 / (len(self.marks) - 1)


def run_once(variant: str, stock, ours, args, device) -> dict[str, float]:
    clock = StepClock(device)
    kw = dict(num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
              guidance_scale=7.5, output_type="latent", callback_on_step_end=clock,
              generator=torch.Generator(device=device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if variant == "stock":
        out = stock(SINGLE, **kw)
    else:
        out = ours({int(f): s for f, s in zip(anchors(args.frames), STATES)}, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize()
    whole = time.perf_counter() - t0
    assert torch.isfinite(out.frames).all()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"ms_per_step": clock.ms_per_step(), "call_s": whole, "peak_gib": peak}


def anchors(frames: int) -> list[int]:
    from attncraft.video.prompts import equally_spaced_anchors

    return equally_spaced_anchors(frames, len(STATES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke check)")
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    args = p.parse_args(argv)
    args.frames = args.frames or (8 if args.tiny else 16)
    args.size = args.size or (32 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 25)
    device = torch.device(args.device)
    from attncraft.devices import DTYPES

    dtype = DTYPES[args.dtype]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    stock, ours = build(args.tiny, device, dtype)

    seen = []
    hook = ours.unet.register_forward_pre_hook(lambda m, a, k: seen.append(tuple(k["encoder_hidden_states"].shape)),
                                               with_kwargs=True)
    variants = ("stock", "schedule")
    results = {v: [] for v in variants}
    for v in variants:  # warm-up, not timed
        run_once(v, stock, ours, args, device)
    hook.remove()
    width = ours.text_encoder.config.hidden_size
    assert seen[-1] == (2 * args.frames, ours.tokenizer.model_max_length, width), seen[-1]
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            results[v].append(run_once(v, stock, ours, args, device))

    def med(v, key):
        return statistics.median(x[key] for x in results[v])

    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### Text-to-video: per-frame prompt schedule vs stock AnimateDiff ({datetime.date.today().isoformat()}, "
          f"{hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"Models: {'tiny' if args.tiny else 'AnimateDiff at SD 1.5 size (UNet + default MotionAdapter, CLIP ViT-L text, SD VAE), random weights'}; "
          f"{args.frames} frames, {args.size}x{args.size}, {args.steps} DDIM steps, CFG 7.5, {args.dtype}, batch 1, "
          f"{args.rounds} interleaved rounds after one warm-up run each; schedule: {len(STATES)} states at frames "
          f"{anchors(args.frames)}.")
    print()
    print("| variant | ms / step (median) | min | ratio to stock (median) | whole call s (latent out) | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = med("stock", "ms_per_step")
    for v in variants:
        ms = med(v, "ms_per_step")
        low = min(x["ms_per_step"] for x in results[v])
        peak = max(x["peak_gib"] for x in results[v])
        print(f"| {v} | {ms:.2f} | {low:.2f} | {ms / base:.4f} | {med(v, 'call_s'):.3f} | {peak:.2f} |")
    print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
