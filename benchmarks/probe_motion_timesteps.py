"""Where in the noise schedule does the Shapes motion adapter read the motion from the caption?

The motion training's held-out probe (``attncraft.shapes.training.motion.motion_probe``) measures the
v-MSE of fixed clips at t in [200, 800): with the true caption, the clip's frames shuffled, the caption's
motions turned the other way ("moves left" for a clip moving right), and the empty caption. This runs the
same probe per band of timesteps on the embedded text-to-video model (shapes SD, the shipped adapter and
its text path), so that the gap between the true and the motions-swapped caption can be read where a
sampler decides what moves where (the high-noise steps) as well as where the probe looks.

    python benchmarks/probe_motion_timesteps.py            # CPU, a few minutes (128 clips, 16 frames)
    python benchmarks/probe_motion_timesteps.py --adapter DIR --n 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BANDS = ((0, 200), (200, 500), (500, 800), (800, 1000))


def parse_bands(parser: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    """``"0-200,800-1000"`` -> [(0, 200), (800, 1000)]; a usage error names a band that is not LO-HI with
    0 <= LO < HI <= 1000."""
    bands = []
    for band in (b.strip() for b in text.split(",")):
        lo, _, hi = band.partition("-")
        if not (lo.isdigit() and hi.isdigit() and int(lo) < int(hi) <= 1000):
            parser.error(f"--bands: {band!r} is not LO-HI with 0 <= LO < HI <= 1000 (e.g. 800-1000)")
        bands.append((int(lo), int(hi)))
    return bands


def main(argv: list[str] | None = None) -> int:
    rows = probe(argv)
    return 0 if rows else 1


def probe(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """The table's rows: band -> the probe's four losses (also printed as a markdown table)."""
    from diffusers import MotionAdapter, UNetMotionModel

    from attncraft.shapes.models import SHAPES_SD_DIR
    from attncraft.shapes.training.data import tokenize
    from attncraft.shapes.training.motion import ClipEncoder, load_frozen_sd, motion_probes, training_alphas_cumprod
    from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids
    from attncraft.video.motion_text_path import apply_text_path, has_text_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sd", default=str(SHAPES_SD_DIR))
    p.add_argument("--adapter", default=str(Path(__file__).resolve().parents[1] / "assets" / "models" / "shapes-motion"))
    p.add_argument("--n", type=int, default=128, help="held-out clips (the probe's fixed set, seeds from 6,000,000)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--bands", default=",".join(f"{lo}-{hi}" for lo, hi in BANDS), help="timestep bands, e.g. 0-200,800-1000")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    bands = parse_bands(p, args.bands)
    for folder, what in ((args.sd, "--sd"), (args.adapter, "--adapter")):
        if not (Path(folder) / ("model_index.json" if what == "--sd" else "config.json")).is_file():
            p.error(f"{what} {folder}: not a {'Stable Diffusion' if what == '--sd' else 'MotionAdapter'} folder; "
                    f"pass a local folder (default: the shipped one)")
    if args.n < 1 or not 2 <= args.frames <= 32:
        p.error(f"--n {args.n} --frames {args.frames}: give at least 1 clip and 2 to 32 frames")
    device = torch.device(args.device)
    torch.manual_seed(0)
    sd = load_frozen_sd(args.sd, device)
    text_encoder = pipeline_encoder_for_clip_ids(sd)
    adapter = MotionAdapter.from_pretrained(args.adapter, dtype=torch.float32)
    unet = UNetMotionModel.from_unet2d(sd.unet, adapter).to(device).eval().requires_grad_(False)
    text = has_text_path(args.adapter)
    if text:
        apply_text_path(unet, args.adapter)
    encoder = ClipEncoder(sd.vae, device, 32, 64)
    with torch.no_grad():
        empty = text_encoder(torch.from_numpy(tokenize([""])).long().to(device)).last_hidden_state.float()
    alphas_cumprod = training_alphas_cumprod(device)
    print(f"### Held-out v-MSE by timestep band ({args.adapter}{' + its text path' if text else ''}, {args.n} clips of "
          f"{args.frames} frames, {device})")
    print()
    print("| t | true caption | frames shuffled | motions swapped | empty caption | swapped - true | empty - true |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = {}
    readings = motion_probes(unet, text_encoder, encoder, empty, alphas_cumprod, device, n=args.n, frames=args.frames,
                             t_ranges=bands)  # the clips rendered and encoded once for all the bands
    for (lo, hi), r in zip(bands, readings):
        rows[f"{lo}-{hi}"] = r
        print(f"| [{lo}, {hi}) | {r['true']:.4f} | {r['frames_shuffled']:.4f} | {r['motion_swapped']:.4f} | "
              f"{r['empty']:.4f} | {100 * (r['motion_swapped'] / r['true'] - 1):+.1f} % | "
              f"{100 * (r['empty'] / r['true'] - 1):+.1f} % |", flush=True)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
