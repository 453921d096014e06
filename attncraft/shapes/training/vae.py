"""Stage ``vae``: the shapes ``AutoencoderKL`` (64 px RGB <-> 16x16x4 latents).

Loss:

* per-pixel L1 + MSE (L1 keeps edges and flat palette colours crisp, MSE punishes the rare large
  colour error), with object pixels (the union of the ground-truth masks, dilated by one pixel for
  the anti-aliased rims) weighted 5x: objects cover only ~10 % of a canvas, and their colours and
  outlines are what the reader checks;
* a small KL term on the per-element mean (weight 1e-5: about 100x SD's relative weight, enough to
  keep the posterior from collapsing to a point, so that the decoder tolerates the small latent
  errors of the diffusion model, small enough to keep reconstructions exact);
* an L1 loss on the horizontal and vertical pixel differences of the error (weight ``edge_weight``,
  same object weighting): the surface patterns (stripes, dots, checks, 3-6 px) are low-contrast
  shades of the object's colour, so blurring them away costs little per-pixel error, but all of
  their edges; without this term the reconstructions lose about one pattern in eight.

No GAN or perceptual loss: the world is flat colours and the reader only needs the right palette
colour in the right pixels. After training, the latent channels are re-parametrised (exactly, in the
1x1 quant convolutions) to zero mean and unit std, and ``scaling_factor`` is set to 1 / RMS of the
resulting posterior means over fresh scenes (~1), so that scaled latents have unit second moment,
which the diffusion noise schedule assumes. Finally the reader scores reconstructions of held-out
scenes (``training_log.json``: ``latent_stats.reader_on_reconstructions``): the ceiling of shapes SD.
"""

from __future__ import annotations

from typing import Any

import torch

from attncraft.shapes.training import common
from attncraft.shapes.training.configs import VaeTrain, get_configs
from attncraft.shapes.training.data import (
    ChunkStream,
    DevicePool,
    SceneChunks,
    fill_pool,
    maybe_refresh,
    render_uint8,
    render_uint8_with_mask,
    to_unit,
)


def build_vae(cfg: VaeTrain, seed: int):
    from diffusers import AutoencoderKL

    from attncraft.shapes.models import shapes_vae_config

    kw = shapes_vae_config() | (cfg.overrides or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**kw)


def edge_l1(err: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 of the finite differences of ``err`` (N, C, H, W) along x and y; ``weight`` is
    (N, 1, H, W), and a difference takes the larger weight of its two pixels."""
    dx, dy = err[..., :, 1:] - err[..., :, :-1], err[..., 1:, :] - err[..., :-1, :]
    wx, wy = torch.maximum(weight[..., :, 1:], weight[..., :, :-1]), torch.maximum(weight[..., 1:, :], weight[..., :-1, :])
    return 0.5 * ((wx * dx.abs()).mean() / wx.mean() + (wy * dy.abs()).mean() / wy.mean())


def load_init_vae(path):
    """A trained VAE to start from (``--init``): a VAE folder, or a shapes SD folder's ``vae/``."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(str(common.init_folder(path, "vae")), torch_dtype=torch.float32)


def kl_mean(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


@torch.no_grad()
def measure_latents(vae, images_u8: torch.Tensor, device: torch.device, batch: int = 512) -> dict[str, float]:
    """Latent statistics (posterior means, unscaled: what the UNet trains on) and reconstruction error."""
    zs, sds, l1, mse, exact = [], [], 0.0, 0.0, 0.0
    n = images_u8.shape[0]
    for i in range(0, n, batch):
        x = to_unit(images_u8[i:i + batch].to(device))
        with common.autocast(device):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.mean).sample.float().clamp(-1, 1)
        zs.append(dist.mean.float())
        sds.append(dist.std.float().mean().reshape(1))
        err = (rec - x).abs() * 0.5  # in [0, 1] units
        l1 += err.mean().item() * x.shape[0]
        mse += (err**2).mean().item() * x.shape[0]
        exact += (err.amax(dim=1) < 0.1).float().mean().item() * x.shape[0]
    z = torch.cat(zs)
    rms = z.pow(2).mean().sqrt().item()
    return {
        "latent_rms": rms,
        "latent_std": z.std().item(),
        "latent_mean": z.mean().item(),
        "latent_channel_means": [round(v, 4) for v in z.mean(dim=(0, 2, 3)).tolist()],
        "latent_channel_stds": [round(v, 4) for v in z.std(dim=(0, 2, 3)).tolist()],
        "posterior_std_mean": torch.cat(sds).mean().item(),
        "recon_l1": l1 / n,
        "recon_psnr": float(-10.0 * torch.log10(torch.tensor(max(mse / n, 1e-12)))),
        "recon_pixels_within_0.1": exact / n,
    }


@torch.no_grad()
def latent_moments(vae, images_u8: torch.Tensor, device: torch.device, batch: int = 512):
    """Per-channel mean and std of the posterior means over ``images_u8``."""
    zs = []
    for i in range(0, images_u8.shape[0], batch):
        with common.autocast(device):
            zs.append(vae.encode(to_unit(images_u8[i:i + batch].to(device))).latent_dist.mean.float())
    z = torch.cat(zs)
    return z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))


