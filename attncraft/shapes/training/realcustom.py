"""RealCustom on the Shapes world: training data, the training run, and the measured effect.

**The task.** A *subject* is one patterned object (shape, colour, pattern) seen alone on some
background. A *target* is a new scene that contains it (new cell, new size) with 0-2 other objects
of other shapes. Its prompt names the subject by its *real word*, the shape noun, with size and
position but without colour or pattern ("a big star on the left and a dotted blue heart at the
top on a gray background"): Shapes SD alone draws a star of some colour and pattern; RealCustom
should draw the subject's, and leave the rest of the prompt in control.

* **Held-out subjects**: 29 of the 144 (shape, colour, pattern) combinations
  (:func:`is_held_out`) never appear as training subjects; all evaluations use them, on seeds
  below 10,000,000 (training draws from seeds above).
* **Training** (``python -m attncraft.shapes.training realcustom``): the shipped Shapes SD
  (``--sd``) and the Shapes CLIP vision tower (``--clip``) frozen; an on-device pool of encoded
  examples (target latents, caption states, subject encoder states, subject masks) refreshed from
  worker processes; the loss of :mod:`attncraft.realcustom.training`; power-function EMA of the
  trained parts, which are saved (fp16 safetensors, with the config and the recommended sampling
  settings in the metadata) with ``training_log.json``. Then a short evaluation: a sweep of
  ``omega_i`` on a separate set picks the recommended value, and held-out subjects are scored
  with and without RealCustom (``realcustom_eval.json`` / ``.md``).
* **Measurement** (``python -m attncraft.shapes.training realcustom-eval``): the rows of
  ``benchmarks/RESULTS.md`` (at least 200 images each, the same initial noise for every row).

Metrics, all by the reader (no learned model), per image:

* *subject fidelity*: the object matched to the subject (matching by what the prompt states) has
  the subject's colour, pattern and shape (``identity`` = all three);
* *text controllability*: the count is right and every attribute the prompt states is right for
  every object (the subject's size and position, all attributes of the other objects), and the
  background;
* *mask IoU*: the influence mask of the last step against the subject's ground-truth mask (the
  target scene rendered), as a soft IoU (``sum min(M, G) / sum max(M, G)``, the mask upsampled
  bilinearly to 64x64), and the fraction of the ground truth inside the mask's support. For plain
  Shapes SD the mask the same settings would make from the word's aggregated cross-attention at
  the last step takes its place.

The trained parts depend on the base UNet (the visual keys/values live in its attention spaces)
and on the image encoder: retrain them whenever Shapes SD's UNet or Shapes CLIP changes.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attncraft.shapes.captions import BACKGROUND_PHRASES, POSITION_PP, SIZE_WORDS, _article, _join, _noun_phrase
from attncraft.shapes.training import common
from attncraft.shapes.training.data import Chunk, ChunkStream, DevicePool, SceneChunks, fill_pool, maybe_refresh, to_unit, tokenize_fast
from attncraft.shapes.world import BACKGROUNDS, COLORS, JITTER, PATTERNS, POSITIONS, SHAPES, SIZES, Scene, SceneObject

SUBJECT_PATTERNS = PATTERNS[1:]
SWEEP_SEED, EVAL_SEED, PROBE_SEED = 11, 12, 6_000_000
GAMMA_SCOPES = (0.05, 0.1, 0.25, 0.5)


# --------------------------------------------------------------------------------------- the task
def is_held_out(shape: str, color: str, pattern: str) -> bool:
    """The 29 subject combinations that never appear in training (balanced over every attribute)."""
    return (SHAPES.index(shape) + 2 * COLORS.index(color) + 3 * PATTERNS.index(pattern)) % 5 == 0


@dataclass(frozen=True)
class SubjectExample:
    subject: Scene
    """The subject alone."""
    target: Scene
    """A new scene with it; ``target.objects[0]`` is the subject."""
    caption: str
    """The target's prompt with the subject named by its word only (no colour, no pattern)."""
    described: str
    """The same prompt with the subject's colour and pattern in words (a reference)."""
    word: str


def subject_caption(scene: Scene, rng: random.Random, describe_subject: bool = False) -> str:
    """Caption of a target whose first object is the subject: every object with its size and
    position, the others with colour and pattern, the subject with neither unless described."""
    phrases = []
    for i, obj in enumerate(scene.objects):
        if i == 0 and not describe_subject:
            size = rng.choice(SIZE_WORDS[obj.size])
            noun = f"{_article(size)} {size} {obj.shape}"
        else:
            noun = _noun_phrase(obj, rng, size=True, pattern=True)
        phrases.append(f"{noun} {rng.choice(POSITION_PP[obj.position])}")
    rng.shuffle(phrases)
    return f"{_join(phrases, rng, video=False)} {rng.choice(BACKGROUND_PHRASES).format(scene.background)}"


