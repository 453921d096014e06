"""Stage ``motion``: the shapes motion adapter, a diffusers ``MotionAdapter`` trained on world videos
with shapes SD frozen; writes a ``MotionAdapter`` folder (fp16 safetensors).

What makes motion learnable in a few minutes, and the choices that follow from it:

* **Start as the image model.** Every motion module's output projection starts at zero
  (:func:`~attncraft.shapes.models.zero_motion_outputs`, as AnimateDiff initialises them), so the
  motion UNet first denoises each frame exactly as shapes SD does and the loss starts at the image
  model's level; training only has to add what frames share and how they change.
* **The base's objective.** v-prediction on SD's scaled-linear schedule with the same loss weights
  as the shapes SD UNet (``min(snr + 1, 5) / (snr + 1)``: full weight on the high-noise steps, where
  a sampler decides what moves where), one timestep per video, independent noise per frame.
* **Text reaches motion only through the frozen spatial layers.** Motion modules have no
  cross-attention, so "moves right" must be read from the features the frozen cross-attention
  writes; the captions are the world grammar's own, with the motion clauses ("moves right",
  "grows", "turns blue", "then...") and several wordings per clip, 10 % dropped to the empty
  prompt for classifier-free guidance. The frozen layers pass little of some motion words on
  (``benchmarks/probe_motion_words.py``: "moves up" / "moves down" moves the motion modules' input
  by 4.5 %, "grows" / "shrinks" by 7 %, a colour word by 52 %), so ``--text-path cross-kv`` also trains their cross-attention
  key / value projections, at their own learning rate and without decay, and saves the change beside
  the adapter (:mod:`attncraft.video.motion_text_path`; the loader applies it to the motion UNet only).
* **Small frames, large batches.** 64x64 frames (16x16 latents, what shapes SD was trained on), 48
  clips of 16 frames per step (768 frames; the small UNet is partly launch-bound on an H200, so a
  larger batch costs less than proportionally), AdamW lr 1e-3 (2.6 M parameters whose outputs start
  at zero) with warm-up and a cosine over the wall-clock budget, grad-clip 1, bf16 autocast, a
  power-function EMA of the motion weights (the ones saved). Only the motion modules train (``freeze_unet2d_params``),
  and the text path when asked.
* **Clips on the GPU.** Scenes and captions come from worker processes; the clips are rendered on
  the training device at 32 frames and encoded once by the frozen VAE into an on-device pool,
  refreshed from fresh scenes throughout. A 16-frame example is every second frame of a clip (from
  frame 0 or 1: the whole motion either way); a share of the steps (``long_fraction``) trains on all
  32 frames, half as many clips, so the adapter's frame positions 16..31 are trained too.
* **Continuing (``--init DIR``).** The motion modules start from the folder's adapter, and its motion
  text path, when it has one, is added to the base as the loader adds it for sampling, so a
  continuation starts from the model the folder gives (:func:`init_text_path`); the path goes on
  training with the modules even without ``--text-path`` (its kind is the folder's), and is saved.
* **Caption contrast (``--contrast W``, off by default).** The plain objective gives the caption's
  motion words little weight: after training, a caption with its motions turned the other way costs
  only about 2 % more loss than the true one (``benchmarks/RESULTS.md``), with or without the text
  path, and the adapter moves things the stated way in about 15 % of prompts. The term
  (:func:`~.common.caption_contrast`) asks each clip's loss under the reversed caption to exceed the true
  caption's by a relative margin (10 %): ``W * relu((1 + m) L_true - L_swapped) / L_true``, on the clips
  whose caption has a motion to reverse (not the dropped ones), with the same noisy latents and
  timestep; its gradient rewards predictions that depend on what the caption says moves how. One more
  forward and backward pass of the batch (about twice the step's cost). The reversed captions come from the
  scene generator with the same caption seeds (:class:`~.data.SceneChunks` ``contrast="motion"``).
  ``--contrast-min-t T`` keeps the term to the clips drawn at timesteps >= T: the adapter reads the
  motion words most at high noise, where a sampler decides what moves where (the swapped caption costs
  +8.9 % of loss at t >= 800 against +4.2-4.6 % between 200 and 800,
  ``benchmarks/probe_motion_timesteps.py``), and the second pass then runs on about 1.5 (1000 - T) / 1000
  of the batch (:func:`~.common.contrast_rows`). That saves FLOPs, not time, on an H200: the small
  UNet is launch-bound, so a pass of 15 clips costs nearly what one of 48 does (5.8 -> 3.2 steps/s at
  T = 800, ``benchmarks/RESULTS.md``, "ninth lease"). The main loss keeps its uniform timesteps either way.
* **Loss moved towards what changes (``--frame-deviation-weight``, ``--motion-region-weight``; off).**
  :func:`frame_weighted_mse` weights the part of the v-error that differs between frames, or the positions
  where the clean clip changes. Measured against the plain loss from the same start
  (``benchmarks/RESULTS.md``, "eleventh lease"): no gain in motion (17.6 / 19.1 / 14.1 %), because about
  70 % of the loss is already between frames (each frame's own noise), and the region weight costs the
  object count. Kept as options, off by default.
* **Held-out probe.** Before and after training, the v-loss on fixed held-out clips (t in
  [200, 800), and again in [800, 1000)) with the true captions, with the clip's frames shuffled in time, with the motions of
  the caption turned the other way, and with the empty caption: true < shuffled says the adapter uses
  the order of frames, true < swapped that it reads the motion from the text.

``--sd DIR`` picks the frozen base (default ``assets/models/shapes-sd``): AnimateDiff adapters carry
over to fine-tuned bases, so the adapter may be trained on one shapes SD and used with its retrained
successor; the log records which base (hash of its UNet weights).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attncraft.errors import InputError
from attncraft.shapes.training import common
from attncraft.shapes.training.configs import MotionTrain, get_configs
from attncraft.shapes.training.data import (
    ChunkStream,
    DevicePool,
    SceneChunks,
    caption_fields,
    caption_tensors,
    fill_pool,
    maybe_refresh,
    tokenize,
)
from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids
from attncraft.video import motion_text_path as text_path

PROBE_SEED_BASE = 6_000_000
"""Held-out clips of the probe (disjoint from training and evaluation seeds)."""

HIGH_NOISE = (800, 1000)
"""The probe's second band of timesteps, where the adapter reads the motion words most
(``benchmarks/probe_motion_timesteps.py``): logged before and after training beside [200, 800)."""
DEFAULTS = {"num_frames": 16, "fps": 8.0}
"""Recommended video settings written into the adapter folder (the evaluation adds the guidance)."""


def load_frozen_sd(sd_dir: str | Path, device: torch.device):
    """The shapes SD folder's text encoder, VAE and UNet, frozen, in float32 on ``device``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(sd_dir), local_files_only=True, dtype=torch.float32,
                                                   safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    parts = [pipe.text_encoder, pipe.vae, pipe.unet]
    for part in parts:
        part.to(device).eval().requires_grad_(False)
    return pipe