@torch.no_grad()
def normalize_latent_channels(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Re-parametrise the VAE so that its latents are zero-mean, unit-std per channel.

    Exact (decoding is unchanged): the encoder's ``quant_conv`` maps to ``(z - mean) / std`` (and its
    log-variance shifts by ``-2 log std``); the decoder's ``post_quant_conv`` absorbs ``std * z + mean``.
    The SD pipeline only knows one ``scaling_factor``, no shift, so the shift has to live in the weights.
    """
    c = mean.numel()
    q, pq = vae.quant_conv, vae.post_quant_conv
    mean, std = mean.to(q.weight.dtype), std.clamp(min=1e-4).to(q.weight.dtype)
    q.weight[:c] /= std[:, None, None, None]
    q.bias[:c] = (q.bias[:c] - mean) / std
    q.bias[c:] -= 2.0 * torch.log(std)
    w = pq.weight[:, :, 0, 0].clone()  # (out, in)
    pq.bias += w @ mean
    pq.weight *= std[None, :, None, None]


READER_SEED = 4  # held-out scenes of the reader check (evaluation seeds are small)


@torch.no_grad()
def reader_check(vae, n: int, device: torch.device) -> dict[str, float]:
    """Reader scores (every attribute of the scene) of VAE reconstructions of ``n`` held-out scenes."""
    if n <= 0:
        return {}
    from attncraft.shapes.scoring import score_image
    from attncraft.shapes.training.evaluate import summarize
    from attncraft.shapes.world import sample_scenes

    scenes = sample_scenes(n, seed=READER_SEED)
    x = to_unit(render_uint8(scenes, device))
    with common.autocast(device):
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
    imgs = ((rec + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return summarize([score_image(im, sc) for im, sc in zip(imgs, scenes)])


def train_vae(args: common.RunArgs, cfg: VaeTrain | None = None, quiet: bool = False) -> dict[str, Any]:
    cfg = common.apply_overrides(cfg or get_configs(args.config).vae, args)
    out, device, budget, max_steps, workers, say = common.start_stage("vae", args, cfg, quiet).unpack()

    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=()), workers=workers)
    vae = (load_init_vae(args.init_dir) if args.init_dir else build_vae(cfg, args.seed)).to(device).train()
    n_params = sum(p.numel() for p in vae.parameters())
    say(f"AutoencoderKL {n_params / 1e6:.3f} M params on {device}; budget {args.minutes} min"
        + (f"; starting from {args.init_dir}" if args.init_dir else ""))

    pool = DevicePool(cfg.pool, {"images": ((3, 64, 64), torch.uint8), "masks": ((1, 64, 64), torch.uint8)}, device)

    def encode(chunk):
        img, mask = render_uint8_with_mask(chunk.scenes, device)
        return {"images": img, "masks": mask}

    fill_pool(pool, stream, encode, limit_s=cfg.pool_fill_limit_s, log=say)
    opt = common.adamw(vae.parameters(), cfg.lr, cfg.weight_decay, device)
    log = common.LossLog("vae", every_s=cfg.log_every_s, quiet=quiet)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encode)
        idx = pool.sample_index(cfg.batch)
        x = to_unit(pool.data["images"][idx])
        w = 1.0 + cfg.object_weight * pool.data["masks"][idx].float()  # objects are ~10 % of the pixels
        with common.autocast(device):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.sample()).sample
        err = rec.float() - x
        rec_loss = (w * (err.abs() + err.pow(2))).mean() / w.mean()
        if cfg.edge_weight:
            rec_loss = rec_loss + cfg.edge_weight * edge_l1(err, w)
        loss = rec_loss + cfg.kl_weight * kl_mean(dist.mean.float(), dist.logvar.float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log.add(loss)
        log.maybe_print(step + 1, lr, budget)
    train_s = steps.finish(log)
    step = steps.done

    # measure the latent scale on fresh scenes, then save fp16
    vae.eval()
    fresh = []
    while sum(f.shape[0] for f in fresh) < cfg.scale_samples:
        fresh.append(render_uint8(stream.get(block=True).scenes, device))
    stream.close()
    fresh = torch.cat(fresh)[: cfg.scale_samples]
    raw_mean, raw_std = latent_moments(vae, fresh, device)
    if vae.quant_conv is not None and vae.post_quant_conv is not None:
        normalize_latent_channels(vae, raw_mean, raw_std)
    stats = measure_latents(vae, fresh, device)
    stats["raw_channel_means"] = [round(v, 4) for v in raw_mean.tolist()]
    stats["raw_channel_stds"] = [round(v, 4) for v in raw_std.tolist()]
    scaling = 1.0 / max(stats["latent_rms"], 1e-6)
    vae.register_to_config(scaling_factor=float(round(scaling, 5)))
    stats["reader_on_reconstructions"] = reader_check(vae, cfg.reader_scenes, device)
    say("reader on reconstructions of held-out scenes: " + ", ".join(
        f"{k} {v:.3f}" for k, v in stats["reader_on_reconstructions"].items() if k != "n"))
    out.mkdir(parents=True, exist_ok=True)
    vae.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    info = {
        "model": "shapes-vae",
        "params": n_params,
        "initialised_from": common.init_provenance(args.init_dir, "vae"),
        "loss_terms": {"object_weight": cfg.object_weight, "kl_weight": cfg.kl_weight, "edge_weight": cfg.edge_weight},
        **common.run_stats(step, cfg.batch, train_s, budget),
        "scaling_factor": float(round(scaling, 5)),
        "latent_stats": stats,
        "folder_bytes": common.folder_size(out),
        **common.summarize_losses(log.history),
    }
    common.write_training_log(out, "vae", args, info)
    say(f"saved {out}: scaling_factor {scaling:.4f}, recon L1 {stats['recon_l1']:.4f}, "
        f"PSNR {stats['recon_psnr']:.1f} dB, after {step} steps")
    info["loss_history"] = log.history
    return info
