"""Training RealCustom's parts (projector, scoring module, visual K/V), everything else frozen.

The objective is the base model's own denoising loss on the *target* image (a scene that contains
the subject), conditioned on its caption and, through the visual branch of every cross-attention
layer, on the subject image's features:

* noise ``eps``, timestep ``t`` uniform, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``; the target is
  ``eps`` or ``v`` as the base UNet predicts; the per-sample MSE is weighted by
  ``min(snr + 1, gamma) / (snr + 1)`` for v-prediction (the Shapes UNet's weighting), 1 otherwise;
* the scoring module sees the projected features, the text states, the (masked) noisy latent and
  ``alpha_bar_t``; ``gamma_num ~ U[0.3, 1]`` per batch as in the paper (A.2), and its ``1 + S``
  weights keep it on the gradient path;
* the visual branch is multiplied by the example's subject mask when the dataset has one (the
  Shapes run uses the ground-truth mask, so training sees the masked branch that sampling uses);
  without masks it acts everywhere, as in the paper's training (Eq. 4).

Only the adapter's parameters are trained; the UNet, text encoder, VAE and image encoder are
frozen (their activations still carry the gradient to the visual K/V of the earlier layers).

Datasets: :func:`train` takes any iterator of :class:`Batch` (pre-encoded tensors); the command
line ``python -m attncraft.realcustom.training --model DIR --data FILE.jsonl --out DIR`` trains on
a folder of images described by a JSON-lines file with ``image``, ``caption``, ``word`` (kept for
reference), ``subject`` and optionally ``mask`` (paths relative to the file).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attncraft.attention_processors.manager import get_manager
from attncraft.attention_processors.realcustom import RealCustomVisualAttention, VisualCondition, VisualTokens
from attncraft.realcustom.modules import RealCustomAdapter, reweight_and_select


@dataclass
class Batch:
    """One training batch, encoded: target latents, caption states, subject encoder states, mask."""

    latents: torch.Tensor
    """(B, C, h, w) target latents (VAE posterior mean x scaling factor)."""
    text: torch.Tensor
    """(B, n_t, width) text-encoder states of the caption."""
    features: torch.Tensor
    """(B, n_i, feature_dim) image-encoder states of the subject image."""
    mask: torch.Tensor | None = None
    """(B, 1, H, W) subject mask in [0, 1] at any resolution, or None."""
    added: dict[str, torch.Tensor] | None = None
    """SDXL's ``added_cond_kwargs`` (text_embeds, time_ids), or None."""


class Trainer:
    """The frozen UNet with the adapter's visual branch installed; :meth:`loss` of one batch."""

    def __init__(self, unet, adapter: RealCustomAdapter, alphas_cumprod: torch.Tensor, prediction_type: str,
                 gamma_num_range: tuple[float, float] = (0.3, 1.0), min_snr_gamma: float | None = 5.0):
        self.unet = unet.requires_grad_(False)
        self.adapter = adapter.requires_grad_(True).train()
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type
        self.gamma_num_range = gamma_num_range
        self.min_snr_gamma = min_snr_gamma
        self.visual = RealCustomVisualAttention(adapter)
        self.manager = get_manager(unet)
        self.manager.install(self.visual)
        # training calls the UNet with a different timestep per sample: no step tracking (it would
        # read the timestep on the host every call); the visual branch only needs the latent size
        self.manager.tracker.detach()

    def close(self) -> None:
        self.manager.remove(self.visual)

    def noise(self, latents: torch.Tensor, generator: torch.Generator | None = None):
        """(noisy, target, t, alpha_bar) for ``latents``."""
        n = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator, device=latents.device if generator is None else generator.device)
        noise = noise.to(latents.device)
        t = torch.randint(0, len(self.alphas_cumprod), (n,), generator=generator,
                          device=latents.device if generator is None else generator.device).to(latents.device)
        a = self.alphas_cumprod[t].float()
        sa, sb = a.sqrt()[:, None, None, None], (1.0 - a).sqrt()[:, None, None, None]
        noisy = sa * latents + sb * noise
        target = sa * noise - sb * latents if self.prediction_type == "v_prediction" else noise
        return noisy, target, t, a

    def loss(self, batch: Batch, gamma_num: float | None = None, generator: torch.Generator | None = None,
             noised: tuple | None = None) -> torch.Tensor:
        """Per-sample weighted MSE (B,); ``noised`` fixes (noisy, target, t, alpha_bar) for probes."""
        z0 = batch.latents.float()
        noisy, target, t, a = noised if noised is not None else self.noise(z0, generator)
        if gamma_num is None:
            lo, hi = self.gamma_num_range
            gamma_num = lo + (hi - lo) * random.random()
        adapter = self.adapter
        feats = adapter.project(batch.features)
        index = weights = None
        if adapter.scoring is not None:
            lat = noisy
            if batch.mask is not None:
                lat = noisy * torch.nn.functional.interpolate(batch.mask.float(), size=noisy.shape[-2:], mode="bilinear",
                                                              align_corners=False)
            scores = adapter.scoring(feats, batch.text.to(feats.dtype), lat.to(feats.dtype), a).scores
            weights, index = reweight_and_select(scores, gamma_num)
        self.manager.context.latent_hw = tuple(noisy.shape[-2:])
        self.visual.conditions = [VisualCondition(slice(0, z0.shape[0]), VisualTokens(feats), index=index, weights=weights,
                                                  mask=batch.mask)]
        try:
            pred = self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=batch.text.to(self.unet.dtype),
                             added_cond_kwargs=batch.added, return_dict=False)[0]
        finally:
            self.visual.conditions = []
        per = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        if self.prediction_type == "v_prediction" and self.min_snr_gamma:
            snr = a / (1.0 - a)
            per = per * torch.clamp(snr + 1.0, max=self.min_snr_gamma) / (snr + 1.0)
        return per