def sample_examples(n: int, seed: int, held_out: bool | None = False) -> list[SubjectExample]:
    """``n`` (subject, target, prompt) examples, deterministically from ``seed``; ``held_out``
    keeps only held-out subject combinations (True), only the others (False) or any (None)."""
    rng = random.Random(seed)
    rand = rng.random

    def pick(seq):
        return seq[int(rand() * len(seq))]

    def offset():
        return (round((rand() - 0.5) * 2 * JITTER, 4), round((rand() - 0.5) * 2 * JITTER, 4))

    out = []
    for _ in range(n):
        while True:
            shape, color, pattern = pick(SHAPES), pick(COLORS), pick(SUBJECT_PATTERNS)
            if held_out is None or is_held_out(shape, color, pattern) == held_out:
                break
        alone = SceneObject(shape, color, size=pick(SIZES), position=pick(POSITIONS), pattern=pattern, offset=offset())
        cells = rng.sample(range(9), 1 + int(rand() * 3))
        objects = [SceneObject(shape, color, size=pick(SIZES), position=POSITIONS[cells[0]], pattern=pattern, offset=offset())]
        others = [s for s in SHAPES if s != shape]
        for c in cells[1:]:
            other_pattern = "plain" if rand() < 0.4 else pick(SUBJECT_PATTERNS)
            objects.append(SceneObject(pick(others), pick(COLORS), size=pick(SIZES), position=POSITIONS[c],
                                       pattern=other_pattern, offset=offset()))
        target = Scene(tuple(objects), background=pick(BACKGROUNDS))
        wording = rand()  # both prompts draw their wording from the same seed
        caption = subject_caption(target, random.Random(wording))
        described = subject_caption(target, random.Random(wording), describe_subject=True)
        out.append(SubjectExample(Scene((alone,), background=pick(BACKGROUNDS)), target, caption, described, shape))
    return out


@dataclass
class SubjectChunk(Chunk):
    examples: list[SubjectExample] = field(default_factory=list)


class SubjectChunks(SceneChunks):
    """An endless seeded stream of training examples (non-held-out subjects), tokenised."""

    def __init__(self, chunk_size: int, held_out: bool | None = False, seed_base: int | None = None):
        from attncraft.shapes.training.data import TRAIN_SEED_BASE

        super().__init__(chunk_size, caption_omits=(), seed_base=TRAIN_SEED_BASE if seed_base is None else seed_base)
        self.held_out = held_out

    def chunk(self, k: int) -> SubjectChunk:
        examples = sample_examples(self.chunk_size, self.seed_base + k, held_out=self.held_out)
        tokens = tokenize_fast([e.caption for e in examples])
        return SubjectChunk(k, [e.target for e in examples], tokens, examples=examples)


# ------------------------------------------------------------------------------------- the config
@dataclass
class RealCustomTrain:
    batch: int = 256
    lr: float = 3e-4
    warmup: int = 200
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    min_snr_gamma: float = 5.0
    gamma_num_range: tuple[float, float] = (0.3, 1.0)
    ema_gamma: float = 6.94
    train_mask: str = "none"  # "none": the paper's unmasked training; "subject": the ground-truth mask
    init: str = "zero_value"
    scoring_hidden: int = 256
    pool: int = 65536
    chunk: int = 1024
    refresh_every: int = 8
    workers: int = 10
    pool_fill_limit_s: float = 40.0
    reserve_s: float = 70.0  # kept at the end of the budget for saving and the short evaluation
    probe_examples: int = 512
    max_steps: int | None = None
    log_every_s: float = 15.0
    # the short evaluation after training
    sweep_subjects: int = 128
    sweep_image_guidance: tuple[float, ...] = (1.5, 3.0, 5.0, 8.0)
    eval_subjects: int = 256
    eval_steps: int = 25
    gen_batch: int = 256
    score_workers: int = 12


