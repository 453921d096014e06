"""FancyVideo at full size with random weights: conversion, strict loading, parameter counts and one
text-to-video run at the released settings' shapes (768 px, 61 frames = 16 latent frames).

No real FancyVideo weights are reachable, so everything is random (said in the output): a synthetic
DeepSpeed checkpoint with the released key names and shapes (motion modules, 9-channel ``conv_in``,
fps/motion embeddings, and the SD 1.5 spatial UNet under ``module``) is written, converted with
``attncraft.fancyvideo.convert`` (strict), loaded back strictly, and run through
:class:`~attncraft.pipelines.fancyvideo.FancyVideoPipeline` on a random SD 1.5 base with a random
CV-VAE of the released configuration, for a few steps of each stage. It checks the numbers of the
spec (453.21 M motion parameters, 0.82 M embedding parameters, 14,400 extra conv_in weights) and the
output shape, and prints a Markdown block for ``benchmarks/RESULTS.md``.

    python3 tools/gpu/fancyvideo_full_size.py --out $OUT            # one H200: about 1-2 minutes
    python3 tools/gpu/fancyvideo_full_size.py --tiny --device cpu    # CPU dry run at tiny size

Writes ``$OUT/fancyvideo_full_size.md`` and ``$OUT/fancyvideo_full_size.json``; exits non-zero if a
check fails. The synthetic checkpoint (about 2.6 GB at full size, fp16) lives in ``--work`` and is
removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sd15_parts(tiny: bool, device, dtype):
    """A random base (UNet, text encoder, SD VAE) of SD 1.5's architecture (or a tiny one)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=4,
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                        norm_num_groups=8, attention_head_dim=8)
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                                num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77))
            vae = AutoencoderKL(block_out_channels=[32] * 4, down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, norm_num_groups=8,
                                latent_channels=4)
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # the SD 1.5 layout
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77))
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                                sample_size=512)
    return unet.to(dtype), text.to(dtype), vae.to(dtype), load_clip_tokenizer()


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU dry run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=("fp16", "bf16", "fp32"),
                        help="bf16 by default: random weights can overflow fp16")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps of each stage")
    parser.add_argument("--out", default="outputs/fancyvideo-full-size")
    parser.add_argument("--work", default="/tmp/fancyvideo-full-size")
    args = parser.parse_args(argv)

    from attncraft.fancyvideo.conditioning import first_frame_scheduler, video_scheduler
    from attncraft.fancyvideo.convert import convert_fancyvideo, load_fancyvideo_adapter
    from attncraft.fancyvideo.synthetic import build_synthetic_checkpoint
    from attncraft.fancyvideo.vae import CVVAEModel
    from attncraft.pipelines.fancyvideo import FancyVideoPipeline

    device = torch.device(args.device)
    from attncraft.devices import DTYPES

    dtype = DTYPES[args.dtype]
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = "tiny" if args.tiny else "full"
    times, checks, facts = {}, {}, {}
    t0 = time.perf_counter()
    try:
        unet2d, text, image_vae, tokenizer = sd15_parts(args.tiny, "cpu", torch.float32)
        times["build base (CPU)"] = time.perf_counter() - t0
        t = time.perf_counter()
        ckpt = work / "mp_rank_00_model_states.pt"
        build_synthetic_checkpoint(ckpt, size=size, seed=0, dtype=torch.float16, spatial_unet=unet2d)
        facts["checkpoint bytes"] = ckpt.stat().st_size
        times["write synthetic checkpoint"] = time.perf_counter() - t
        t = time.perf_counter()
        convert_fancyvideo(ckpt, work / "converted", trust_pickle=True)
        times["convert (strict)"] = time.perf_counter() - t
        t = time.perf_counter()
        parts = load_fancyvideo_adapter(work / "converted")
        times["load converted folder (strict)"] = time.perf_counter() - t
        ckpt.unlink()

        motion = count(parts.adapter) - parts.adapter.conv_in.weight.numel() - parts.adapter.conv_in.bias.numel()
        facts["motion parameters (M)"] = round(motion / 1e6, 5)
        facts["fps/motion embedding parameters (M)"] = round(count(parts.conditioning) / 1e6, 5)
        facts["extra conv_in weights"] = parts.adapter.conv_in.weight[:, 4:].numel()
        if not args.tiny:
            checks["motion modules 453.21 M"] = round(motion / 1e6, 2) == 453.21
            checks["embeddings 0.82 M"] = round(count(parts.conditioning) / 1e6, 2) == 0.82
            checks["extra conv_in weights 14,400"] = facts["extra conv_in weights"] == 14400

        t = time.perf_counter()
        torch.manual_seed(1)
        vae_config = dict(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1, tile_spatial_size=32, tile_overlap_ratio=0.25,
                          en_de_n_frames_a_time=4) if args.tiny else {}
        with torch.device(device):
            cv_vae = CVVAEModel(**vae_config)
        base_conv = unet2d.conv_in.weight.detach().clone()
        pipe = FancyVideoPipeline(vae=cv_vae, text_encoder=text, tokenizer=tokenizer, unet=unet2d,
                                  motion_adapter=parts.adapter, scheduler=video_scheduler(),
                                  conditioning=parts.conditioning, image_vae=image_vae,
                                  image_scheduler=first_frame_scheduler())
        checks["conv_in[:, :4] is the base model's"] = bool(torch.equal(pipe.unet.conv_in.weight[:, :4], base_conv))
        facts["UNetMotionModel parameters (M)"] = round(count(pipe.unet) / 1e6, 5)
        facts["CV-VAE parameters (M)"] = round(count(cv_vae) / 1e6, 5)
        if not args.tiny:
            checks["UNetMotionModel 1312.73 M + 14,400 conv_in"] = round((count(pipe.unet) - 14400) / 1e6, 2) == 1312.73
        pipe = pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        times["build pipeline"] = time.perf_counter() - t

        side, frames = (32, 5) if args.tiny else (768, 61)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        result = pipe("a corgi running on the beach", num_frames=frames, height=side, width=side,
                      num_inference_steps=args.steps, guidance_scale=7.5, fps=25, motion_score=3.0,
                      generator=torch.Generator(device).manual_seed(0), output_type="pt")
        if device.type == "cuda":
            torch.cuda.synchronize()
            facts["peak GPU memory (GiB)"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        times[f"text-to-video {side}px {frames} frames, {args.steps}+{args.steps} steps"] = time.perf_counter() - t
        video = result.frames
        facts["output shape"] = list(video.shape)
        checks["output (1, 61, 3, 768, 768) (tiny: (1, 5, 3, 32, 32))"] = tuple(video.shape) == (1, frames, 3, side, side)
        checks["output finite"] = bool(torch.isfinite(video.float()).all())
        checks["first frame returned"] = result.first_frames is not None
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ok = all(checks.values())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [
        f"### FancyVideo at full size, random weights ({datetime.date.today().isoformat()}, {gpu}, {args.dtype})",
        "",
        f"Command: `python3 tools/gpu/fancyvideo_full_size.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        " (random weights: shapes, strictness and cost only, no quality).",
        "",
        "| check | result |", "| --- | --- |",
        *[f"| {name} | {'ok' if passed else 'FAILED'} |" for name, passed in checks.items()],
        "", "| fact | value |", "| --- | --- |",
        *[f"| {name} | {value} |" for name, value in facts.items()],
        "", "| step | seconds |", "| --- | --- |",
        *[f"| {name} | {seconds:.1f} |" for name, seconds in times.items()],
        "",
        f"torch {torch.__version__}, total {time.perf_counter() - t0:.1f} s",
    ]
    text_md = "\n".join(lines)
    print(text_md)
    (out / "fancyvideo_full_size.md").write_text(text_md + "\n", encoding="utf-8")
    (out / "fancyvideo_full_size.json").write_text(json.dumps(dict(checks=checks, facts=facts, times=times,
                                                                   ok=ok), indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