def alphas_cumprod_of(scheduler_config: dict[str, Any]) -> torch.Tensor:
    """The training noise schedule of a model, from its scheduler config (diffusers' DDPM)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    return DDPMScheduler(**{k: scheduler_config[k] for k in keys if k in scheduler_config}).alphas_cumprod


def train(trainer: Trainer, batches: Iterator[Batch], steps: int, lr: float = 1e-4, weight_decay: float = 0.0,
          grad_clip: float = 1.0, log_every: int = 50, say=print) -> list[float]:
    """Plain AdamW loop over ``batches`` for ``steps`` steps; returns the per-step mean losses."""
    params = trainer.adapter.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = []
    for step in range(steps):
        batch = next(batches)
        loss = trainer.loss(batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        history.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            say(f"[realcustom] step {step + 1}/{steps} loss {sum(history[-log_every:]) / log_every:.5f}")
    return history


# ----------------------------------------------------------------------------- a JSON-lines dataset
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The examples of a JSON-lines file (one object per line; paths relative to the file)."""
    from attncraft.validation import check_input_file

    from attncraft.errors import InputError

    path = check_input_file(path, "dataset file", suffixes=(".jsonl",))
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"line {number} of {path} is not JSON ({exc})", "write one JSON object per line") from None
        missing = [k for k in ("image", "caption", "subject") if k not in row]
        if missing:
            raise InputError(f"line {number} of {path} lacks {', '.join(missing)}", "give image, caption, word, subject")
        for key in ("image", "subject", "mask"):
            if key in row:
                row[key] = str(check_input_file(path.parent / row[key], f"{key} of line {number}"))
        rows.append(row)
    if not rows:
        raise InputError(f"{path} has no examples", "write one JSON object per line")
    return rows


def jsonl_batches(rows, pipe, encoder, batch: int, size: int, seed: int = 0) -> Iterator[Batch]:
    """Endless shuffled batches of a JSON-lines dataset, encoded with the frozen VAE / text / image encoders."""
    import numpy as np
    from PIL import Image

    rng = random.Random(seed)
    device = pipe.unet.device

    def load(path, mode="RGB"):
        im = Image.open(path).convert(mode).resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)

    while True:
        chosen = [rng.choice(rows) for _ in range(batch)]
        with torch.no_grad():
            images = torch.stack([load(r["image"]).permute(2, 0, 1) for r in chosen]).to(device) * 2 - 1
            latents = pipe.vae.encode(images.to(pipe.vae.dtype)).latent_dist.mean * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer([r["caption"] for r in chosen], padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
            text = pipe.text_encoder(ids)[0]
            feats = encoder.encode(torch.stack([load(r["subject"]).permute(2, 0, 1) for r in chosen]))
            mask = None
            if all("mask" in r for r in chosen):
                mask = torch.stack([load(r["mask"], "L")[None] for r in chosen]).to(device)
        yield Batch(latents.float(), text, feats, mask)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attncraft.realcustom.training",
                                description="Train RealCustom's projector, scoring module and visual K/V on a JSON-lines dataset.")
    p.add_argument("--model", default="shapes", help="SD 1.x model (attncraft --model reference)")
    p.add_argument("--data", required=True, help="JSON-lines file: image, caption, word, subject[, mask]")
    p.add_argument("--out", required=True, help="checkpoint file or folder")
    p.add_argument("--image-encoder", default="shapes")
    p.add_argument("--encoder-layer", type=int, default=-2)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--no-scoring", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    ns = p.parse_args(argv)
    from attncraft.loading import load_text_to_image
    from attncraft.realcustom.encoder import load_image_encoder
    from attncraft.realcustom.modules import save_adapter

    torch.manual_seed(ns.seed)
    random.seed(ns.seed)
    loaded = load_text_to_image(ns.model, device=ns.device, dtype="fp32")
    pipe = loaded.pipeline
    encoder = load_image_encoder(ns.image_encoder, layer=ns.encoder_layer, device=pipe.unet.device)
    adapter = RealCustomAdapter.from_unet(pipe.unet, encoder.hidden_size, encoder=ns.image_encoder,
                                          encoder_layer=ns.encoder_layer, scoring=not ns.no_scoring,
                                          init="zero_value", seed=ns.seed).to(pipe.unet.device)
    rows = read_jsonl(Path(ns.data))
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    trainer = Trainer(pipe.unet, adapter, alphas_cumprod_of(dict(pipe.scheduler.config)).to(pipe.unet.device),
                      pipe.scheduler.config.get("prediction_type", "epsilon"))
    t0 = time.time()
    history = train(trainer, jsonl_batches(rows, pipe, encoder, ns.batch, size, ns.seed), ns.steps, lr=ns.lr)
    trainer.close()
    path = save_adapter(adapter, ns.out)
    log = {"command": " ".join(["python", "-m", "attncraft.realcustom.training", *(argv or sys.argv[1:])]),
           "examples": len(rows), "steps": ns.steps, "seconds": round(time.time() - t0, 1),
           "first_loss": history[0] if history else None, "final_loss": history[-1] if history else None}
    (path.parent / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"saved {path} after {ns.steps} steps; loss {log['first_loss']:.4f} -> {log['final_loss']:.4f}")
    return 0 if all(math.isfinite(h) for h in history) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
