"""Stage ``unet``: text-to-image training of the shapes SD UNet; writes the whole SD folder.

Choices, and why (the budget is ~6 minutes on one H200):

* **v-prediction** with SD's scaled-linear schedule. At the high-noise steps, where a sampler decides
  colour, shape and position of each object, an epsilon model's implied x0 is a noisy division by
  sqrt(alpha_bar) ~ 0.07; a v model predicts a well-scaled target there, trains faster at the same
  budget and samples well in ~25 DPM-Solver++ steps. Loss weights: the v-MSE equals the x0-MSE
  weighted by ``snr + 1``; we clip that x0 weight at 5 (``w_v = min(snr + 1, 5) / (snr + 1)``), a
  min-SNR-style truncation (Hang et al. 2023) that tames the many easy low-noise steps but, unlike
  diffusers' ``min(snr, 5) / (snr + 1)``, keeps full weight on the high-noise steps where the layout
  (which colour and shape goes where) is decided, which is what the reader measures.
* **Frozen** text tower (from the trained shapes CLIP folder; a warm start from a shapes SD folder
  keeps that folder's own text encoder, the one its UNet was trained with) and **frozen** VAE; latents of the
  pool are computed once (posterior mean x ``scaling_factor``) so a step costs only the UNet.
* **Caption dropout** 10 %: the text embedding is replaced by that of the empty prompt (what the SD
  pipeline uses as the negative prompt), for classifier-free guidance.
* **Large batch, high LR**: batch 512, AdamW lr 5e-4 (warm-up 500 steps, then cosine over the
  *wall-clock* budget down to 10 %), grad-clip 1, bf16 autocast, TF32.
* **Power-function EMA** (EDM2, sigma_rel ~0.1) of the UNet weights, which are the ones saved: its
  window scales with the run, whatever the steps/s turns out to be.
* **Warm starts** (``--init``; config ``finetune``, see :data:`~attncraft.shapes.training.configs.FINETUNE_UNET`)
  change the data and the timesteps, never the objective: more relation captions (vertical ones
  above all) and half of each batch at t >= 500, for a UNet that must learn which object of a
  vertical relation goes on top. :func:`relation_flip_probe` measures whether it did.
* **Relation contrast** (``--contrast W``, off by default): the relation fine-tunes left the held-out
  loss of a vertical relation caption and of its flipped twin ("above" for "below") within 1 % of each
  other: the plain objective hardly rewards reading which way a vertical relation goes. The term
  :func:`~.common.caption_contrast` asks each image's loss under its caption with the relation words
  flipped (:func:`~attncraft.shapes.captions.flip_relations`) to exceed the true caption's by 10 %, on
  the examples whose caption states a relation; one more UNet pass (and text-encoder pass, through which
  it trains the encoder too when that is trained).
* **Text encoder trained too** (``train_text``: config ``finetune-text`` or ``--train-text``, see
  :data:`~attncraft.shapes.training.configs.FINETUNE_TEXT`): the parts :func:`select_text_parameters`
  picks get their own learning rate and warm-up, the EMA covers them, and the log records which
  tensors were trained, that the others are bit for bit unchanged, and how far the states moved
  (:func:`text_drift`). The saved text encoder keeps the folder's format (fp16 safetensors under
  ``text_model.*``, the same config, the tokenizer untouched).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attncraft.shapes.models import legacy_text_encoder_keys, load_in_float32_by_default
from attncraft.shapes.training import common
from attncraft.shapes.training.configs import UnetTrain, get_configs
from attncraft.shapes.training.data import (
    EOS_ID,
    ChunkStream,
    DevicePool,
    SceneChunks,
    captioned_batch,
    caption_fields,
    caption_tensors,
    captioned_ids,
    contrast_ids,
    fill_pool,
    maybe_refresh,
    render_uint8,
    to_unit,
    tokenize,
)
from attncraft.shapes.vocab import VocabRemap, for_clip_ids


def default_vae_dir() -> Path:
    from attncraft.assets import models_dir

    return models_dir() / "shapes-vae"


def load_text_encoder(clip_dir: str | Path, device: torch.device):
    from transformers import CLIPModel

    from attncraft.shapes.models import text_encoder_from_clip

    clip = CLIPModel.from_pretrained(str(clip_dir), local_files_only=True, dtype=torch.float32)
    enc = text_encoder_from_clip(clip.float())
    del clip
    return enc.to(device).eval().requires_grad_(False)


def init_text_encoder_folder(init_dir: str | Path | None) -> Path | None:
    """The text encoder a warm-started UNet was trained with: ``<init>/text_encoder`` when ``--init``
    is a shapes SD pipeline folder, else ``None`` (a bare UNet folder: the CLIP's text tower is used)."""
    if not init_dir:
        return None
    folder = Path(init_dir) / "text_encoder"
    return folder if (folder / "config.json").is_file() else None


def load_sd_text_encoder(folder: str | Path, device: torch.device):
    """A saved shapes SD ``CLIPTextModel`` folder, frozen, in fp32."""
    from transformers import CLIPTextModel

    enc = CLIPTextModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    return enc.to(device).eval().requires_grad_(False)


def select_text_parameters(text_encoder, last_layers: int | None = None,
                           embeddings: bool = True) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Mark what a joint fine-tune trains of a ``CLIPTextModel`` (everything else is frozen): the last
    ``last_layers`` transformer layers (None: all) with the final layer norm, and the token embeddings
    when ``embeddings``; never the position embeddings. Returns ``{"layers": [...], "embeddings": [...],
    "frozen": [...]}`` of ``(name, parameter)``."""
    import re

    n_layers = int(text_encoder.config.num_hidden_layers)
    first = 0 if last_layers is None else max(0, n_layers - int(last_layers))
    groups: dict[str, list] = {"layers": [], "embeddings": [], "frozen": []}
    for name, param in text_encoder.named_parameters():
        short = name.removeprefix("text_model.")
        layer = re.match(r"encoder\.layers\.(\d+)\.", short)
        if short.startswith("embeddings.token_embedding."):
            group = "embeddings" if embeddings else "frozen"
        elif (layer and int(layer.group(1)) >= first) or short.startswith("final_layer_norm."):
            group = "layers"
        else:
            group = "frozen"
        param.requires_grad_(group != "frozen")
        groups[group].append((name, param))
    return groups


def describe_text_training(groups: dict[str, list], n_layers: int, last_layers: int | None) -> str:
    """One line for the training log: which parts of the text encoder are trained and which are frozen."""
    first = 0 if last_layers is None else max(0, n_layers - int(last_layers))
    trained = [f"transformer layers {first}-{n_layers - 1} of 0-{n_layers - 1}" if first < n_layers else None,
               "final layer norm" if first < n_layers else None,
               "token embeddings (rows of the words the captions use)" if groups["embeddings"] else None]
    frozen = ["position embeddings", f"layers 0-{first - 1}" if first else None,
              None if groups["embeddings"] else "token embeddings"]
    n_layers_p, n_emb = (sum(p.numel() for _, p in groups[g]) for g in ("layers", "embeddings"))
    return (f"text encoder trained: {', '.join(t for t in trained if t)} ({n_layers_p / 1e6:.3f} M parameters in "
            f"the layers, {n_emb / 1e6:.3f} M in the token embeddings); frozen: {', '.join(f for f in frozen if f)}")


def relative_state_change(h1: torch.Tensor, h2: torch.Tensor, ids: torch.Tensor, eos_id: int) -> dict[str, float]:
    """``|h1 - h2| / |h1|`` per token of text states ``(N, L, D)`` of token ids ``(N, L)``: its mean over the
    caption's tokens (up to the first end token), the largest, and its mean over the padding after it."""
    rel = (h1 - h2).float().norm(dim=-1) / h1.float().norm(dim=-1).clamp(min=1e-12)  # (N, L)
    eos = (ids == eos_id).int().argmax(dim=1)
    pos = torch.arange(ids.shape[1], device=ids.device)[None]
    words, pad = pos <= eos[:, None], pos > eos[:, None]
    return {"tokens": float((rel * words).sum() / words.sum()), "max": float(rel[words].max()),
            "after_end": float((rel * pad).sum() / pad.sum().clamp(min=1))}


@torch.no_grad()
def text_drift(before, after, device, n: int = 256) -> dict[str, dict[str, float]]:
    """How far a trained text encoder's states moved from the one it started from, on held-out captions
    (:data:`PROBE_SEED_BASE` scenes): one-object captions (colour, shape, pattern, size, position: what
    every other part reads) and multi-object captions with a relation, apart."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import sample_scenes

    groups: dict[str, list[str]] = {"one_object": [], "relations": []}
    for k, scene in enumerate(sample_scenes(n, seed=PROBE_SEED_BASE + 2, num_objects=(1, 2))):
        if len(scene.objects) == 1:
            groups["one_object"].append(caption_scene(scene, seed=k))
        else:
            groups["relations"].append(caption_scene(scene, seed=k, relation=1.0))
    out = {}
    for name, texts in groups.items():
        if not texts:
            continue
        ids = torch.from_numpy(tokenize(texts)).long().to(device)
        out[name] = {"captions": len(texts), **relative_state_change(
            before(ids).last_hidden_state, after(ids).last_hidden_state, ids, EOS_ID)}  # CLIP ids: CLIP's end token
    return out


def load_vae(vae_dir: str | Path, device: torch.device):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True, torch_dtype=torch.float32)
    return vae.to(device).eval().requires_grad_(False)


def build_unet(cfg: UnetTrain, seed: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    from attncraft.shapes.models import shapes_unet_config

    kw = shapes_unet_config() | (cfg.overrides or {}) | {"cross_attention_dim": cross_attention_dim}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**kw)


def load_init_unet(path, cross_attention_dim: int):
    """A trained UNet to start from (``--init``): a UNet folder, or a shapes SD folder's ``unet/``."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(common.init_folder(path, "unet")), torch_dtype=torch.float32)
    if unet.config.cross_attention_dim != cross_attention_dim:
        raise ValueError(f"--init {path}: its UNet attends to {unet.config.cross_attention_dim}-d text, "
                         f"the text encoder gives {cross_attention_dim}-d")
    return unet


def save_sd_folder(out: Path, text_encoder, vae, unet, scheduler_name: str | None = None,
                   tokenizer_dir: Path | None = None, prune: bool = False) -> None:
    """Save a ``StableDiffusionPipeline`` folder (fp16 safetensors, no tokenizer.json).

    ``tokenizer_dir``: the tokenizer folder the text encoder belongs to (its files are copied; default
    the shipped CLIP tokenizer). ``prune``: cut the saved tokenizer and text encoder to the Shapes
    vocabulary (:func:`attncraft.shapes.vocab.prune_sd_vocabulary`; a no-op on a pruned one)."""
    from attncraft.shapes.models import DEFAULT_SCHEDULER, assemble_sd_pipeline, shapes_scheduler

    pipe = assemble_sd_pipeline(
        text_encoder=text_encoder.to(torch.float16),
        vae=vae.to(torch.float16),
        unet=unet.to(torch.float16),
        scheduler=shapes_scheduler(scheduler_name or DEFAULT_SCHEDULER),
    )
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    load_in_float32_by_default(Path(out) / "text_encoder")
    if tokenizer_dir is not None and Path(tokenizer_dir).resolve() != (out / "tokenizer").resolve():
        files = {n: (Path(tokenizer_dir) / n).read_bytes() for n in ("vocab.json", "merges.txt")}
        for name, data in files.items():
            (out / "tokenizer" / name).unlink(missing_ok=True)
            (out / "tokenizer" / name).write_bytes(data)
    slim_tokenizer_folder(out / "tokenizer")
    if prune:
        from attncraft.shapes.vocab import prune_sd_vocabulary

        prune_sd_vocabulary(out)
    legacy_text_encoder_keys(out / "text_encoder")


def slim_tokenizer_folder(folder: Path) -> None:
    """Keep vocab.json + merges.txt + configs; drop the 3.6 MB tokenizer.json (rebuilt on load)."""
    from attncraft.tokenizer import tokenizer_dir

    tj = folder / "tokenizer.json"
    if tj.exists():
        tj.unlink()
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).exists():
            (folder / name).write_bytes((tokenizer_dir() / name).read_bytes())
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    for key in ("is_local", "local_files_only", "name_or_path"):
        cfg.pop(key, None)
    cfg.update({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    cfg.setdefault("bos_token", "<|startoftext|>")
    cfg.setdefault("eos_token", "<|endoftext|>")
    cfg.setdefault("unk_token", "<|endoftext|>")
    cfg.setdefault("pad_token", "<|endoftext|>")
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


PROBE_SEED_BASE = 5_000_000
"""Held-out scenes of the conditioning probe (disjoint from training and evaluation seeds)."""


def _noised(z0: torch.Tensor, alphas_cumprod: torch.Tensor, t_range: tuple[int, int], seed: int):
    """Held-out noisy latents, timesteps and v targets (seeded, so every caption variant sees the same)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(z0.shape, generator=g).to(z0.device)
    t = torch.randint(*t_range, (z0.shape[0],), generator=g).to(z0.device)
    a_bar = alphas_cumprod[t]
    sa, sb = a_bar.sqrt()[:, None, None, None], (1.0 - a_bar).sqrt()[:, None, None, None]
    return sa * z0 + sb * noise, t, sa * noise - sb * z0


def _v_loss(unet, noisy, t, target, cond_of, device) -> float:
    """Mean v-MSE over the batch, in slices of 256; ``cond_of(slice)`` gives their text states."""
    losses, dtype = [], unet.dtype
    for i in range(0, noisy.shape[0], 256):
        sl = slice(i, i + 256)
        with common.autocast(device):
            pred = unet(noisy[sl].to(dtype), t[sl], encoder_hidden_states=cond_of(sl).to(dtype), return_dict=False)[0]
        losses.append((pred.float() - target[sl]).pow(2).mean(dim=(1, 2, 3)))
    return float(torch.cat(losses).mean())


@torch.no_grad()
def conditioning_probe(unet, text_encoder, encode, empty, alphas_cumprod, device, n: int, chunk: int,
                       n_caps: int) -> dict[str, float]:
    """Held-out v-MSE (t in [200, 800)) with the true caption, a caption of another scene, and none.

    A cheap check that the text conditioning is used: true < shuffled ~ empty.
    """
    from attncraft.shapes.training.data import SceneChunks

    ds = SceneChunks(min(chunk, n), caption_omits=(0.0,) * n_caps, seed_base=PROBE_SEED_BASE)
    zs, ids = [], []
    k = 0
    while sum(z.shape[0] for z in zs) < n:
        enc = encode(ds.chunk(k))
        zs.append(enc["latents"].float())
        ids.append(enc["tokens"][:, 0].long().to(device))
        k += 1
    z0, ids = torch.cat(zs)[:n], torch.cat(ids)[:n]
    noisy, t, target = _noised(z0, alphas_cumprod, (200, 800), seed=0)
    perm = torch.roll(torch.arange(n), 1).to(device)
    conds = {
        "true": lambda sl: text_encoder(ids[sl]).last_hidden_state,
        "shuffled": lambda sl: text_encoder(ids[perm[sl]]).last_hidden_state,
        "empty": lambda sl: empty.expand(ids[sl].shape[0], -1, -1),
    }
    return {name: _v_loss(unet, noisy, t, target, cond, device) for name, cond in conds.items()}


@torch.no_grad()
def relation_flip_probe(unet, text_encoder, encode, alphas_cumprod, device, n: int) -> dict[str, float]:
    """Held-out v-MSE at high noise (t in [500, 1000), where the layout is decided) of relation captions
    with their own relation word and with the opposite one ("a star above a heart" / "... below ..."),
    for the vertical and the horizontal words apart.

    A UNet that uses the direction of a relation does worse with the flipped word (ratio > 1); one
    that ignores it scores both the same (the UNet shipped before the relation fine-tune: 1.00 on
    vertical words).
    """
    from attncraft.shapes.captions import flip_relations
    from attncraft.shapes.training.data import Chunk
    from attncraft.shapes.training.evaluate import RELATION_EVAL_WORDS, relation_prompts

    sets = relation_prompts(max(1, n // len(RELATION_EVAL_WORDS)), seed=PROBE_SEED_BASE + 1)
    out = {}
    for axis, words in (("vertical", ("above", "over", "below", "under", "beneath")),
                        ("horizontal", ("left of", "right of"))):
        scenes = [s for w in words for s in sets[w][0]]
        prompts = [p for w in words for p in sets[w][1]]
        z0 = encode(Chunk(0, scenes, tokenize(prompts)[:, None]))["latents"].float()
        noisy, t, target = _noised(z0, alphas_cumprod, (500, alphas_cumprod.shape[0]), seed=1)
        for name, texts in (("true", prompts), ("flipped", [flip_relations(p) for p in prompts])):
            ids = torch.from_numpy(tokenize(texts)).long().to(device)
            out[f"{axis}_{name}"] = _v_loss(unet, noisy, t, target,
                                            lambda sl: text_encoder(ids[sl]).last_hidden_state, device)
        out[f"{axis}_ratio"] = out[f"{axis}_flipped"] / max(out[f"{axis}_true"], 1e-12)
    return out


class TextTraining:
    """The text encoder's side of a joint fine-tune: its trained parameters (:func:`select_text_parameters`),
    their optimiser groups (own peak learning rate and warm-up; no weight decay on the embeddings), and at
    the end what the training log records of it."""

    def __init__(self, text_encoder, cfg: UnetTrain, say, remap: VocabRemap | None = None):
        import copy

        self.encoder, self.cfg, self.remap = text_encoder, cfg, remap
        self.before = copy.deepcopy(text_encoder).eval().requires_grad_(False)
        self.groups = select_text_parameters(text_encoder, cfg.text_last_layers, cfg.text_embeddings)
        self.params = [p for g in ("layers", "embeddings") for _, p in self.groups[g]]
        text_encoder.train()
        self.summary = describe_text_training(self.groups, int(text_encoder.config.num_hidden_layers),
                                              cfg.text_last_layers)
        say(f"{self.summary}; peak lr {cfg.text_lr:g} after {cfg.text_warmup} warm-up steps")

    def param_groups(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        out = []
        for name, wd in (("layers", cfg.text_weight_decay), ("embeddings", 0.0)):
            if self.groups[name]:
                out.append({"params": [p for _, p in self.groups[name]], "weight_decay": wd,
                            "peak_lr": cfg.text_lr, "warmup": cfg.text_warmup})
        return out

    @torch.no_grad()
    def finish(self, device) -> dict[str, Any]:
        self.encoder.eval()
        old = dict(self.before.named_parameters())
        changed = {n: not torch.equal(p, old[n]) for g in ("layers", "embeddings") for n, p in self.groups[g]}
        rows = [0, 0]
        for n, p in self.groups["embeddings"]:
            rows = [int((p != old[n]).any(dim=1).sum()), p.shape[0]]
        info = {
            "summary": self.summary,
            "trained": [n for g in ("layers", "embeddings") for n, _ in self.groups[g]],
            "frozen": [n for n, _ in self.groups["frozen"]],
            "trained_params": sum(p.numel() for p in self.params),
            "frozen_unchanged": all(torch.equal(p, old[n]) for n, p in self.groups["frozen"]),
            "trained_tensors_changed": sum(changed.values()),
            "embedding_rows_changed": rows,
            "lr": self.cfg.text_lr, "warmup": self.cfg.text_warmup, "weight_decay": self.cfg.text_weight_decay,
            "last_layers": self.cfg.text_last_layers,
            "drift": text_drift(for_clip_ids(self.before, self.remap), for_clip_ids(self.encoder, self.remap), device),
        }
        self.before = None
        return info


def train_unet(args: common.RunArgs, cfg: UnetTrain | None = None, quiet: bool = False) -> dict[str, Any]:
    from attncraft.shapes.models import NOISE_SCHEDULE, SD_DEFAULTS_FILE, SHAPES_CLIP_DIR, shapes_sd_defaults

    cfg = common.apply_overrides(cfg or get_configs(args.config).unet, args)
    if args.train_text and not cfg.train_text:
        cfg = replace(cfg, train_text=True)
    if args.text_lr is not None:
        cfg = replace(cfg, text_lr=args.text_lr)
    cfg = common.with_contrast(cfg, args)
    contrast = cfg.contrast > 0
    out, device, budget, max_steps, workers, say = common.start_stage("unet", args, cfg, quiet).unpack()
    clip_dir = Path(args.clip_dir) if args.clip_dir else SHAPES_CLIP_DIR
    vae_dir = Path(args.vae_dir) if args.vae_dir else default_vae_dir()

    n_caps = len(cfg.caption_omits)
    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=cfg.caption_omits, relation=cfg.caption_relation,
                                     vertical=cfg.caption_vertical, contrast="relation" if contrast else None),
                         workers=workers)  # fmt: skip
    # A fine-tune of a shapes SD folder keeps the text encoder its UNet was trained with: the shapes CLIP's
    # text tower moves when the CLIP is fine-tuned (the mesh fine-tune trains it), SD's own copy does not.
    te_folder = init_text_encoder_folder(args.init_dir)
    text_encoder = load_sd_text_encoder(te_folder, device) if te_folder else load_text_encoder(clip_dir, device)
    text_encoder_from = str(te_folder) if te_folder else f"{clip_dir} (text tower)"
    say(f"text encoder: {text_encoder_from}")
    # the pools hold CLIP ids; a shapes SD's pruned encoder takes its own (attncraft.shapes.vocab)
    tokenizer_dir = te_folder.parent / "tokenizer" if te_folder and (te_folder.parent / "tokenizer").is_dir() else None
    remap = VocabRemap.for_folder(tokenizer_dir) if tokenizer_dir else None
    encode_ids = for_clip_ids(text_encoder, remap)
    text = TextTraining(text_encoder, cfg, say, remap) if cfg.train_text else None
    vae = load_vae(vae_dir, device)
    scaling = float(vae.config.scaling_factor)
    hidden = text_encoder.config.hidden_size
    unet = load_init_unet(args.init_dir, hidden) if args.init_dir else build_unet(cfg, args.seed, hidden)
    unet = unet.to(device).train()
    n_params = sum(p.numel() for p in unet.parameters())
    latent = 64 // 4
    say(f"UNet2DConditionModel {n_params / 1e6:.3f} M params on {device}; text hidden {hidden}; "
        f"VAE scaling {scaling:.4f}; budget {args.minutes} min")

    fields = {"latents": ((4, latent, latent), torch.float16), **caption_fields(n_caps, contrast)}
    if contrast:
        say(f"relation contrast: weight {cfg.contrast:g}, margin {cfg.contrast_margin:g} (captions with the relation "
            f"words flipped)")
    pool = DevicePool(cfg.pool, fields, device)

    @torch.no_grad()
    def encode(chunk):
        x = to_unit(render_uint8(chunk.scenes, device))
        with common.autocast(device):
            z = vae.encode(x).latent_dist.mean.float() * scaling
        return {"latents": z, **caption_tensors(chunk)}

    fill_pool(pool, stream, encode, limit_s=cfg.pool_fill_limit_s, log=say)

    with torch.no_grad():
        empty_ids = torch.from_numpy(tokenize([""])).long().to(device)
        empty = encode_ids(empty_ids).last_hidden_state.float()  # (1, 77, H)

    ac = torch.linspace(NOISE_SCHEDULE["beta_start"] ** 0.5, NOISE_SCHEDULE["beta_end"] ** 0.5,
                        NOISE_SCHEDULE["num_train_timesteps"], dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - ac, dim=0).float().to(device)
    n_t = alphas_cumprod.shape[0]

    params = list(unet.parameters())
    groups: list[dict[str, Any]] = [{"params": list(params)}]
    if text is not None:
        groups += text.param_groups()
        params += text.params
    opt = common.adamw(groups, cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    ema = common.PowerEMA(unet if text is None else torch.nn.ModuleList([unet, text_encoder]), gamma=cfg.ema_gamma)
    model_fn = common.CompiledOrEager(unet, args.compile, say)
    log = common.LossLog("unet", every_s=cfg.log_every_s, quiet=quiet)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    contrast_log = common.ContrastLog()
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encode)
        B = cfg.batch
        if contrast:  # the true and the relation-flipped captions of the same examples
            z0, ids, flipped_ids, rows = contrast_ids(pool, B, empty_ids, cfg.cfg_dropout)
            with torch.set_grad_enabled(text is not None), common.autocast(device):
                cond = encode_ids(ids).last_hidden_state.float()
                cond_flipped = encode_ids(flipped_ids).last_hidden_state.float()
        elif text is None:
            z0, cond = captioned_batch(pool, B, encode_ids, empty, cfg.cfg_dropout, common.autocast(device))
        else:
            z0, ids = captioned_ids(pool, B, empty_ids, cfg.cfg_dropout)
            with common.autocast(device):
                cond = encode_ids(ids).last_hidden_state.float()
        noise = torch.randn_like(z0)
        t = torch.randint(0, n_t, (B,), device=device)
        if cfg.high_noise_share > 0:
            high = torch.rand(B, device=device) < cfg.high_noise_share
            t = torch.where(high, torch.randint(n_t // 2, n_t, (B,), device=device), t)
        noisy, target, snr = common.v_targets(z0, noise, t, alphas_cumprod)
        weight = common.min_snr_v_weight(snr, cfg.min_snr_gamma)  # = min(1, gamma / (snr + 1))
        with common.autocast(device):
            pred = model_fn(noisy, t, encoder_hidden_states=cond, return_dict=False)[0]
        per = (pred.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss = (per * weight).mean()
        if contrast:
            with common.autocast(device):
                pred_flipped = model_fn(noisy, t, encoder_hidden_states=cond_flipped, return_dict=False)[0]
            per_flipped = (pred_flipped.float() - target).pow(2).mean(dim=(1, 2, 3))
            term = common.caption_contrast(per, per_flipped, cfg.contrast_margin, rows)
            loss = loss + cfg.contrast * term
            contrast_log.add(step, term, rows)
        common.descend(opt, loss, params, cfg.grad_clip, ema)
        log.add(per.mean().detach())  # unweighted v-MSE: comparable across runs
        log.maybe_print(step + 1, lr, budget)
    train_s = steps.finish(log)
    step = steps.done
    stream.close()

    unet.eval()
    ema.copy_to(unet if text is None else torch.nn.ModuleList([unet, text_encoder]))
    text_info: dict[str, Any] = {"summary": "text encoder frozen", "trained": []}
    if text is not None:
        text_info = text.finish(device)
        with torch.no_grad():
            empty = encode_ids(empty_ids).last_hidden_state.float()
        drift = text_info["drift"]
        say(f"text encoder: {text_info['trained_tensors_changed']} of {len(text_info['trained'])} trained tensors "
            f"changed, {text_info['embedding_rows_changed'][0]} embedding rows; frozen ones unchanged: "
            f"{text_info['frozen_unchanged']}; states moved on held-out captions by "
            + ", ".join(f"{k} {v['tokens']:.3f} (after the end token {v['after_end']:.3f})" for k, v in drift.items()))
    probe = conditioning_probe(unet, encode_ids, encode, empty, alphas_cumprod, device,
                               n=cfg.probe_examples, chunk=cfg.chunk, n_caps=n_caps)
    say("held-out v-loss with the true / a shuffled / the empty caption: "
        f"{probe['true']:.4f} / {probe['shuffled']:.4f} / {probe['empty']:.4f}")
    flip = relation_flip_probe(unet, encode_ids, encode, alphas_cumprod, device, n=cfg.probe_examples)
    say("held-out v-loss of relation captions (t >= 500), own word / opposite word: vertical "
        f"{flip['vertical_true']:.4f} / {flip['vertical_flipped']:.4f} (x{flip['vertical_ratio']:.3f}), horizontal "
        f"{flip['horizontal_true']:.4f} / {flip['horizontal_flipped']:.4f} (x{flip['horizontal_ratio']:.3f})")
    save_sd_folder(out, text_encoder, vae, unet, tokenizer_dir=tokenizer_dir, prune=True)
    defaults = shapes_sd_defaults(out)
    (out / SD_DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    info = {
        "model": "shapes-sd",
        "unet_params": n_params,
        "initialised_from": common.init_provenance(args.init_dir, "unet"),
        "text_encoder_params": sum(p.numel() for p in text_encoder.parameters()),
        "vae_params": sum(p.numel() for p in vae.parameters()),
        **common.run_stats(step, cfg.batch, train_s, budget),
        "pool": {"capacity": cfg.pool, "scenes_added": pool.added},
        "captions": {"omits": list(cfg.caption_omits), "relation_share": stream.dataset.relation_share,
                     "vertical_share": cfg.caption_vertical},
        "high_noise_share": cfg.high_noise_share,
        "relation_contrast": contrast_log.record(cfg),
        "prediction_type": "v_prediction",
        "compiled": model_fn.compiled,
        "ema": f"power-function, gamma={cfg.ema_gamma}",
        "clip_dir": str(clip_dir),
        "text_encoder_from": text_encoder_from,
        "text_encoder_training": text_info,
        "vae_dir": str(vae_dir),
        "heldout_v_loss": probe,
        "heldout_relation_flip_v_loss": flip,
        "folder_bytes": common.folder_size(out),
        **common.summarize_losses(log.history),
    }
    common.write_training_log(out, "unet", args, info)
    say(f"saved {out} ({info['folder_bytes'] / 1e6:.2f} MB) after {step} steps, {info['train_seconds']}s")
    info["loss_history"] = log.history
    return info
