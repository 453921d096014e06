"""Training CTGM with everything else frozen: the objective, one step, and a script for any
video-caption dataset.

CTGM (:mod:`attncraft.attention_processors.ctgm`) has no released weights, so it is trained here: on
an AnimateDiff pipeline (an SD model plus a motion adapter, any references ``attncraft video`` takes)
whose text encoder, VAE, UNet and motion modules all stay frozen, only the CTGM parameters learn. The objective is the
base model's own denoising loss (:class:`DiffusionObjective`: the scheduler's noise schedule and
prediction type, epsilon or v, with min-SNR-style loss weights), one timestep per clip, independent
noise per frame, and the caption on every frame (CTGM makes the per-frame conditions itself). CTGM
starts as the identity (:class:`~attncraft.attention_processors.ctgm.CTGM`), so the loss starts at
the frozen model's level.

The Shapes run (moving world scenes with sequential captions, on-device pools, wall-clock budget) is
:mod:`attncraft.shapes.training.ctgm`; the script here reads any folder of clips::

    python -m attncraft.video.ctgm_training --model SD --adapter ADAPTER --data CLIPS --out ctgm.safetensors \\
        --mode tii+tar --frames 16 --width 256 --height 256 --steps 2000 --batch 2 --lr 1e-4

``CLIPS`` holds the videos (MP4 or GIF) and a ``metadata.jsonl`` (one ``{"file_name": ..., "text":
...}`` per line, the layout of Hugging Face's ``videofolder``; ``video`` / ``caption`` are accepted
too) or a ``metadata.csv`` with those columns. Each clip is cut to ``--frames`` evenly spaced frames
and resized to ``--width`` x ``--height``. The weights are written atomically (fp16 safetensors, with
the run's settings inside and in a JSON sidecar); an existing file is replaced only with
``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attncraft.attention_processors.ctgm import CTGM, CrossFrameTextGuidance, load_ctgm, resolve_mode, save_ctgm
from attncraft.devices import DTYPES
from attncraft.errors import AttncraftError, InputError

__all__ = [
    "DiffusionObjective",
    "VideoCaptionFolder",
    "attach_ctgm",
    "freeze",
    "frozen_motion_pipeline",
    "main",
]


class DiffusionObjective:
    """The frozen model's denoising loss, from its scheduler's configuration.

    ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``; the target is ``eps`` (``epsilon``), ``sqrt(a_t) eps -
    sqrt(1 - a_t) x_0`` (``v_prediction``) or ``x_0`` (``sample``), computed by diffusers'
    ``DDPMScheduler`` built from the same configuration. Loss weights (``min_snr_gamma``; None: none):
    epsilon ``min(snr, gamma) / snr`` (Hang et al. 2023); v ``min(snr + 1, gamma) / (snr + 1)`` (the
    Shapes models' choice: full weight on the high-noise steps); sample ``min(snr, gamma)``.
    """

    def __init__(self, scheduler_config, min_snr_gamma: float | None = 5.0):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(dict(scheduler_config))
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise InputError(f"unknown prediction type {self.prediction_type!r}", "use an epsilon, v or sample model")
        self.num_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.min_snr_gamma = min_snr_gamma
        self._alphas: dict[torch.device, torch.Tensor] = {}

    def alphas_cumprod(self, device: torch.device) -> torch.Tensor:
        if device not in self._alphas:
            self._alphas[device] = self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        return self._alphas[device]

    def noisy_and_target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noisy = self.scheduler.add_noise(z0, noise, t)
        if self.prediction_type == "epsilon":
            return noisy, noise
        if self.prediction_type == "v_prediction":
            return noisy, self.scheduler.get_velocity(z0, noise, t)
        return noisy, z0

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        if self.min_snr_gamma is None:
            return torch.ones(t.shape, device=t.device)
        a = self.alphas_cumprod(t.device)[t]
        snr = a / (1.0 - a)
        g = float(self.min_snr_gamma)
        if self.prediction_type == "epsilon":
            return torch.clamp(snr, max=g) / snr
        if self.prediction_type == "v_prediction":
            return torch.clamp(snr + 1.0, max=g) / (snr + 1.0)
        return torch.clamp(snr, max=g)

    def loss(self, unet, z0: torch.Tensor, text: torch.Tensor, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted mean loss, per-clip unweighted MSE) of ``unet`` on clean latents ``z0``
        ``(B, C, F, h, w)`` with text ``(B*F, T, D)``; ``t`` and ``noise`` are drawn when not given."""
        b = z0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), device=z0.device, generator=generator)
        if noise is None:
            noise = torch.randn(z0.shape, device=z0.device, generator=generator, dtype=z0.dtype)
        noisy, target = self.noisy_and_target(z0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=text, return_dict=False)[0]
        per = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.ndim)))
        return (per * self.weights(t)).mean(), per


def freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        if module is not None:
            module.eval().requires_grad_(False)