def realcustom_config(name: str) -> RealCustomTrain:
    """``full`` (one H200, minutes), ``cpu`` (a CPU, an hour: small batches, short evaluation) or
    ``smoke`` (seconds, tests)."""
    if name == "full":
        return RealCustomTrain()
    if name == "cpu":
        return RealCustomTrain(batch=32, lr=1e-3, warmup=50, pool=4096, chunk=256, refresh_every=16, workers=0,
                               pool_fill_limit_s=120.0, reserve_s=600.0, probe_examples=128, sweep_subjects=32,
                               sweep_image_guidance=(3.0, 6.0), eval_subjects=48, gen_batch=16, score_workers=0)
    if name == "smoke":
        return RealCustomTrain(batch=4, lr=3e-3, warmup=2, pool=64, chunk=16, refresh_every=4, workers=0,
                               pool_fill_limit_s=30.0, reserve_s=0.0, probe_examples=8, max_steps=25,
                               log_every_s=1e9, sweep_subjects=2, sweep_image_guidance=(3.0,), eval_subjects=3,
                               eval_steps=2, gen_batch=4, score_workers=0, scoring_hidden=16)
    raise ValueError(f"unknown config {name!r} (smoke, cpu or full)")


# --------------------------------------------------------------------------------------- encoding
def subject_mask_latent(masks: torch.Tensor, latent: int, dilate: int = 2) -> torch.Tensor:
    """(N, H, W) bool ground-truth masks -> (N, 1, latent, latent) soft masks (dilated, area-averaged)."""
    m = masks[:, None].float()
    if dilate:
        m = F.max_pool2d(m, 2 * dilate + 1, stride=1, padding=dilate)
    return F.interpolate(m, size=(latent, latent), mode="area")


class Encoders:
    """The frozen base models that turn examples into pool tensors."""

    def __init__(self, pipe, encoder, device: torch.device):
        from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids

        self.pipe, self.encoder, self.device = pipe, encoder, device
        self.text_encoder = pipeline_encoder_for_clip_ids(pipe)  # chunks hold CLIP ids
        self.scaling = float(pipe.vae.config.scaling_factor)
        self.latent = pipe.unet.config.sample_size

    @torch.no_grad()
    def __call__(self, chunk: SubjectChunk) -> dict[str, torch.Tensor]:
        from attncraft.shapes.world import render_scenes

        dev = self.device
        examples = chunk.examples
        target = render_scenes([e.target for e in examples], size=64, device=dev)
        subject = render_scenes([e.subject for e in examples], size=64, device=dev).images
        with common.autocast(dev):
            z = self.pipe.vae.encode(to_unit(_u8(target.images), self.pipe.vae.dtype)).latent_dist.mean.float() * self.scaling
            ids = torch.from_numpy(np.asarray(chunk.tokens)).long().to(dev)
            text = self.text_encoder(ids)[0].float()
            feats = self.encoder(self.encoder.preprocess(_u8(subject).float() / 255.0)).float()
        return {"latents": z, "text": text, "feats": feats, "mask": subject_mask_latent(target.masks[:, 0], self.latent)}


def _u8(images: torch.Tensor) -> torch.Tensor:
    """Render output in [0, 1] -> uint8, as the other Shapes pools store (and the VAE was trained on)."""
    return (images * 255.0).round_().to(torch.uint8)


