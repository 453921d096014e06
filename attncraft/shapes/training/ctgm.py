"""Stage ``ctgm``: FancyVideo's CTGM trained on Shapes motion videos, everything else frozen; writes
``ctgm.safetensors`` (fp16, strict) and ``training_log.json`` into ``--out``.

The base is diffusers' ``AnimateDiffPipeline`` built from a shapes SD folder (``--sd``, default
``assets/models/shapes-sd``) and a ``MotionAdapter`` folder (``--adapter``, default
``assets/models/shapes-motion``), all of it frozen; only CTGM
(:mod:`attncraft.attention_processors.ctgm`, ``--mode``, default TII + TAR) learns. Why it can learn in
a few minutes, and the choices that follow:

* **It starts as the base.** CTGM is the identity at initialisation, so the loss starts at the
  frozen motion model's and training only has to add what per-frame text buys.
* **Sequential captions.** The world's moving scenes (``sample_scenes(motion=True)``, 1-2 objects)
  with the caption grammar's own motion clauses; about half of them have an object doing two things
  one after the other ("a red circle moves right, then turns blue"), which is where a text condition
  that differs from frame to frame should matter. Several wordings per clip; 10 % of the captions are
  replaced by the empty prompt, so CTGM also learns the unconditional half of guidance.
* **The base's objective** (:class:`~attncraft.video.ctgm_training.DiffusionObjective`): the shapes
  scheduler's v-prediction with the Shapes weights ``min(snr + 1, 5) / (snr + 1)``, one timestep per
  clip.
* **Small frames, large batches**: 64x64 clips of 16 frames, rendered on the training device and
  encoded once by the frozen VAE into an on-device pool refreshed from fresh scenes; AdamW (lr 1e-3:
  the outputs start at zero) with warm-up and a cosine over the wall-clock budget, grad-clip 1, bf16
  autocast, a power-function EMA of the CTGM weights (the ones saved).
* **Sites**: the reference's ``part_module`` set by default (first transformer of each down / up
  block and the mid block's: 5 of the 11 of shapes SD), which keeps TII + TAR and ``all`` together
  within the Shapes weight budget; ``--sites all`` takes every site.
* **Held-out probe**, before and after training: the v-loss on fixed held-out *sequential* clips
  (fixed noise and timesteps, t in [200, 800)) with the true caption and with the caption whose two
  motions are told in the other order, with CTGM and without it. ``reversed - true`` is how much the
  model reads the order from the text; CTGM should lower ``true`` and widen the gap.

Seeds: training scenes from ``TRAIN_SEED_BASE`` (>= 10,000,000); the probe from 7,000,000; the
measurement (``benchmarks/measure_ctgm.py``) from seeds below 1,000.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attncraft.shapes.training import common
from attncraft.shapes.training.configs import CtgmTrain, get_configs
from attncraft.shapes.training.data import (
    ChunkStream,
    DevicePool,
    SceneChunks,
    captioned_batch,
    fill_pool,
    maybe_refresh,
    tokenize,
)
from attncraft.shapes.training.motion import ClipEncoder, weights_fingerprint
from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids

PROBE_SEED_BASE = 7_000_000
"""Held-out clips of the probe (disjoint from training, the other probes and evaluation seeds)."""
WEIGHTS_FILE = "ctgm.safetensors"


def default_adapter_dir() -> Path:
    from attncraft.shapes.models import SHAPES_MOTION_DIR

    return SHAPES_MOTION_DIR


def reverse_order(scene):
    """The scene with every two-part motion told the other way round in time: the second segment
    happens first (same segments, swapped windows), so its caption names them in the other order."""
    objects = []
    for obj in scene.objects:
        if len(obj.motions) == 2:
            a, b = obj.motions
            obj = replace(obj, motions=(replace(b, start=a.start, end=a.end), replace(a, start=b.start, end=b.end)))
        objects.append(obj)
    return scene.with_objects(objects)


def is_sequential(scene) -> bool:
    return any(len(o.motions) == 2 for o in scene.objects)


@torch.no_grad()
def order_probe(unet, manager, technique, text_encoder, encoder: ClipEncoder, objective, device,
                n: int, batch: int = 16) -> dict[str, float]:
    """Held-out v-MSE (t in [200, 800)) of fixed sequential clips, noise and timesteps, with the true
    captions and with the motions told in the other order, each with CTGM installed and without it."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.training.data import tokenize_fast
    from attncraft.shapes.world import sample_scenes

    scenes, k = [], 0
    while len(scenes) < n:
        scenes += [s for s in sample_scenes(4 * n, seed=PROBE_SEED_BASE + k, num_objects=(1, 2), motion=True) if is_sequential(s)]
        k += 1
    scenes = scenes[:n]
    z0 = torch.cat([encoder.latents(scenes[i:i + 64]) for i in range(0, n, 64)])
    ids = {name: torch.from_numpy(tokenize_fast([caption_scene(make(s), seed=i) for i, s in enumerate(scenes)])).long().to(device)
           for name, make in (("true", lambda s: s), ("reversed", reverse_order))}  # fmt: skip
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(z0.shape, generator=g).to(device)
    t = torch.randint(200, 800, (n,), generator=g).to(device)
    frames = z0.shape[2]
    out: dict[str, float] = {}
    installed = technique in manager.techniques
    for with_ctgm in (True, False):
        if with_ctgm and not installed:
            manager.install(technique)
        if not with_ctgm:
            manager.remove(technique)
        for name in ("true", "reversed"):
            losses = []
            for i in range(0, n, batch):
                sl = slice(i, i + batch)
                with common.autocast(device):
                    cond = text_encoder(ids[name][sl]).last_hidden_state.float().repeat_interleave(frames, dim=0)
                    _, per = objective.loss(unet, z0[sl], cond, t=t[sl], noise=noise[sl])
                losses.append(per)
            out[f"{name}_{'ctgm' if with_ctgm else 'base'}"] = float(torch.cat(losses).mean())
    if installed:
        manager.install(technique)
    return out