def weights_fingerprint(folder: Path) -> str | None:
    """First 16 hex digits of the sha256 of a model folder's safetensors weights (which base)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_adapter(unet_config: dict[str, Any], cfg: MotionTrain, seed: int):
    from attncraft.shapes.models import build_shapes_motion_adapter, motion_config_for_unet

    base = motion_config_for_unet(unet_config, heads=cfg.heads, max_frames=max(32, cfg.long_frames))
    return build_shapes_motion_adapter(seed, overrides=base | (cfg.overrides or {}))


def load_init_adapter(path: str | Path, expected: dict[str, Any]):
    """A trained adapter to start from (``--init``), which must have the layout to be trained."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    for key in ("block_out_channels", "motion_layers_per_block", "motion_num_attention_heads"):
        have, want = adapter.config[key], expected[key]
        if (tuple(have) if isinstance(have, (list, tuple)) else have) != (tuple(want) if isinstance(want, (list, tuple)) else want):
            raise InputError(f"--init {path}: its {key} is {have}, the adapter to train has {want}",
                             "continue an adapter trained with this configuration, or leave --init out")
    return adapter


def init_text_path(unet, init_dir: str | Path | None, say=print) -> dict[str, Any] | None:
    """Continue the motion text path of the ``--init`` adapter when it has one: its
    differences are added to ``unet`` (as the loader adds them for sampling, so training starts from
    the model the adapter folder gives), and the trained ones saved after are taken from the base
    SD again, so they hold both. Returns what it started from (None: the text path starts at zero).
    There is one kind of text path (``cross-kv``), and :func:`~attncraft.video.motion_text_path.apply_text_path`
    refuses a file that does not fit this UNet's layout."""
    if init_dir is None or not text_path.has_text_path(init_dir):
        return None
    record = text_path.apply_text_path(unet, init_dir)
    setattr(unet, text_path.APPLIED_ATTR, None)  # the training's own text path, saved anew after
    trained_on = (record.get("training") or {}).get("base_unet_sha256_16")
    say(f"motion text path continued from {init_dir} (trained on the SD UNet {trained_on})")
    return {"from": str(init_dir), "base_unet_sha256_16": trained_on}