# --------------------------------------------------------------------------------------- models
def load_base(args: common.RunArgs, device: torch.device):
    """(pipeline, image encoder) from ``--sd`` and ``--clip`` (defaults: the shipped Shapes SD and RealCustom's image
    encoder, ``shapes-realcustom/image_encoder``; ``--clip`` takes any vision model folder, a whole CLIP too)."""
    from attncraft.realcustom.encoder import load_image_encoder, shapes_encoder_dir
    from attncraft.shapes.models import SHAPES_SD_DIR, load_shapes_sd_pipeline

    sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
    clip_dir = Path(args.clip_dir) if args.clip_dir else shapes_encoder_dir()
    pipe = load_shapes_sd_pipeline(sd_dir, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    for part in (pipe.unet, pipe.vae, pipe.text_encoder):
        part.eval().requires_grad_(False)
    encoder = load_image_encoder(str(clip_dir), layer=-2, device=device)
    return pipe, encoder, sd_dir, clip_dir


def encoder_reference(clip_dir: str | Path | None) -> str:
    """The image-encoder reference a trained checkpoint records: ``shapes`` for the Shapes image encoder (the
    default), else the folder trained with (absolute), so that loading the checkpoint takes the encoder it was
    trained on, not the Shapes one."""
    from attncraft.realcustom.encoder import shapes_encoder_dir

    if clip_dir is None or Path(clip_dir).resolve() == shapes_encoder_dir().resolve():
        return "shapes"
    return str(Path(clip_dir).resolve())


# --------------------------------------------------------------------------------------- training
def _probe(trainer, pool_encode, n: int, chunk: int, device, use_mask: bool, visual_on: bool = True) -> float:
    """Held-out loss on fixed examples, noise and timesteps (``visual_on=False``: the plain UNet)."""
    from attncraft.realcustom.training import Batch

    ds = SubjectChunks(min(chunk, n), held_out=None, seed_base=PROBE_SEED)
    parts = [pool_encode(ds.chunk(k)) for k in range((n + ds.chunk_size - 1) // ds.chunk_size)]
    enc = {k: torch.cat([p[k] for p in parts])[:n] for k in parts[0]}
    g = torch.Generator(device="cpu").manual_seed(0)
    z0 = enc["latents"]
    noisy_target = trainer.noise(z0, generator=g)
    losses = []
    with torch.no_grad():
        for i in range(0, n, 256):
            sl = slice(i, i + 256)
            batch = Batch(z0[sl], enc["text"][sl], enc["feats"][sl], enc["mask"][sl] if use_mask else None)
            noised = tuple(x[sl] for x in noisy_target)
            if visual_on:
                with common.autocast(device):
                    losses.append(trainer.loss(batch, gamma_num=0.8, noised=noised).float())
            else:
                with common.autocast(device):
                    pred = trainer.unet(noised[0], noised[2], encoder_hidden_states=batch.text, return_dict=False)[0]
                per = (pred.float() - noised[1]).pow(2).mean(dim=(1, 2, 3))
                snr = noised[3] / (1.0 - noised[3])
                losses.append(per * torch.clamp(snr + 1.0, max=trainer.min_snr_gamma) / (snr + 1.0))
    return float(torch.cat(losses).mean())


def train_realcustom(args: common.RunArgs, cfg: RealCustomTrain | None = None, quiet: bool = False,
                     base: tuple | None = None) -> dict[str, Any]:
    """Train the RealCustom parts on Shapes; save them, the log and a short evaluation in ``--out``.

    ``base`` = (pipeline, image encoder) to use instead of loading ``--sd``/``--clip``.
    """
    from attncraft.shapes.training.evaluate import Scorer

    cfg = common.apply_overrides(cfg or realcustom_config(args.config), args)
    out, device, budget, max_steps, workers, say = common.start_stage("realcustom", args, cfg, quiet).unpack()
    scorer = Scorer(cfg.score_workers)  # forked before CUDA starts
    try:
        return _train(args, cfg, quiet, base, out, device, budget, max_steps, workers, say, scorer)
    finally:
        scorer.close()


def _train(args, cfg, quiet, base, out, device, budget, max_steps, workers, say, scorer) -> dict[str, Any]:
    from attncraft.realcustom.modules import RealCustomAdapter, save_adapter
    from attncraft.realcustom.training import Batch, Trainer, alphas_cumprod_of

    stream = ChunkStream(SubjectChunks(cfg.chunk), workers=workers)
    if base is None:
        pipe, encoder, sd_dir, clip_dir = load_base(args, device)
    else:
        (pipe, encoder), sd_dir, clip_dir = base, None, None
    unet = pipe.unet
    adapter = RealCustomAdapter.from_unet(unet, encoder.hidden_size, encoder=encoder_reference(clip_dir),
                                          encoder_layer=encoder.layer,
                                          scoring=True, scoring_hidden=cfg.scoring_hidden, init=cfg.init, seed=args.seed)
    adapter = adapter.to(device)
    n_params = sum(p.numel() for p in adapter.parameters())
    say(f"RealCustom parts {n_params / 1e6:.3f} M params ({len(adapter.layer_names)} cross-attention layers) on {device}; "
        f"UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M frozen; budget {args.minutes} min")
    encode = Encoders(pipe, encoder, device)
    latent = unet.config.sample_size
    n_tok, width = 77, unet.config.cross_attention_dim
    n_img = encoder.encode(torch.zeros(1, 3, 64, 64, device=device)).shape[1]
    pool = DevicePool(cfg.pool, {"latents": ((4, latent, latent), torch.float16), "text": ((n_tok, width), torch.float16),
                                 "feats": ((n_img, encoder.hidden_size), torch.float16),
                                 "mask": ((1, latent, latent), torch.float16)}, device)
    fill_pool(pool, stream, encode, limit_s=cfg.pool_fill_limit_s, log=say)

    alphas = alphas_cumprod_of(dict(pipe.scheduler.config)).to(device)
    trainer = Trainer(unet, adapter, alphas, pipe.scheduler.config.prediction_type, gamma_num_range=cfg.gamma_num_range,
                      min_snr_gamma=cfg.min_snr_gamma)
    use_mask = cfg.train_mask == "subject"
    probe = {"plain_unet": _probe(trainer, encode, cfg.probe_examples, cfg.chunk, device, use_mask, visual_on=False),
             "before": _probe(trainer, encode, cfg.probe_examples, cfg.chunk, device, use_mask)}
    adapter.train()
    params = adapter.trainable_parameters()
    opt = common.adamw(params, cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    ema = common.PowerEMA(adapter, gamma=cfg.ema_gamma)
    log = common.LossLog("realcustom", every_s=cfg.log_every_s, quiet=quiet)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encode)
        idx = pool.sample_index(cfg.batch)
        data = pool.data
        batch = Batch(data["latents"][idx].float(), data["text"][idx].float(), data["feats"][idx].float(),
                      data["mask"][idx].float() if use_mask else None)
        with common.autocast(device):
            per = trainer.loss(batch)
        loss = per.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        ema.update()
        log.add(loss.detach())
        log.maybe_print(step + 1, lr, budget)
    train_s = steps.finish(log)
    stream.close()
    ema.copy_to(adapter)
    adapter.eval()
    probe["after"] = _probe(trainer, encode, cfg.probe_examples, cfg.chunk, device, use_mask)
    trainer.close()
    say(f"held-out loss: plain UNet {probe['plain_unet']:.5f}, before {probe['before']:.5f}, after {probe['after']:.5f}")

    adapter.config.defaults = {"guidance_mode": "paper", "gamma_scope": 0.25, "gamma_num": 0.8, "mask_mode": "max",
                               "image_guidance_scale": cfg.sweep_image_guidance[len(cfg.sweep_image_guidance) // 2]}
    path = save_adapter(adapter, out)
    info: dict[str, Any] = {
        "model": "shapes-realcustom",
        "params": n_params,
        "layers": len(adapter.layer_names),
        **common.run_stats(steps.done, cfg.batch, train_s, budget),
        "pool": {"capacity": cfg.pool, "examples_added": pool.added},
        "train_mask": cfg.train_mask,
        "init": cfg.init,
        "ema": f"power-function, gamma={cfg.ema_gamma}",
        "sd_dir": str(sd_dir) if sd_dir else None,
        "clip_dir": str(clip_dir) if clip_dir else None,
        "heldout_loss": probe,
        "config": asdict(cfg),
        **common.summarize_losses(log.history),
    }
    # the short evaluation: pick omega_i on the sweep set, then score held-out subjects
    evaluation = quick_evaluation(pipe, adapter, encoder, cfg, device, default_guidance(sd_dir), scorer, say)
    adapter.config.defaults["image_guidance_scale"] = evaluation["chosen_image_guidance_scale"]
    path = save_adapter(adapter, out)
    info["checkpoint_bytes"] = path.stat().st_size
    info["evaluation"] = {k: v for k, v in evaluation.items() if k != "rows"}
    info["wall_seconds_with_evaluation"] = round(budget.elapsed(), 1)
    common.write_training_log(out, "realcustom", args, info)
    write_report(out / "realcustom_eval", evaluation, " ".join(["python", "-m", "attncraft.shapes.training", *args.argv[1:]]))
    say(f"saved {path} ({info['checkpoint_bytes'] / 1e6:.2f} MB) after {steps.done} steps, {info['train_seconds']}s; "
        f"wall {budget.elapsed():.0f}s")
    info["loss_history"] = log.history
    info["adapter"] = adapter
    return info


# ------------------------------------------------------------------------------------ evaluation
@dataclass
class Row:
    """One row of the measurement: plain Shapes SD (``method="sd"``) or RealCustom with settings."""

    name: str
    method: str = "realcustom"
    prompt: str = "word"  # "word": the subject's word alone; "described": colour and pattern in words
    options: dict[str, Any] = field(default_factory=dict)


def default_rows(gamma_scopes=GAMMA_SCOPES) -> list[Row]:
    rows = [Row("Shapes SD, word alone (baseline)", "sd"),
            Row("Shapes SD, subject described in words (reference)", "sd", prompt="described"),
            Row("RealCustom (scoring, gamma_scope 0.25)", options={"gamma_scope": 0.25}),
            Row("RealCustom without the scoring module", options={"gamma_scope": 0.25, "use_scoring": False})]
    rows += [Row(f"RealCustom, gamma_scope {g}", options={"gamma_scope": g}) for g in gamma_scopes if g != 0.25]
    rows += [Row("RealCustom, binary mask", options={"gamma_scope": 0.25, "mask_mode": "binary"}),
             Row("RealCustom, separate mask pass (mask of z_t)", options={"gamma_scope": 0.25, "mask_pass": "separate"}),
             Row("RealCustom, mask read from the text + image rows", options={"gamma_scope": 0.25, "mask_pass": "conditional"})]
    return rows


def mask_source_rows() -> list[Row]:
    """Where the word map comes from: the text-only rows (the method) or the text + image rows
    (``mask_pass="conditional"``, the cheaper option), with the paper's and the release's guidance."""
    release = {"guidance_mode": "release", "use_scoring": False}
    return [Row("RealCustom (scoring, gamma_scope 0.25)", options={"gamma_scope": 0.25}),
            Row("RealCustom, mask read from the text + image rows", options={"gamma_scope": 0.25, "mask_pass": "conditional"}),
            Row("RealCustom, release guidance (no scoring)", options={"gamma_scope": 0.25, **release}),
            Row("RealCustom, release guidance, mask read from the text + image rows",
                options={"gamma_scope": 0.25, "mask_pass": "conditional", **release})]


def score_example(item: tuple[np.ndarray, dict[str, Any]]) -> dict[str, float]:
    """Reader scores of one generated image (see the module docstring); runs in worker processes."""
    from attncraft.shapes.captions import ParsedObject, ParsedScene
    from attncraft.shapes.reader import read_image
    from attncraft.shapes.scoring import _match

    image, info = item
    target = Scene.from_dict(info["target"])
    subject = target.objects[0]
    expected = [ParsedObject(subject.shape, None, subject.size, subject.position, None)]
    expected += [ParsedObject(o.shape, o.color, o.size, o.position, o.pattern) for o in target.objects[1:]]
    read = read_image(image)
    found = read.objects
    pairs = _match(expected, found, getattr, False)
    text_ok = []
    for i, e in enumerate(expected):
        ok = i in pairs
        if ok:
            det = found[pairs[i]]
            ok = all(getattr(e, a) is None or getattr(det, a) == getattr(e, a) for a in ("shape", "color", "size", "position", "pattern"))
        text_ok.append(ok)
    det = found[pairs[0]] if 0 in pairs else None
    out = {
        "subject_found": float(det is not None),
        "color": float(det is not None and det.color == subject.color),
        "pattern": float(det is not None and det.pattern == subject.pattern),
        "shape": float(det is not None and det.shape == subject.shape),
        "count": float(len(found) == len(expected)),
        "others": float(all(text_ok[1:])) if len(expected) > 1 else float("nan"),
        "text": float(len(found) == len(expected) and all(text_ok) and read.background == target.background),
    }
    out["identity"] = float(out["color"] and out["pattern"] and out["shape"])
    out["both"] = float(out["identity"] and out["text"])
    if info.get("map") is not None:
        truth = torch.from_numpy(np.asarray(info["truth"], dtype=np.float32))
        m = F.interpolate(torch.from_numpy(np.asarray(info["map"], dtype=np.float32))[None, None], size=tuple(truth.shape),
                          mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        out["mask_iou"] = float(torch.minimum(m, truth).sum() / torch.maximum(m, truth).sum().clamp_min(1e-9))
        out["mask_recall"] = float(((m > 0) & (truth > 0)).sum() / truth.sum().clamp_min(1.0))
    return out


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in scores for k in s})
    res: dict[str, float] = {"n": len(scores)}
    for k in keys:
        vals = [s[k] for s in scores if k in s and np.isfinite(s[k])]
        if vals:
            res[k] = float(np.mean(vals))
    return res


class _MapAtLastStep:
    """For plain Shapes SD: the word's aggregated cross-attention of the cond rows at the last step."""

    def __init__(self, pipe, weights: torch.Tensor, steps: int):
        from attncraft.attention_processors import get_manager
        from attncraft.attention_processors.realcustom import WordMapReader

        self.reader = WordMapReader()
        self.manager = get_manager(pipe)
        self.weights, self.steps = weights, steps

    def __call__(self, pipe, i, t, kwargs):
        if i == self.steps - 2 or self.steps == 1:
            b = self.weights.shape[0]
            self.manager.install(self.reader)
            self.reader.arm(slice(b, 2 * b), self.weights)
        return kwargs


@torch.no_grad()
def generate_row(rc_pipe, row: Row, examples: list[SubjectExample], steps: int, guidance: float, batch: int,
                 seed: int, device: torch.device) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Images (N, 64, 64, 3) and the last-step masks (or word maps) of one row."""
    from attncraft.attention_processors import get_manager
    from attncraft.attention_processors.realcustom import adaptive_mask, token_weights, word_token_indices
    from attncraft.shapes.world import render_scenes

    images, maps = [], []
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        prompts = [e.described if row.prompt == "described" else e.caption for e in chunk]
        gen = torch.Generator(device="cpu").manual_seed(seed + start)
        latents = torch.randn((len(chunk), 4, 16, 16), generator=gen).to(device, rc_pipe.unet.dtype)
        common_kw = dict(num_inference_steps=steps, guidance_scale=guidance, height=64, width=64, latents=latents,
                         output_type="np")
        if row.method == "sd":
            idx = [word_token_indices(rc_pipe.tokenizer, p, e.word) for p, e in zip(prompts, chunk)]
            hook = _MapAtLastStep(rc_pipe, token_weights(idx, 77, device), steps)
            try:
                res = rc_pipe(prompt=prompts, callback_on_step_end=hook, **common_kw)
                word_map = hook.reader.word_map() if hook.reader.layers_read else None
            finally:
                get_manager(rc_pipe).remove(hook.reader)
            if word_map is None:
                maps += [None] * len(chunk)
            else:
                masks = adaptive_mask(word_map, row.options.get("gamma_scope", 0.25), row.options.get("mask_mode", "max"))
                maps += [m.float().cpu().numpy() for m in masks[:, 0]]
        else:
            subjects = render_scenes([e.subject for e in chunk], size=64, device=device).images
            res = rc_pipe(prompt=prompts, subject_image=subjects, subject_word=[e.word for e in chunk], **common_kw,
                          **row.options)
            maps += [m.numpy() for m in res.masks[-1]]
        images.append(np.asarray(res.images, dtype=np.float32))
    return np.concatenate(images), maps


def measure(pipe, adapter, encoder, rows: list[Row], examples: list[SubjectExample], steps: int, guidance: float,
            batch: int, seed: int, device: torch.device, scorer, say=print) -> list[dict[str, Any]]:
    """Generate and score every row on the same examples and the same initial noise."""
    from attncraft.shapes.world import render_scenes

    from attncraft.pipelines.realcustom import realcustom_pipeline_for

    rc = realcustom_pipeline_for(pipe)
    rc.load_realcustom(adapter, image_encoder=encoder)
    truth = render_scenes([e.target for e in examples], size=64, device="cpu").masks[:, 0].numpy()
    results = []
    for row in rows:
        t0 = time.time()
        images, maps = generate_row(rc, row, examples, steps, guidance, batch, seed, device)
        payload = [{"target": e.target.to_dict(), "map": m, "truth": truth[i]} for i, (e, m) in enumerate(zip(examples, maps))]
        scores = scorer.map(score_example, list(zip(list(images), payload)))
        summary = summarize(scores)
        results.append({"row": row.name, "method": row.method, "prompt": row.prompt, "options": row.options, **summary,
                        "seconds": round(time.time() - t0, 1), "samples": images[:16]})
        say(f"{row.name}: identity {summary.get('identity', 0):.3f} (colour {summary.get('color', 0):.3f}, pattern "
            f"{summary.get('pattern', 0):.3f}), text {summary.get('text', 0):.3f}, both {summary.get('both', 0):.3f}, "
            f"mask IoU {summary.get('mask_iou', float('nan')):.3f} [{time.time() - t0:.0f}s]")
    return results


def quick_evaluation(pipe, adapter, encoder, cfg: RealCustomTrain, device, guidance: float, scorer,
                     say=print) -> dict[str, Any]:
    """The training job's evaluation: omega_i sweep (sweep set), then baseline vs RealCustom."""
    sweep_examples = sample_examples(cfg.sweep_subjects, SWEEP_SEED, held_out=True)
    sweep = measure(pipe, adapter, encoder, [Row(f"omega_i {w}", options={"image_guidance_scale": w}) for w in cfg.sweep_image_guidance],
                    sweep_examples, cfg.eval_steps, guidance, cfg.gen_batch, SWEEP_SEED, device, scorer, say)
    best = max(range(len(sweep)), key=lambda i: (sweep[i].get("both", 0.0), sweep[i].get("identity", 0.0)))
    chosen = cfg.sweep_image_guidance[best]
    examples = sample_examples(cfg.eval_subjects, EVAL_SEED, held_out=True)
    rows = [Row("Shapes SD, word alone (baseline)", "sd"),
            Row(f"RealCustom (omega_i {chosen}, gamma_scope 0.25)", options={"image_guidance_scale": chosen})]
    final = measure(pipe, adapter, encoder, rows, examples, cfg.eval_steps, guidance, cfg.gen_batch, EVAL_SEED, device, scorer, say)
    return {"guidance_scale": guidance, "steps": cfg.eval_steps, "sweep": _strip(sweep), "chosen_image_guidance_scale": chosen,
            "subjects": len(examples), "seed": EVAL_SEED, "rows": final, "results": _strip(final)}


def default_guidance(sd_dir: Path | None) -> float:
    """The Shapes SD folder's recommended guidance scale (omega_t)."""
    from attncraft.shapes.models import shapes_sd_defaults

    return float(shapes_sd_defaults(sd_dir).get("guidance_scale", 3.0)) if sd_dir else 3.0


def _strip(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "samples"} for r in results]


def to_markdown(evaluation: dict[str, Any], command: str) -> str:
    lines = ["# RealCustom on Shapes: measured effect", "",
             f"{evaluation.get('subjects')} held-out subjects (29 held-out (shape, colour, pattern) combinations, seed "
             f"{evaluation.get('seed')}), {evaluation.get('steps')} steps, guidance (omega_t) {evaluation.get('guidance_scale')}, "
             f"omega_i {evaluation.get('chosen_image_guidance_scale')}; the same initial noise in every row.", "",
             f"Command: `{command}`", "",
             "| row | n | identity | colour | pattern | shape | text all right | others right | both | mask soft IoU | GT in mask |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(r, k):
        return f"{100 * r[k]:.1f} %" if k in r else "-"

    for r in evaluation["results"]:
        iou = f"{r['mask_iou']:.3f}" if "mask_iou" in r else "-"
        lines.append(f"| {r['row']} | {r['n']} | {pct(r, 'identity')} | {pct(r, 'color')} | {pct(r, 'pattern')} | "
                     f"{pct(r, 'shape')} | {pct(r, 'text')} | {pct(r, 'others')} | {pct(r, 'both')} | {iou} | "
                     f"{pct(r, 'mask_recall')} |")
    if evaluation.get("sweep"):
        lines += ["", "omega_i sweep (sweep set, seed 11):", "", "| omega_i | identity | text | both |", "|---|---|---|---|"]
        for r in evaluation["sweep"]:
            lines.append(f"| {r['options']['image_guidance_scale']} | {pct(r, 'identity')} | {pct(r, 'text')} | {pct(r, 'both')} |")
    return "\n".join(lines) + "\n"


def write_report(stem: Path, evaluation: dict[str, Any], command: str) -> None:
    from attncraft.shapes.training.evaluate import save_grid

    stem.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: v for k, v in evaluation.items() if k != "rows"}
    payload["command"] = command
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    stem.with_suffix(".md").write_text(to_markdown(evaluation, command))
    rows = evaluation.get("rows") or []
    if rows and all(len(r["samples"]) for r in rows):
        save_grid(stem.with_name(stem.name + "_samples.png"), np.concatenate([r["samples"][:8] for r in rows]), cols=8)


def evaluate_realcustom(args: common.RunArgs, n: int = 200, rows: list[Row] | None = None, quiet: bool = False,
                        steps: int = 25, batch: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """The measurement of ``benchmarks/RESULTS.md``: every row on ``n`` held-out subjects."""
    from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, load_adapter
    from attncraft.shapes.training.evaluate import Scorer

    say = (lambda m: None) if quiet else (lambda m: print(f"[realcustom-eval] {m}", flush=True))
    t0 = time.time()
    device = common.setup_device(args.device)
    scorer = Scorer(workers if workers is not None else (12 if device.type == "cuda" else 0))
    try:
        pipe, encoder, sd_dir, _ = load_base(args, device)
        if device.type == "cuda":
            pipe, encoder = pipe.to(dtype=torch.float16), encoder.to(dtype=torch.float16)
        adapter = load_adapter(args.adapter_dir or SHAPES_ADAPTER_DIR, unet=pipe.unet, device=device, dtype=pipe.unet.dtype)
        guidance = default_guidance(sd_dir)
        examples = sample_examples(n, EVAL_SEED, held_out=True)
        chosen = adapter.config.defaults.get("image_guidance_scale")
        results = measure(pipe, adapter, encoder, rows or default_rows(), examples, steps, guidance,
                          batch or (256 if device.type == "cuda" else 16), EVAL_SEED, device, scorer, say)
    finally:
        scorer.close()
    evaluation = {"guidance_scale": guidance, "steps": steps, "chosen_image_guidance_scale": chosen, "subjects": n,
                  "seed": EVAL_SEED, "rows": results, "results": _strip(results), "hardware": common.hardware(device),
                  "wall_seconds": round(time.time() - t0, 1)}
    out = Path(args.out)
    write_report(out / "realcustom_measure", evaluation,
                 " ".join(["python", "-m", "attncraft.shapes.training", *args.argv[1:]]))
    say(f"wrote {out / 'realcustom_measure.md'} in {evaluation['wall_seconds']}s")
    return evaluation