def frozen_motion_pipeline(model: str | os.PathLike, adapter: str | os.PathLike, device: Any = "cpu",
                           dtype: torch.dtype = torch.float32):
    """The text-to-video pipeline of ``model`` (an SD folder, file or Hub id, or ``shapes``) with the
    motion adapter ``adapter`` (:func:`attncraft.loading.load_text_to_video`), every part frozen."""
    from attncraft.loading import load_text_to_video

    pipe = load_text_to_video(str(model), str(adapter), device=device, dtype=dtype).pipeline
    freeze(pipe.unet, pipe.vae, pipe.text_encoder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def attach_ctgm(pipe, mode: str = "tii+tar", sites: str = "all", faithful: bool = False,
                init: str | os.PathLike | None = None) -> tuple[CTGM, CrossFrameTextGuidance]:
    """A trainable CTGM for ``pipe`` (fresh, or from the file ``init``), installed on its UNet;
    returns the module (float32, on the UNet's device) and the technique (remove it with
    ``get_manager(pipe).remove(technique)``)."""
    from attncraft.attention_processors import get_manager

    if init:
        ctgm = load_ctgm(init, pipe.unet)
    else:
        ctgm = CTGM.for_pipeline(pipe, mode=mode, sites=sites, faithful=faithful)
    ctgm.to(device=pipe.unet.device, dtype=torch.float32).train().requires_grad_(True)
    technique = ctgm.technique(follow_unet=False)
    get_manager(pipe).install(technique)
    return ctgm, technique


# --------------------------------------------------------------------------------------------------
# Any video-caption dataset
# --------------------------------------------------------------------------------------------------


def _metadata_rows(folder: Path) -> list[tuple[str, str]]:
    jsonl, table = folder / "metadata.jsonl", folder / "metadata.csv"
    rows: list[dict[str, Any]] = []
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InputError(f"{jsonl} line {number} is not JSON ({exc.msg})", "write one JSON object a line") from None
    elif table.is_file():
        with open(table, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise InputError(f"{folder} has no metadata.jsonl or metadata.csv", "list each clip with its caption there")
    out = []
    for number, row in enumerate(rows, 1):
        name = row.get("file_name") or row.get("video")
        text = row.get("text") or row.get("caption")
        if not name or not isinstance(text, str) or not text.strip():
            raise InputError(f"metadata row {number} of {folder} lacks a file_name or a text",
                             'give every row {"file_name": "clip.mp4", "text": "a caption"}')  # fmt: skip
        out.append((str(name), text))
    if not out:
        raise InputError(f"the metadata of {folder} lists no clips", "add at least one clip")
    return out


class VideoCaptionFolder(torch.utils.data.Dataset):
    """Clips and captions of a folder (see the module docstring): item ``i`` is ``(frames, caption)``
    with frames ``(F, 3, height, width)`` in [-1, 1], ``frames`` evenly spaced over the clip."""

    def __init__(self, folder: str | os.PathLike, frames: int, width: int, height: int):
        from attncraft.validation import check_text

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"--data {self.folder} is not a folder", "pass the folder holding the clips and their metadata")
        self.items = [(self.folder / name, check_text(f"caption of {name}", text)) for name, text in _metadata_rows(self.folder)]
        for path, _ in self.items:
            if not path.is_file():
                raise InputError(f"the clip {path} listed in the metadata does not exist", "fix its file_name")
        self.frames, self.width, self.height = frames, width, height

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        from attncraft.video.io import read_video

        path, caption = self.items[index]
        video = read_video(path, max_side=2 * max(self.width, self.height))
        if len(video) < self.frames:
            raise InputError(f"the clip {path} has {len(video)} frames, fewer than --frames {self.frames}",
                             "pass fewer frames or longer clips")  # fmt: skip
        picks = np.linspace(0, len(video) - 1, self.frames).round().astype(int)
        x = torch.from_numpy(np.ascontiguousarray(video[picks])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", antialias=True, align_corners=False)
        return x.clamp(-1.0, 1.0), caption


def _collate(items):
    return torch.stack([x for x, _ in items]), [c for _, c in items]


@torch.no_grad()
def encode_clips(vae, clips: torch.Tensor) -> torch.Tensor:
    """``(B, F, 3, H, W)`` in [-1, 1] -> scaled VAE latents ``(B, C, F, h, w)`` (posterior means)."""
    b, f = clips.shape[:2]
    z = vae.encode(clips.flatten(0, 1).to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return z.view(b, f, *z.shape[1:]).transpose(1, 2).float()


@torch.no_grad()
def encode_text(pipe, captions: Sequence[str]) -> torch.Tensor:
    embeds, _ = pipe.encode_prompt(list(captions), pipe.unet.device, 1, False)
    return embeds.float()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attncraft.video.ctgm_training",
                                description="Train CTGM (everything else frozen) on a folder of captioned clips.")
    p.add_argument("--model", required=True, help="SD folder or Hub id (the frozen image model)")
    p.add_argument("--adapter", required=True, help="MotionAdapter folder (the frozen motion modules)")
    p.add_argument("--data", required=True, help="folder of clips with metadata.jsonl or metadata.csv")
    p.add_argument("--out", required=True, help="CTGM weights to write (.safetensors)")
    p.add_argument("--mode", default="tii+tar", help="CTGM mode (tar, tfb, tii, tii-text, tii+tar, all)")
    p.add_argument("--sites", default="all", choices=["all", "part"])
    p.add_argument("--faithful", action="store_true", help="the reference code's semantics (2S logits, 0.5 text)")
    p.add_argument("--init", default=None, help="continue from these CTGM weights")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--cfg-dropout", type=float, default=0.1, help="share of captions replaced by the empty prompt")
    p.add_argument("--min-snr-gamma", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes decoding clips")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp16", "bf16", "fp32"], help="of the frozen model")
    p.add_argument("--overwrite", action="store_true")
    return p


def _check_args(args) -> None:
    from attncraft.validation import check_finite, check_int_range, check_seed

    check_int_range("--frames", args.frames, 2, 32)
    check_int_range("--steps", args.steps, 1)
    check_int_range("--batch", args.batch, 1)
    check_int_range("--warmup", args.warmup, 0)
    check_int_range("--workers", args.workers, 0)
    for name in ("--width", "--height"):
        value = check_int_range(name, getattr(args, name[2:]), 8)
        if value % 8:
            raise InputError(f"{name} {value} is not a multiple of 8", f"pass e.g. {name} {value - value % 8 or 8}")
    check_finite("--lr", args.lr, 0.0, low_inclusive=False, example=1e-4)
    check_finite("--cfg-dropout", args.cfg_dropout, 0.0, 1.0)
    check_finite("--min-snr-gamma", args.min_snr_gamma, 0.0, low_inclusive=False)
    check_seed(args.seed)
    args.mode = resolve_mode(args.mode)
    if not str(args.out).endswith(".safetensors"):
        raise InputError(f"--out {args.out} must end in .safetensors", "pass e.g. --out ctgm.safetensors")


def train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The script (see the module docstring); returns the run's record."""
    from attncraft.attention_processors import get_manager
    from attncraft.outputs import prepare_output_dir, write_sidecar
    from attncraft.progress import progress_task
    from attncraft.shapes.training.common import PowerEMA, adamw, descend, lr_at

    args = _parser().parse_args(argv)
    _check_args(args)
    out = Path(args.out)
    prepare_output_dir(out.parent if str(out.parent) else ".")
    if out.exists() and not args.overwrite:
        raise InputError(f"{out} exists", "pass --overwrite to replace it, or another --out")
    dataset = VideoCaptionFolder(args.data, args.frames, args.width, args.height)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    pipe = frozen_motion_pipeline(args.model, args.adapter, device, dtype)
    ctgm, technique = attach_ctgm(pipe, args.mode, args.sites, args.faithful, args.init)
    objective = DiffusionObjective(pipe.scheduler.config, args.min_snr_gamma)
    empty = encode_text(pipe, [""])
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=False,
                                         num_workers=args.workers, collate_fn=_collate, persistent_workers=args.workers > 0)  # fmt: skip
    params = [p for p in ctgm.parameters() if p.requires_grad]
    opt = adamw(params, args.lr, 0.0, device)
    ema = PowerEMA(ctgm)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    with progress_task("CTGM steps", args.steps) as update:
        while step < args.steps:
            for clips, captions in loader:
                if step >= args.steps:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, step / args.steps, args.lr, args.warmup, 0.1)
                z0 = encode_clips(pipe.vae, clips)
                text = encode_text(pipe, captions)
                drop = torch.rand(len(captions), device=device) < args.cfg_dropout
                text = torch.where(drop[:, None, None], empty.expand_as(text), text).repeat_interleave(args.frames, 0)
                with autocast:
                    loss, per = objective.loss(pipe.unet, z0.to(dtype), text.to(dtype))
                descend(opt, loss, params, 1.0, ema)
                losses.append(float(per.mean().detach()))
                step += 1
                update(step, f"loss {np.mean(losses[-20:]):.4f}")
    ema.copy_to(ctgm)
    get_manager(pipe).remove(technique)
    record = {
        "script": "attncraft.video.ctgm_training", "argv": list(sys.argv[1:] if argv is None else argv),
        "model": str(args.model), "adapter": str(args.adapter), "data": str(args.data), "clips": len(dataset),
        "mode": ctgm.mode, "sites": ctgm.config.sites, "faithful": ctgm.config.faithful, "steps": step,
        "batch": args.batch, "lr": args.lr, "frames": args.frames, "width": args.width, "height": args.height,
        "seconds": round(time.perf_counter() - started, 1), "parameters": ctgm.parameter_counts()["total"],
        "first_loss_mean": float(np.mean(losses[: max(1, len(losses) // 10)])),
        "final_loss_mean": float(np.mean(losses[-max(1, len(losses) // 10):])),
        "prediction_type": objective.prediction_type, "out": str(out),
    }  # fmt: skip
    save_ctgm(ctgm, out, training=record)
    write_sidecar(out, record)
    record["loss_history"] = losses
    return record


def main(argv: Sequence[str] | None = None) -> int:
    try:
        record = train(argv)
    except AttncraftError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    print(f"trained CTGM '{record['mode']}' for {record['steps']} steps: loss {record['first_loss_mean']:.4f} -> "
          f"{record['final_loss_mean']:.4f}; wrote {record['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