def adapter_from_unet(unet, adapter) -> None:
    """Copy the motion modules of a trained ``UNetMotionModel`` back into its ``MotionAdapter``."""
    for block, source in zip(adapter.down_blocks, unet.down_blocks):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    for block, source in zip(adapter.up_blocks, unet.up_blocks):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    if adapter.mid_block is not None:
        adapter.mid_block.motion_modules.load_state_dict(unet.mid_block.motion_modules.state_dict())


def frame_subset(clips: torch.Tensor, frames: int, generator: random.Random) -> torch.Tensor:
    """``frames`` evenly strided frames of ``(B, C, L, h, w)`` clips: stride ``L // frames``, from a
    random start that keeps the whole window inside the clip."""
    length = clips.shape[2]
    if frames >= length:
        return clips
    stride = length // frames
    start = generator.randint(0, length - 1 - stride * (frames - 1))
    return clips[:, :, start:start + stride * (frames - 1) + 1:stride]


class ClipEncoder:
    """Renders chunks of moving scenes on the device and encodes their frames with the frozen VAE."""

    def __init__(self, vae, device: torch.device, frames: int, size: int, batch: int = 4096):
        self.vae, self.device, self.frames, self.size, self.batch = vae, device, frames, size, batch
        self.scaling = float(vae.config.scaling_factor)

    @torch.no_grad()
    def latents(self, scenes) -> torch.Tensor:
        from attncraft.shapes.world import render_video

        video = render_video(scenes, num_frames=self.frames, size=self.size, device=self.device).images
        n = video.shape[0]
        flat = video.reshape(n * self.frames, 3, self.size, self.size) * 2.0 - 1.0
        out = []
        for i in range(0, flat.shape[0], self.batch):
            with common.autocast(self.device):
                out.append(self.vae.encode(flat[i:i + self.batch]).latent_dist.mean.float() * self.scaling)
        z = torch.cat(out)
        return z.view(n, self.frames, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()  # (N, C, F, h, w)

    def __call__(self, chunk) -> dict[str, torch.Tensor]:
        return {"latents": self.latents(chunk.scenes), **caption_tensors(chunk)}


OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def swap_motions(scene):
    """The scene with every motion turned the other way (direction of a move, grow/shrink, sense of a
    rotation, target of a colour change): the same objects, the opposite change."""
    from dataclasses import replace

    from attncraft.shapes.world import COLORS

    objects = []
    for obj in scene.objects:
        motions = []
        for m in obj.motions:
            if m.kind == "move":
                m = replace(m, direction=OPPOSITE[m.direction])
            elif m.kind in ("grow", "shrink"):
                m = replace(m, kind="shrink" if m.kind == "grow" else "grow")
            elif m.kind == "rotate":
                m = replace(m, amount=-m.amount)
            elif m.kind == "recolor":
                m = replace(m, to_color=next(c for c in COLORS if c not in (m.to_color, obj.color)))
            motions.append(m)
        objects.append(replace(obj, motions=tuple(motions)))
    return scene.with_objects(objects)


def training_alphas_cumprod(device: torch.device) -> torch.Tensor:
    """The motion stage's noise schedule (SD's scaled-linear betas, cumulated in float64), on ``device``."""
    from attncraft.shapes.models import NOISE_SCHEDULE

    betas = torch.linspace(NOISE_SCHEDULE["beta_start"] ** 0.5, NOISE_SCHEDULE["beta_end"] ** 0.5,
                           NOISE_SCHEDULE["num_train_timesteps"], dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float().to(device)


def with_frame_weights(cfg: MotionTrain, args: common.RunArgs) -> MotionTrain:
    """``cfg`` with ``--frame-deviation-weight`` / ``--motion-region-weight`` applied and checked."""
    if args.frame_deviation_weight is not None:
        cfg = replace(cfg, frame_deviation_weight=float(args.frame_deviation_weight))
    if args.motion_region_weight is not None:
        cfg = replace(cfg, motion_region_weight=float(args.motion_region_weight))
    if not cfg.frame_deviation_weight > 0:
        raise InputError(f"--frame-deviation-weight must be > 0, not {cfg.frame_deviation_weight:g}",
                         "pass a weight such as 4, or 1 for the plain loss")
    if not cfg.motion_region_weight >= 0:
        raise InputError(f"--motion-region-weight must be >= 0, not {cfg.motion_region_weight:g}",
                         "pass a weight such as 8, or 0 for off")
    return cfg


def frame_weighted_mse(err: torch.Tensor, z0: torch.Tensor | None = None, deviation_weight: float = 1.0,
                       region_weight: float = 0.0) -> torch.Tensor:
    """Per-clip mean squared v-error of ``err`` (``(B, C, F, H, W)``, frames on dim 2), with the two
    re-weightings of the motion stage (both off by default: then exactly ``err.pow(2).mean``).

    * ``deviation_weight`` (``--frame-deviation-weight``): the error splits exactly into its mean over
      the frames and what is left, ``mean_f e^2 = (mean_f e)^2 + mean_f (e - mean_f e)^2``; the second
      part, the error in how the frames differ from each other (where a wrong or missing motion shows),
      is multiplied by the weight. 1 is the plain loss.
    * ``region_weight`` (``--motion-region-weight``): a per-clip spatial weight ``1 + W * r / max r``,
      ``r`` the clean clip's change over time at each latent position (the largest deviation of a frame
      from the clip's mean over frames, averaged over channels), normalised to mean 1 over the
      positions, so the loss of a clip keeps its scale and only moves towards where something moves,
      grows, turns or appears. A clip without change keeps weight 1 everywhere (a largest change below
      1e-3, the rounding of a mean over frames, counts as none: latents are of order 1).
    """
    if deviation_weight == 1.0 and region_weight == 0.0:
        return err.pow(2).mean(dim=(1, 2, 3, 4))
    if deviation_weight == 1.0:
        sq = err.pow(2)
    else:
        mean = err.mean(dim=2, keepdim=True)
        sq = mean.pow(2) + deviation_weight * (err - mean).pow(2)
    if region_weight != 0.0:
        if z0 is None:
            raise ValueError("the motion-region weight needs the clean clips")
        change = (z0 - z0.mean(dim=2, keepdim=True)).abs().amax(dim=2).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        peak = change.flatten(1).amax(dim=1).clamp(min=1e-3).view(-1, 1, 1, 1)  # below: rounding, not change
        weight = 1.0 + region_weight * change / peak
        weight = weight / weight.mean(dim=(1, 2, 3), keepdim=True)
        sq = sq * weight[:, :, None]
    return sq.mean(dim=(1, 2, 3, 4))


def motion_probe(unet, text_encoder, encoder: ClipEncoder, empty, alphas_cumprod, device, n: int, frames: int,
                 batch: int = 32, t_range: tuple[int, int] = (200, 800)) -> dict[str, float]:
    """Held-out v-MSE (t in ``t_range``, [200, 800) by default) of fixed clips, noise and timesteps, so
    that runs before and after training compare: with the true captions; with the clip's frames shuffled
    in time (true < shuffled: the adapter uses the order of frames); with captions whose motions are
    turned the other way ("moves left" for a clip moving right; true < swapped: it reads the motion from
    the text); and with the empty caption. ``true_between_frames`` / ``motion_swapped_between_frames``:
    the part of those two losses in how the frames differ (the error minus its mean over frames,
    :func:`frame_weighted_mse`). :func:`motion_probes` reads several bands of timesteps at once."""
    return motion_probes(unet, text_encoder, encoder, empty, alphas_cumprod, device, n, frames, batch, (t_range,))[0]


@torch.no_grad()  # a reading: no graph kept across the probe's batches
def motion_probes(unet, text_encoder, encoder: ClipEncoder, empty, alphas_cumprod, device, n: int, frames: int,
                  batch: int = 32, t_ranges=((200, 800),)) -> list[dict[str, float]]:
    """:func:`motion_probe` for each band of ``t_ranges``, each equal to its own call (the noise,
    timesteps and shuffles are drawn anew from the same seed per band), with the clips rendered and
    encoded, and the captions' text states computed, once for all the bands."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.training.data import tokenize_fast
    from attncraft.shapes.world import sample_scenes

    scenes = sample_scenes(n, seed=PROBE_SEED_BASE, num_objects=(1, 2), motion=True)
    z0 = frame_subset(torch.cat([encoder.latents(scenes[i:i + 256]) for i in range(0, n, 256)]), frames, random.Random(0))
    ids = {name: torch.from_numpy(tokenize_fast([caption_scene(make(s), seed=i) for i, s in enumerate(scenes)])).long().to(device)
           for name, make in (("true", lambda s: s), ("motion_swapped", swap_motions))}
    states: dict[tuple[str | None, int], torch.Tensor] = {}

    def text_states(captions: str | None, i: int) -> torch.Tensor:
        key = (captions, i)
        if key not in states:
            sl = slice(i, i + batch)
            with common.autocast(device):
                cond = empty.expand(z0[sl].shape[0], -1, -1) if captions is None else text_encoder(ids[captions][sl]).last_hidden_state
            states[key] = cond.float().repeat_interleave(z0.shape[2], dim=0)
        return states[key]

    readings = []
    for t_range in t_ranges:
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(z0.shape, generator=g).to(device)
        t = torch.randint(int(t_range[0]), int(t_range[1]), (n,), generator=g).to(device)
        perm = torch.stack([torch.randperm(z0.shape[2], generator=g) for _ in range(n)]).to(device)
        shuffled = torch.gather(z0, 2, perm[:, None, :, None, None].expand_as(z0))
        out = {}
        for name, clips, captions in (("true", z0, "true"), ("frames_shuffled", shuffled, "true"),
                                      ("motion_swapped", z0, "motion_swapped"), ("empty", z0, None)):
            noisy, target, _ = common.v_targets(clips, noise, t, alphas_cumprod)
            losses, between = [], []
            for i in range(0, n, batch):
                sl = slice(i, i + batch)
                with common.autocast(device):
                    pred = unet(noisy[sl], t[sl], encoder_hidden_states=text_states(captions, i), return_dict=False)[0]
                err = pred.float() - target[sl]
                losses.append(err.pow(2).mean(dim=(1, 2, 3, 4)))
                between.append((err - err.mean(dim=2, keepdim=True)).pow(2).mean(dim=(1, 2, 3, 4)))
            out[name] = float(torch.cat(losses).mean())
            if name in ("true", "motion_swapped"):
                out[f"{name}_between_frames"] = float(torch.cat(between).mean())
        readings.append(out)
    return readings


def _probe_line(probe: dict[str, float]) -> str:
    line = " / ".join(f"{probe[k]:.4f}" for k in ("true", "frames_shuffled", "motion_swapped", "empty"))
    if "true_between_frames" in probe:
        line += (f"; between frames: true {probe['true_between_frames']:.4f}, motions swapped "
                 f"{probe['motion_swapped_between_frames']:.4f}")
    return line


def save_adapter_folder(out: Path, adapter, defaults: dict[str, Any]) -> None:
    """Save a ``MotionAdapter`` folder in fp16 safetensors, with the recommended video settings."""
    from attncraft.loading import DEFAULTS_FILE

    out.mkdir(parents=True, exist_ok=True)
    adapter.to(torch.float16).save_pretrained(str(out), safe_serialization=True)
    (out / DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")


def train_motion(args: common.RunArgs, cfg: MotionTrain | None = None, quiet: bool = False) -> dict[str, Any]:
    from diffusers import UNetMotionModel

    from attncraft.shapes.models import SHAPES_SD_DIR

    cfg = common.with_contrast(common.apply_overrides(cfg or get_configs(args.config).motion, args), args)
    cfg = with_frame_weights(cfg, args)
    inherited = None
    if args.text_path:
        cfg = replace(cfg, text_path=args.text_path)
    elif cfg.text_path is None and text_path.has_text_path(args.init_dir):
        # a continuation is of the model the folder gives, text path included: without this, the
        # motion modules would train on the base's cross-attention and be saved without their path
        inherited = text_path.read_text_path(args.init_dir)[1]["kind"]
        cfg = replace(cfg, text_path=inherited)
    if args.text_path_lr is not None:
        cfg = replace(cfg, text_path_lr=args.text_path_lr)
    out, device, budget, max_steps, workers, say = common.start_stage("motion", args, cfg, quiet).unpack()
    sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
    if inherited:
        say(f"--init {args.init_dir} has a motion text path: it is continued ('{inherited}'), as if --text-path {inherited}")
    n_caps = len(cfg.caption_omits)
    contrast = cfg.contrast > 0
    reweighted = cfg.frame_deviation_weight != 1.0 or cfg.motion_region_weight != 0.0
    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=cfg.caption_omits, num_objects=cfg.num_objects,
                                     motion=True, contrast="motion" if contrast else None), workers=workers)
    sd = load_frozen_sd(sd_dir, device)
    # captions are CLIP ids (pools, probe); a pruned shapes SD encoder takes its own ids
    text_encoder, vae = pipeline_encoder_for_clip_ids(sd), sd.vae
    adapter = build_adapter(dict(sd.unet.config), cfg, args.seed)
    if args.init_dir:
        adapter = load_init_adapter(args.init_dir, dict(adapter.config))
    unet = UNetMotionModel.from_unet2d(sd.unet, adapter).to(device)
    unet.freeze_unet2d_params()
    del sd
    motion_params = [p for p in unet.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in motion_params)
    text_base, text_params, text_init = None, [], None
    if cfg.text_path:
        text_base = text_path.mark_trainable(unet, cfg.text_path)  # the base SD's values: deltas are taken from them
        text_init = init_text_path(unet, args.init_dir, say)
        text_params = text_path.text_path_parameters(unet, cfg.text_path)
        say(f"motion text path '{cfg.text_path}': {len(text_params)} tensors of the spatial cross-attention "
            f"({sum(p.numel() for p in text_params) / 1e6:.3f} M params) trained too, peak lr {cfg.text_path_lr:g} "
            f"after {cfg.text_path_warmup} warm-up steps, no weight decay")
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = cfg.image_size // scale
    length = max(cfg.frames, cfg.long_frames)
    say(f"MotionAdapter {n_params / 1e6:.3f} M params on {device} (frozen base {sd_dir}); clips of {length} frames "
        f"at {cfg.image_size} px ({latent}x{latent} latents); budget {args.minutes} min")

    encoder = ClipEncoder(vae, device, length, cfg.image_size)
    fields = {"latents": ((4, length, latent, latent), torch.float16), **caption_fields(n_caps, contrast)}
    if contrast:
        low = f", timesteps >= {cfg.contrast_min_t} only" if cfg.contrast_min_t > 0 else ""
        say(f"caption contrast: weight {cfg.contrast:g}, margin {cfg.contrast_margin:g} (reversed-motion captions{low})")
    if reweighted:
        say(f"loss re-weighted towards what changes between frames: frame-deviation weight {cfg.frame_deviation_weight:g}, "
            f"motion-region weight {cfg.motion_region_weight:g}")
    pool = DevicePool(cfg.pool, fields, device)
    fill_pool(pool, stream, encoder, limit_s=cfg.pool_fill_limit_s, log=say)

    with torch.no_grad():
        empty = text_encoder(torch.from_numpy(tokenize([""])).long().to(device)).last_hidden_state.float()
    alphas_cumprod = training_alphas_cumprod(device)
    n_t = alphas_cumprod.shape[0]

    probe_args = dict(n=cfg.probe_examples, frames=cfg.frames, t_ranges=((200, 800), HIGH_NOISE))
    probe_names = "true caption / frames shuffled / motions swapped in the caption / empty caption"
    unet.eval()
    probe_before, high_before = motion_probes(unet, text_encoder, encoder, empty, alphas_cumprod, device, **probe_args)
    say(f"held-out v-loss before training ({probe_names}): {_probe_line(probe_before)}")
    say(f"  the same at t in [{HIGH_NOISE[0]}, {HIGH_NOISE[1]}): {_probe_line(high_before)}")
    unet.train()

    groups: list[dict[str, Any]] = [{"params": motion_params}]
    if text_params:
        groups.append({"params": text_params, "weight_decay": 0.0, "peak_lr": cfg.text_path_lr,
                       "warmup": cfg.text_path_warmup})
    trained = motion_params + text_params
    opt = common.adamw(groups, cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    ema = common.PowerEMA(unet, gamma=cfg.ema_gamma)
    model_fn = common.CompiledOrEager(unet, args.compile, say)
    log = common.LossLog("motion", every_s=cfg.log_every_s, quiet=quiet)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    pick = random.Random(args.seed)
    long_steps = 0
    contrast_log = common.ContrastLog()
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encoder)
        frames = cfg.long_frames if pick.random() < cfg.long_fraction else cfg.frames
        long_steps += frames == cfg.long_frames
        B = max(1, cfg.batch * cfg.frames // frames)
        idx = pool.sample_index(B)
        z0 = frame_subset(pool.data["latents"][idx], frames, pick).float()
        cap = torch.randint(0, n_caps, (B,), device=device)
        ids = pool.data["tokens"][idx, cap].long()
        with torch.no_grad(), common.autocast(device):
            cond = text_encoder(ids).last_hidden_state.float()
        drop = torch.rand(B, device=device) < cfg.cfg_dropout
        cond = torch.where(drop[:, None, None], empty.expand(B, -1, -1), cond).repeat_interleave(z0.shape[2], dim=0)
        noise = torch.randn_like(z0)
        t = torch.randint(0, n_t, (B,), device=device)
        noisy, target, snr = common.v_targets(z0, noise, t, alphas_cumprod)
        weight = common.min_snr_v_weight(snr, cfg.min_snr_gamma)
        with common.autocast(device):
            pred = model_fn(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        err = pred.float() - target
        per = err.pow(2).mean(dim=(1, 2, 3, 4))
        if reweighted:  # the loss moved towards how the frames differ (the log keeps the plain v-MSE)
            loss = (frame_weighted_mse(err, z0, cfg.frame_deviation_weight, cfg.motion_region_weight) * weight).mean()
        else:
            loss = (per * weight).mean()
        if contrast:  # the same noisy clips under the reversed captions (no host sync: rows are weighted)
            sel = common.contrast_rows(t, cfg.contrast_min_t, n_t)  # all rows, or those of largest t
            swapped_ids = pool.data["swapped"][idx, cap].long()[sel]
            rows = (swapped_ids != ids[sel]).any(dim=1) & ~drop[sel] & (t[sel] >= cfg.contrast_min_t)
            with torch.no_grad(), common.autocast(device):
                cond_sw = text_encoder(swapped_ids).last_hidden_state.float().repeat_interleave(z0.shape[2], dim=0)
            with common.autocast(device):
                pred_sw = model_fn(noisy[sel], t[sel], encoder_hidden_states=cond_sw, return_dict=False)[0]
            per_sw = (pred_sw.float() - target[sel]).pow(2).mean(dim=(1, 2, 3, 4))
            term = common.caption_contrast(per[sel], per_sw, cfg.contrast_margin, rows)
            loss = loss + cfg.contrast * term
            contrast_log.add(step, term, rows, batch=B)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        opt.step()
        ema.update()
        log.add(per.mean().detach())  # unweighted v-MSE: comparable across runs
        log.maybe_print(step + 1, lr, budget, extra=f"({frames} frames)")
    train_s = steps.finish(log)
    step = steps.done
    stream.close()

    unet.eval()
    ema.copy_to(unet)
    probe_after, high_after = motion_probes(unet, text_encoder, encoder, empty, alphas_cumprod, device, **probe_args)
    say(f"held-out v-loss after training ({probe_names}): {_probe_line(probe_after)}")
    say(f"  the same at t in [{HIGH_NOISE[0]}, {HIGH_NOISE[1]}): {_probe_line(high_after)}")
    adapter_from_unet(unet, adapter)
    save_adapter_folder(out, adapter, DEFAULTS)
    text_info = None
    if text_base is not None:
        deltas = text_path.text_path_deltas(unet, text_base)
        rel = torch.stack([d.norm() / text_base[n].float().norm().cpu().clamp(min=1e-12) for n, d in deltas.items()])
        text_info = {"kind": cfg.text_path, "tensors": len(deltas), "params": sum(d.numel() for d in deltas.values()),
                     "lr": cfg.text_path_lr, "warmup": cfg.text_path_warmup,
                     "relative_change": {"mean": float(rel.mean()), "max": float(rel.max())},
                     "base_unet_sha256_16": weights_fingerprint(sd_dir / "unet"), "steps": steps.done,
                     "initialised_from": text_init}
        text_path.save_text_path(out / text_path.TEXT_PATH_FILE, deltas, cfg.text_path, training=text_info)
        say(f"motion text path saved: {len(deltas)} tensors, relative change mean {text_info['relative_change']['mean']:.3f} "
            f"max {text_info['relative_change']['max']:.3f}")
    info = {
        "model": "shapes-motion",
        "adapter_params": n_params,
        "text_path": text_info,
        "caption_contrast": contrast_log.record(cfg),
        "frame_weights": {"frame_deviation_weight": cfg.frame_deviation_weight,
                          "motion_region_weight": cfg.motion_region_weight} if reweighted else None,
        "adapter_config": {k: v for k, v in dict(adapter.config).items() if not k.startswith("_")},
        "initialised_from": common.init_provenance(args.init_dir, "motion_adapter") if args.init_dir else None,
        "sd_dir": str(sd_dir),
        "sd_unet_sha256_16": weights_fingerprint(sd_dir / "unet"),
        **common.run_stats(step, cfg.batch, train_s, budget),
        "frames": cfg.frames,
        "long_frames": cfg.long_frames,
        "long_steps": long_steps,
        "image_size": cfg.image_size,
        "pool": {"capacity": cfg.pool, "clips_added": pool.added},
        "prediction_type": "v_prediction",
        "compiled": model_fn.compiled,
        "ema": f"power-function, gamma={cfg.ema_gamma}",
        "heldout_v_loss": {"before": probe_before, "after": probe_after},
        "heldout_v_loss_high_noise": {"t_range": list(HIGH_NOISE), "before": high_before, "after": high_after},
        "folder_bytes": common.folder_size(out),
        **common.summarize_losses(log.history),
    }
    common.write_training_log(out, "motion", args, info)
    say(f"saved {out} ({info['folder_bytes'] / 1e6:.2f} MB) after {step} steps, {info['train_seconds']}s")
    info["loss_history"] = log.history
    return info