def _probe_line(p: dict[str, float]) -> str:
    return (f"true {p['true_ctgm']:.4f} (base {p['true_base']:.4f}), reversed order {p['reversed_ctgm']:.4f} "
            f"(base {p['reversed_base']:.4f})")  # fmt: skip


def train_ctgm(args: common.RunArgs, cfg: CtgmTrain | None = None, quiet: bool = False) -> dict[str, Any]:
    from attncraft.attention_processors import get_manager
    from attncraft.attention_processors.ctgm import save_ctgm
    from attncraft.shapes.models import SHAPES_SD_DIR
    from attncraft.video.ctgm_training import DiffusionObjective, attach_ctgm, frozen_motion_pipeline

    cfg = common.apply_overrides(cfg or get_configs(args.config).ctgm, args)
    if args.ctgm_mode:
        cfg = replace(cfg, mode=args.ctgm_mode)
    if args.ctgm_sites:
        cfg = replace(cfg, sites=args.ctgm_sites)
    out, device, budget, max_steps, workers, say = common.start_stage("ctgm", args, cfg, quiet).unpack()
    sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
    adapter_dir = Path(args.adapter_dir) if args.adapter_dir else default_adapter_dir()
    n_caps = len(cfg.caption_omits)
    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=cfg.caption_omits, num_objects=cfg.num_objects,
                                     motion=True), workers=workers)  # fmt: skip
    pipe = frozen_motion_pipeline(sd_dir, adapter_dir, device, torch.float32)
    # captions are CLIP ids (pools, probe); a pruned shapes SD encoder takes its own ids
    unet, vae = pipe.unet, pipe.vae
    text_encoder = pipeline_encoder_for_clip_ids(pipe)
    ctgm, technique = attach_ctgm(pipe, cfg.mode, cfg.sites, init=args.init_dir)
    manager = get_manager(pipe)
    counts = ctgm.parameter_counts()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = cfg.image_size // scale
    say(f"CTGM '{ctgm.mode}' on {len(ctgm.sites)} sites ({ctgm.config.sites}): {counts['total'] / 1e6:.3f} M params "
        f"on {device} (frozen {sd_dir} + {adapter_dir}); clips of {cfg.frames} frames at {cfg.image_size} px "
        f"({latent}x{latent} latents); budget {args.minutes} min")  # fmt: skip

    encoder = ClipEncoder(vae, device, cfg.frames, cfg.image_size)
    pool = DevicePool(cfg.pool, {"latents": ((vae.config.latent_channels, cfg.frames, latent, latent), torch.float16),
                                 "tokens": ((n_caps, 77), torch.int32)}, device)  # fmt: skip
    fill_pool(pool, stream, encoder, limit_s=cfg.pool_fill_limit_s, log=say)
    objective = DiffusionObjective(pipe.scheduler.config, cfg.min_snr_gamma)
    with torch.no_grad():
        empty = text_encoder(torch.from_numpy(tokenize([""])).long().to(device)).last_hidden_state.float()

    def probe() -> dict[str, float]:
        ctgm.eval()
        result = order_probe(unet, manager, technique, text_encoder, encoder, objective, device, cfg.probe_examples)
        ctgm.train()
        return result

    probe_before = probe()
    say(f"held-out v-loss before training: {_probe_line(probe_before)}")
    params = [p for p in ctgm.parameters() if p.requires_grad]
    opt = common.adamw(params, cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    ema = common.PowerEMA(ctgm, gamma=cfg.ema_gamma)
    log = common.LossLog("ctgm", every_s=cfg.log_every_s, quiet=quiet)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encoder)
        z0, cond = captioned_batch(pool, cfg.batch, text_encoder, empty, cfg.cfg_dropout, common.autocast(device))
        with common.autocast(device):
            loss, per = objective.loss(unet, z0, cond.repeat_interleave(cfg.frames, dim=0))
        common.descend(opt, loss, params, cfg.grad_clip, ema)
        log.add(per.mean().detach())  # unweighted v-MSE: comparable across runs
        log.maybe_print(step + 1, lr, budget)
    train_s = steps.finish(log)
    step = steps.done
    stream.close()

    ema.copy_to(ctgm)
    probe_after = probe()
    say(f"held-out v-loss after training: {_probe_line(probe_after)}")
    manager.remove(technique)
    info = {
        "model": "shapes-ctgm",
        "mode": ctgm.mode,
        "sites": ctgm.config.sites,
        "num_sites": len(ctgm.sites),
        "faithful": ctgm.config.faithful,
        "parameters": counts,
        "sd_dir": str(sd_dir),
        "adapter_dir": str(adapter_dir),
        "sd_unet_sha256_16": weights_fingerprint(sd_dir / "unet"),
        "adapter_sha256_16": weights_fingerprint(adapter_dir),
        "initialised_from": str(args.init_dir) if args.init_dir else None,
        **common.run_stats(step, cfg.batch, train_s, budget),
        "frames": cfg.frames,
        "image_size": cfg.image_size,
        "pool": {"capacity": cfg.pool, "clips_added": pool.added},
        "prediction_type": objective.prediction_type,
        "ema": f"power-function, gamma={cfg.ema_gamma}",
        "heldout_v_loss": {"before": probe_before, "after": probe_after},
        **common.summarize_losses(log.history),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_ctgm(ctgm, out / WEIGHTS_FILE, training={k: v for k, v in info.items() if k != "parameters"} | {
        "command": " ".join(["python", "-m", "attncraft.shapes.training", *args.argv[1:]])})
    info["file_bytes"] = (out / WEIGHTS_FILE).stat().st_size
    common.write_training_log(out, "ctgm", args, info)
    say(f"saved {out / WEIGHTS_FILE} ({info['file_bytes'] / 1e6:.2f} MB) after {step} steps, {info['train_seconds']}s")
    info["loss_history"] = log.history
    return info
