"""Stage ``evaluate``: the ground-truth metrics of the Shapes models (the model card's numbers).

Everything is measured by the reader (:mod:`attncraft.shapes.scoring`), never by a learned model, on
held-out seeds (training draws scenes from seeds >= 10,000,000; evaluation from seeds 0..3):

* **shapes CLIP, zero-shot** (seed 0): ``clip_scenes`` single-object scenes (any size, pattern and
  background) against the 8 x 6 x 9 = 432 prompts ``"a {colour} {shape} {position phrase}"``; the
  prediction for an attribute is the argmax of the logits marginalised (logsumexp) over the other two
  attributes. Accuracy per attribute (targets >= 95 %) and of the joint argmax.
* **shapes SD**:
  1. a *sampler sweep* on a separate prompt set (seed 3): each scheduler x guidance scale at
     ``steps`` steps, scored by the mean of the per-image ``objects`` score; the best becomes the
     folder's default (``scheduler/`` and the guidance in ``attncraft_defaults.json``);
  2. the *final* numbers at that default: one-object prompts (seed 1) and two-object prompts (seed 2),
     full captions (``caption_scene(scene, seed=i)``: size, colour, pattern, shape, position or
     relation, background). Per attribute; "all attributes of every object correct" per image
     (``objects == 1`` and any stated relation holds; targets: colour and shape >= 90 % on one
     object, all correct >= 60 % on two); and the reader's ``exact`` (count and background too);
  3. ceilings: the same scores of the world's own renders, and of their VAE reconstructions.

Writes ``shapes_eval.json``, ``shapes_eval.md`` and ``sd_samples.png`` into ``--out``.

``--what motion`` evaluates the shapes motion adapter instead (:mod:`.motion_eval`; ``--adapter``
picks the adapter folder, ``--sd`` the base): ``motion_eval.json``, ``motion_eval.md`` and samples.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncraft.shapes.training import common
from attncraft.shapes.training.configs import EvalConfig, get_configs

CLIP_SEED, SD_ONE_SEED, SD_TWO_SEED, SWEEP_SEED, RELATION_SEED = 0, 1, 2, 3, 4
IMAGE_ATTRS = ("color", "shape", "size", "position", "pattern", "background", "relation")
RELATION_EVAL_WORDS: dict[str, tuple[str, ...]] = {
    "above": ("above",), "over": ("over",),
    "below": ("below",), "under": ("under",), "beneath": ("beneath",),
    "left of": ("to the left of", "left of"), "right of": ("to the right of", "right of"),
}  # fmt: skip
"""The relation words reported one by one, with the phrasings their prompts alternate between."""
RELATION_TARGET = 0.80
TWO_OBJECTS_TARGET = 0.90


# ------------------------------------------------------------------------------------------ CLIP
def zero_shot_prompts() -> tuple[list[str], tuple[int, int, int]]:
    from attncraft.shapes.captions import POSITION_PP
    from attncraft.shapes.world import COLORS, POSITIONS, SHAPES

    prompts = [f"a {c} {s} {POSITION_PP[p][0]}" for c in COLORS for s in SHAPES for p in POSITIONS]
    return prompts, (len(COLORS), len(SHAPES), len(POSITIONS))


@torch.no_grad()
def eval_clip(clip_dir: str | Path, cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    from attncraft.shapes.models import load_shapes_clip
    from attncraft.shapes.training.clip import clip_features
    from attncraft.shapes.training.data import render_uint8, to_unit, tokenize
    from attncraft.shapes.world import COLORS, POSITIONS, SHAPES, sample_scenes

    t0 = time.time()
    model = load_shapes_clip(clip_dir, torch_dtype=torch.float32).to(device).eval()
    scenes = sample_scenes(cfg.clip_scenes, seed=CLIP_SEED, num_objects=1)
    prompts, dims = zero_shot_prompts()
    txt = clip_features(model, input_ids=torch.from_numpy(tokenize(prompts)).long().to(device))
    imgs = []
    for i in range(0, len(scenes), 500):
        pix = to_unit(render_uint8(scenes[i:i + 500], device))
        imgs.append(clip_features(model, pixel_values=pix))
    img = torch.cat(imgs)
    scale = model.logit_scale.float().exp()
    logits = (scale * img @ txt.t()).view(-1, *dims)
    pred = {
        "color": torch.logsumexp(logits, dim=(2, 3)).argmax(1),
        "shape": torch.logsumexp(logits, dim=(1, 3)).argmax(1),
        "position": torch.logsumexp(logits, dim=(1, 2)).argmax(1),
    }
    truth = {
        "color": torch.tensor([COLORS.index(s.objects[0].color) for s in scenes], device=device),
        "shape": torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes], device=device),
        "position": torch.tensor([POSITIONS.index(s.objects[0].position) for s in scenes], device=device),
    }
    acc = {k: float((pred[k] == truth[k]).float().mean()) for k in pred}
    flat = logits.view(len(scenes), -1).argmax(1)
    joint_truth = (truth["color"] * dims[1] + truth["shape"]) * dims[2] + truth["position"]
    acc["joint"] = float((flat == joint_truth).float().mean())
    return {
        "scenes": len(scenes),
        "prompts": len(prompts),
        "protocol": "single-object held-out scenes (seed 0) vs 432 prompts 'a {colour} {shape} {position}'; "
                    "per-attribute argmax of logsumexp-marginalised logits",
        "accuracy": acc,
        "seconds": round(time.time() - t0, 1),
    }


def mesh_eval_conditions(n: int) -> dict[str, tuple[str, list, Any]]:
    """The zero-shot mesh evaluation's conditions: key -> (label, held-out scenes, render style)."""
    from attncraft.mesh.procedural import RenderStyle
    from attncraft.shapes.mesh_world import sample_mesh_scenes

    kw = dict(two_colour=False, splits=False, unpainted=False)
    held_out = sample_mesh_scenes(n, CLIP_SEED, **kw)
    return {
        "render": ("random views, distance, lighting and backgrounds", held_out, RenderStyle("render")),
        "train": ("the same with crops and perspective warps (training augmentations)", held_out, RenderStyle("train")),
        "xmesh": ("X-Mesh guidance views (SH lighting, camera r = 2, fovy 60 deg), white background",
                  sample_mesh_scenes(n, CLIP_SEED + 1, backgrounds=("white",), **kw), RenderStyle("xmesh")),
    }


def mesh_prompt_features(model, device: torch.device) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Text embeddings of the 192 zero-shot mesh prompts (colour-major) and their dimensions."""
    from attncraft.shapes.mesh_world import zero_shot_mesh_prompts
    from attncraft.shapes.training.clip import clip_features
    from attncraft.shapes.training.data import tokenize

    prompts, dims = zero_shot_mesh_prompts()
    return clip_features(model, input_ids=torch.from_numpy(tokenize(prompts)).long().to(device)), dims


def embed_mesh_renders(model, scenes, style, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Image embeddings of ``scenes`` rendered in ``style`` (250 at a time, drawing from ``generator``)."""
    from attncraft.mesh.procedural import render_mesh_scenes
    from attncraft.shapes.training.clip import clip_features
    from attncraft.shapes.training.data import to_unit

    out = []
    for i in range(0, len(scenes), 250):
        img = render_mesh_scenes(scenes[i:i + 250], device=device, style=style, generator=generator)
        out.append(clip_features(model, pixel_values=to_unit((img * 255).round().to(torch.uint8))))
    return torch.cat(out)


def read_mesh_attributes(model, img: torch.Tensor, txt: torch.Tensor, dims, scenes,
                         device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per attribute the reading (argmax of the logits marginalised over the other two) and the truth."""
    from attncraft.shapes.mesh_world import MESH_SHAPES
    from attncraft.shapes.world import COLORS, PATTERNS

    logits = (model.logit_scale.float().exp() * img @ txt.t()).view(-1, *dims)
    pred = {"color": torch.logsumexp(logits, dim=(2, 3)).argmax(1), "pattern": torch.logsumexp(logits, dim=(1, 3)).argmax(1),
            "shape": torch.logsumexp(logits, dim=(1, 2)).argmax(1)}
    truth = {"color": torch.tensor([COLORS.index(s.color) for s in scenes], device=device),
             "pattern": torch.tensor([PATTERNS.index(s.pattern) for s in scenes], device=device),
             "shape": torch.tensor([MESH_SHAPES.index(s.shape) for s in scenes], device=device)}
    return pred, truth


@torch.no_grad()
def eval_clip_mesh(clip_dir: str | Path, cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """Zero-shot reading of painted procedural meshes (the CLIP that guides X-Mesh).

    Held-out meshes (seed 0; one colour, plain or patterned in the colour's shade, every shape and
    variant) against the 8 x 4 x 6 = 192 prompts ``"a {pattern} {colour} {shape}"``; per attribute the
    argmax of the logits marginalised over the other two. Three conditions: held-out renders (random
    views, distance, lighting and backgrounds: the targets apply here), the same with the training
    augmentations (random crops and perspective warps), and what X-Mesh's guidance sees (SH lighting,
    its camera, white background, no augmentation). Two ranking checks on the plain meshes of the last
    condition, which a guide needs: the mesh painted in the prompt's colour scores above the same mesh
    unpainted (gray), and above it painted only on top (the rest gray).
    """
    from dataclasses import replace

    from attncraft.shapes.mesh_world import MESH_SHAPES, UNPAINTED
    from attncraft.shapes.models import load_shapes_clip
    from attncraft.shapes.world import COLORS

    t0 = time.time()
    model = load_shapes_clip(clip_dir, torch_dtype=torch.float32).to(device).eval()
    txt, dims = mesh_prompt_features(model, device)
    gen = torch.Generator().manual_seed(CLIP_SEED)

    def embed(scenes, style):
        return embed_mesh_renders(model, scenes, style, gen, device)

    conditions = mesh_eval_conditions(cfg.mesh_scenes)
    results: dict[str, Any] = {"prompts": len(txt), "protocol": "held-out painted meshes vs 192 prompts "
                               "'a {pattern} {colour} {shape}'; per-attribute argmax of logsumexp-marginalised logits",
                               "conditions": {}}
    for key, (label, scenes, style) in conditions.items():
        pred, truth = read_mesh_attributes(model, embed(scenes, style), txt, dims, scenes, device)
        acc = {k: float((pred[k] == truth[k]).float().mean()) for k in pred}
        acc["joint"] = float(((pred["color"] == truth["color"]) & (pred["pattern"] == truth["pattern"])
                              & (pred["shape"] == truth["shape"])).float().mean())
        results["conditions"][key] = {"label": label, "scenes": len(scenes), "accuracy": acc}
    plain = [s for s in conditions["xmesh"][1] if s.pattern == "plain"]
    if plain:
        style = conditions["xmesh"][2]
        painted = embed(plain, style)
        gray = embed([replace(s, color=UNPAINTED) for s in plain], style)
        half = embed([replace(s, bottom=UNPAINTED) for s in plain], style)
        want = txt.view(*dims, -1)[[COLORS.index(s.color) for s in plain], 0, [MESH_SHAPES.index(s.shape) for s in plain]]
        sims = [(e * want).sum(-1) for e in (painted, gray, half)]
        results["ranking"] = {"meshes": len(plain), "painted_above_unpainted": float((sims[0] > sims[1]).float().mean()),
                              "painted_above_half_painted": float((sims[0] > sims[2]).float().mean()),
                              "mean_cosine": {"painted": float(sims[0].mean()), "half_painted": float(sims[2].mean()),
                                              "unpainted": float(sims[1].mean())}}
    results["seconds"] = round(time.time() - t0, 1)
    return results


# ------------------------------------------------------------------------------------------- SD
def _score_one(item: tuple[np.ndarray, str]) -> dict[str, float]:
    from attncraft.shapes.scoring import score_image

    image, prompt = item
    return score_image(image, prompt)


def relation_outcome(item: tuple[np.ndarray, str]) -> dict[str, float]:
    """:func:`~attncraft.shapes.scoring.score_image` of a relation prompt, plus ``reversed``: 1 when
    the opposite relation holds instead ("a star above a heart" drawn with the star below)."""
    from attncraft.shapes.captions import OPPOSITE_RELATION, ParsedScene, parse_caption
    from attncraft.shapes.reader import read_image
    from attncraft.shapes.scoring import score_image

    image, prompt = item
    expected = parse_caption(prompt)
    read = read_image(image)
    score = score_image(None, expected, read=read)
    flipped = ParsedScene(expected.objects, expected.background,
                          tuple((i, OPPOSITE_RELATION[rel], j) for i, rel, j in expected.relations))
    score["reversed"] = score_image(None, flipped, read=read)["relation"]
    return score


class Scorer:
    """Scores images with the reader in ``workers`` forked processes (made before CUDA starts)."""

    def __init__(self, workers: int):
        self.pool = None
        if workers > 0:
            try:
                self.pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
            except Exception as exc:  # pragma: no cover - depends on the machine
                print(f"[eval] no scoring processes ({type(exc).__name__}: {exc}); scoring in this process")

    def __call__(self, images: np.ndarray, prompts: list[str], fn=_score_one) -> list[dict[str, float]]:
        """``fn((image, prompt))`` for every pair (default: :func:`score_image`'s scores)."""
        return self.map(fn, list(zip(list(images), prompts)))

    def map(self, fn, items: list) -> list:
        """``[fn(item) for item in items]``, in the scoring processes (``fn`` must be importable)."""
        if self.pool is None:
            return [fn(it) for it in items]
        return self.pool.map(fn, items, chunksize=max(1, len(items) // (4 * self.pool._processes)))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _init_worker() -> None:
    torch.set_num_threads(1)


def image_ok(score: dict[str, float]) -> bool:
    """Every stated attribute of every prompt object right, and any stated relation holds."""
    return score.get("objects", 0.0) == 1.0 and score.get("relation", 1.0) == 1.0


def summarize(scores: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {"n": len(scores)}
    for k in ("count", *IMAGE_ATTRS, "objects", "exact"):
        vals = [s[k] for s in scores if k in s]
        if vals:
            out[k] = float(np.mean(vals))
    out["all_correct"] = float(np.mean([image_ok(s) for s in scores])) if scores else 0.0
    return out


def held_out_prompts(n: int, seed: int, num_objects) -> tuple[list, list[str]]:
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import sample_scenes

    scenes = sample_scenes(n, seed=seed, num_objects=num_objects)
    return scenes, [caption_scene(s, seed=i) for i, s in enumerate(scenes)]


def relation_prompts(n: int, seed: int = RELATION_SEED) -> dict[str, tuple[list, list[str]]]:
    """``n`` held-out (scene, prompt) pairs per relation word of :data:`RELATION_EVAL_WORDS`, as
    ``{word: (scenes, prompts)}``.

    Two-object scenes are drawn from ``seed``; a word's ``i``-th prompt describes the ``i``-th scene
    on which its relation can hold (any one for left/right, the objects in different rows for
    above/below), with :func:`~attncraft.shapes.captions.relation_caption` at caption seed ``i`` and
    the word's phrasings in turn. So "above" and "below" ask about the very same scenes, with the
    objects named in opposite orders, and differ in nothing but the word.
    """
    from attncraft.shapes.captions import RELATION_OF_WORD, relation_caption
    from attncraft.shapes.world import sample_scenes

    count = 2 * n + 16
    while True:
        scenes = sample_scenes(count, seed=seed, num_objects=2)
        vertical = [s for s in scenes if s.objects[0].cell[0] != s.objects[1].cell[0]]
        horizontal = [s for s in scenes if s.objects[0].cell[1] != s.objects[1].cell[1]]
        if min(len(vertical), len(horizontal)) >= n:
            break
        count *= 2
    out = {}
    for word, phrasings in RELATION_EVAL_WORDS.items():
        pool = vertical if RELATION_OF_WORD[phrasings[0]] in ("above", "below") else horizontal
        out[word] = (pool[:n], [relation_caption(pool[i], phrasings[i % len(phrasings)], seed=i) for i in range(n)])
    return out


def summarize_relations(scores: list[dict[str, float]]) -> dict[str, float]:
    """Outcome shares of relation prompts (from :func:`relation_outcome`): ``relation`` (holds),
    ``reversed`` (the opposite holds), ``neither`` (side by side, or an object not found), plus the
    attribute means and ``all_correct`` of :func:`summarize`."""
    out = summarize(scores)
    holds = [s.get("relation", 0.0) == 1.0 for s in scores]
    rev = [not h and s.get("reversed", 0.0) == 1.0 for h, s in zip(holds, scores)]
    n = max(1, len(scores))
    out["reversed"] = sum(rev) / n
    out["neither"] = (len(scores) - sum(holds) - sum(rev)) / n
    return out


@torch.no_grad()
def pipeline_relation_flip_probe(pipe, n: int) -> dict[str, float]:
    """:func:`~attncraft.shapes.training.unet.relation_flip_probe` of a shapes SD pipeline: does its
    UNet do worse when the relation word of a held-out caption is replaced by its opposite?"""
    from attncraft.shapes.training.data import render_uint8, to_unit
    from attncraft.shapes.training.unet import relation_flip_probe

    device, vae = pipe.unet.device, pipe.vae

    def encode(chunk):
        x = to_unit(render_uint8(chunk.scenes, device), vae.dtype)
        return {"latents": vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor}

    alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    from attncraft.shapes.vocab import pipeline_encoder_for_clip_ids

    text = pipeline_encoder_for_clip_ids(pipe)  # the probe tokenizes to CLIP ids
    return relation_flip_probe(pipe.unet, text, encode, alphas_cumprod, device, n)


@torch.no_grad()
def eval_relations(pipe, cfg: EvalConfig, guidance: float, scorer: Scorer, n: int | None = None,
                   say=print) -> dict[str, Any]:
    """Per relation word (and per relation) on :func:`relation_prompts`, at ``pipe``'s scheduler."""
    from attncraft.shapes.captions import RELATION_OF_WORD

    t0 = time.time()
    n = cfg.relation_prompts if n is None else n
    sets = relation_prompts(n)
    prompts = [p for _, ps in sets.values() for p in ps]
    images = generate(pipe, prompts, cfg.steps, guidance, cfg.gen_batch, seed=RELATION_SEED * 1000)
    scores = scorer(images, prompts, fn=relation_outcome)
    words, by_relation = {}, {}
    for k, word in enumerate(sets):
        rows = scores[k * n:(k + 1) * n]
        words[word] = summarize_relations(rows)
        by_relation.setdefault(RELATION_OF_WORD[RELATION_EVAL_WORDS[word][0]], []).extend(rows)
        say(f"relation {word!r:12s}: holds {words[word]['relation']:.3f}, reversed {words[word]['reversed']:.3f}, "
            f"neither {words[word]['neither']:.3f}, all correct {words[word]['all_correct']:.3f} (n={n})")
    flip = pipeline_relation_flip_probe(pipe, cfg.relation_probe) if cfg.relation_probe else None
    if flip:
        say(f"relation flip probe: v-loss x{flip['vertical_ratio']:.3f} (vertical), "
            f"x{flip['horizontal_ratio']:.3f} (horizontal) with the opposite word")
    return {
        "seed": RELATION_SEED,
        "prompts_per_word": n,
        "flip_probe": flip,
        "protocol": "two-object held-out scenes (seed 4), full captions 'A <word> B <background>' "
                    "(relation_caption); above/below (and left/right) words ask about the same scenes",
        "guidance_scale": guidance,
        "scheduler": type(pipe.scheduler).__name__,
        "words": words,
        "relations": {rel: summarize_relations(rows) for rel, rows in by_relation.items()},
        "min_word_relation": min(w["relation"] for w in words.values()),
        "examples": [{"prompt": p, **s} for p, s in list(zip(prompts, scores))[::max(1, n)][:8]],
        "seconds": round(time.time() - t0, 1),
    }


@torch.no_grad()
def generate(pipe, prompts: list[str], steps: int, guidance: float, batch: int, seed: int) -> np.ndarray:
    out = []
    device = pipe.unet.device
    for i in range(0, len(prompts), batch):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        res = pipe(prompt=prompts[i:i + batch], num_inference_steps=steps, guidance_scale=guidance, height=64,
                   width=64, generator=gen, output_type="np")
        out.append(np.asarray(res.images, dtype=np.float32))
    return np.concatenate(out)


@torch.no_grad()
def vae_roundtrip(vae, scenes, device: torch.device, dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    from attncraft.shapes.world import render_scenes

    renders = render_scenes(scenes, size=64, device=device).images
    recs = []
    for i in range(0, len(scenes), 256):
        x = renders[i:i + 256].to(dtype) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mean).sample.float()
        recs.append(((rec + 1) / 2).clamp(0, 1))
    to_np = lambda t: t.permute(0, 2, 3, 1).float().cpu().numpy()  # noqa: E731
    return to_np(renders), to_np(torch.cat(recs))


def save_grid(path: Path, images: np.ndarray, cols: int = 8) -> None:
    from PIL import Image

    n = len(images)
    rows = (n + cols - 1) // cols
    h, w = images.shape[1:3]
    grid = np.zeros((rows * (h + 2), cols * (w + 2), 3), dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = (np.clip(im, 0, 1) * 255).round()
    Image.fromarray(grid).save(path)


@torch.no_grad()
def eval_sd(sd_dir: str | Path, cfg: EvalConfig, device: torch.device, scorer: Scorer, out: Path,
            budget: common.Budget, say=print) -> dict[str, Any]:
    from attncraft.shapes.models import SD_DEFAULTS_FILE, load_shapes_sd_pipeline, shapes_scheduler

    sd_dir = Path(sd_dir)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_shapes_sd_pipeline(sd_dir, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    res: dict[str, Any] = {"steps": cfg.steps}
    folder_scheduler = pipe.scheduler  # the folder's own sampler, kept if the sweep is cut short

    # 1. sampler sweep
    t0 = time.time()
    _, sweep_prompts = held_out_prompts(cfg.sweep_prompts, SWEEP_SEED, (1, 2))
    sweep = []
    for name in cfg.sweep_schedulers:
        for g in cfg.sweep_guidance:
            if sweep and time.time() > budget.t0 + 0.45 * (budget.end - budget.t0):
                say(f"sweep cut short at {name} g={g} (time)")
                break
            pipe.scheduler = shapes_scheduler(name)
            imgs = generate(pipe, sweep_prompts, cfg.steps, g, cfg.gen_batch, seed=SWEEP_SEED)
            s = summarize(scorer(imgs, sweep_prompts))
            sweep.append({"scheduler": name, "guidance": g, **s})
            say(f"sweep {name:30s} g={g:4.1f}: objects {s.get('objects', 0):.3f} all_correct {s['all_correct']:.3f}")
    best = max(sweep, key=lambda r: (r.get("objects", 0.0), r["all_correct"]))
    complete = len(sweep) == len(cfg.sweep_schedulers) * len(cfg.sweep_guidance)
    folder_defaults = sd_dir / SD_DEFAULTS_FILE
    kept = common.defaults_kept(folder_defaults, complete)
    res["sweep"] = {"prompts": len(sweep_prompts), "seed": SWEEP_SEED, "results": sweep, "complete": complete,
                    "seconds": round(time.time() - t0, 1)}
    if kept is not None:  # the folder's own sampler and guidance, and the folder left as it is
        say(f"sweep incomplete: evaluating at the folder's {type(folder_scheduler).__name__}, guidance "
            f"{kept['guidance_scale']}, which stay as they are")
        pipe.scheduler = folder_scheduler
        default = {"width": 64, "height": 64, "num_inference_steps": cfg.steps,
                   "guidance_scale": float(kept["guidance_scale"])}
        res["default"] = {"scheduler": type(folder_scheduler).__name__, **default, "from": common.SWEEP_CUT_SHORT}
    else:
        default = {"width": 64, "height": 64, "num_inference_steps": cfg.steps, "guidance_scale": best["guidance"]}
        res["default"] = {"scheduler": best["scheduler"], **default, "from": "sweep"}
        pipe.scheduler = shapes_scheduler(best["scheduler"])
        # record the default in the folder (scheduler config + defaults file)
        pipe.scheduler.save_pretrained(str(sd_dir / "scheduler"))
        model_index = sd_dir / "model_index.json"
        mi = json.loads(model_index.read_text())
        mi["scheduler"] = ["diffusers", best["scheduler"]]
        model_index.write_text(json.dumps(mi, indent=2) + "\n")
        folder_defaults.write_text(json.dumps(default, indent=2) + "\n")

    # 2. final numbers at the default; fewer prompts if the sweep shows they would not fit the budget
    per_image = (time.time() - t0) / max(1, len(sweep) * len(sweep_prompts))
    left = budget.end - time.time() - 5.0
    fit = int(left / max(1e-6, 2 * 2.0 * per_image))  # 2 sets; generation + score + 2 (cheaper) ceilings
    n_one, n_two = min(cfg.sd_one, max(100, fit)), min(cfg.sd_two, max(100, fit))
    if (n_one, n_two) != (cfg.sd_one, cfg.sd_two):
        say(f"final sets reduced to {n_one} + {n_two} prompts to fit the time budget")
    final: dict[str, Any] = {}
    samples = []
    for key, n, seed, k in (("one_object", n_one, SD_ONE_SEED, 1), ("two_objects", n_two, SD_TWO_SEED, 2)):
        t1 = time.time()
        scenes, prompts = held_out_prompts(n, seed, k)
        imgs = generate(pipe, prompts, cfg.steps, best["guidance"], cfg.gen_batch, seed=seed * 1000)
        scores = scorer(imgs, prompts)
        final[key] = {"seed": seed, **summarize(scores), "seconds": round(time.time() - t1, 1),
                      "examples": [{"prompt": p, **s} for p, s in list(zip(prompts, scores))[:8]]}
        samples.append(imgs[:32])
        # 3. ceilings: the renders themselves and their VAE reconstructions
        renders, recs = vae_roundtrip(pipe.vae, scenes, device, dtype)
        final[key]["ceiling_renders"] = summarize(scorer(renders, prompts))
        final[key]["ceiling_vae"] = summarize(scorer(recs, prompts))
        say(f"{key}: " + ", ".join(f"{a} {final[key][a]:.3f}" for a in ("color", "shape", "position", "size",
                                                                         "pattern", "all_correct") if a in final[key]))
    res.update(final)
    # 4. relations, word by word, at the same default
    per_image = (time.time() - t0) / max(1, len(sweep) * len(sweep_prompts) + 4 * (n_one + n_two))
    fit = int((budget.end - time.time() - 5.0) / max(1e-6, 1.5 * per_image * len(RELATION_EVAL_WORDS)))
    n_rel = min(cfg.relation_prompts, max(min(50, cfg.relation_prompts), fit))
    if n_rel != cfg.relation_prompts:
        say(f"relation sets reduced to {n_rel} prompts per word to fit the time budget")
    res["relations"] = eval_relations(pipe, cfg, best["guidance"], scorer, n=n_rel, say=say)
    res["targets"] = {
        "one_object_color>=0.90": final["one_object"].get("color", 0) >= 0.90,
        "one_object_shape>=0.90": final["one_object"].get("shape", 0) >= 0.90,
        f"two_objects_all_correct>={TWO_OBJECTS_TARGET:.2f}": final["two_objects"]["all_correct"] >= TWO_OBJECTS_TARGET,
        f"every_relation_word>={RELATION_TARGET:.2f}": res["relations"]["min_word_relation"] >= RELATION_TARGET,
    }
    if cfg.save_grid:
        save_grid(out / "sd_samples.png", np.concatenate(samples))
    return res


# ------------------------------------------------------------------------------------- reporting
def to_markdown(results: dict[str, Any]) -> str:
    lines = ["# Shapes models: evaluation", ""]
    if "clip" in results:
        c = results["clip"]
        lines += ["## shapes CLIP, zero-shot (target >= 95 % each)", "",
                  f"{c['scenes']} held-out single-object scenes, {c['prompts']} prompts. {c['protocol']}.", "",
                  "| colour | shape | position | joint |", "|---|---|---|---|",
                  "| " + " | ".join(f"{100 * c['accuracy'][k]:.1f} %" for k in ("color", "shape", "position", "joint"))
                  + " |", ""]
    if "clip_mesh" in results:
        m = results["clip_mesh"]
        lines += ["## shapes CLIP, zero-shot on painted meshes (targets: colour >= 95 %, shape >= 90 %, pattern >= 85 %)",
                  "", f"{m['protocol']}.", "", "| condition | meshes | colour | shape | pattern | joint |",
                  "|---|---|---|---|---|---|"]
        for cond in m["conditions"].values():
            a = cond["accuracy"]
            lines.append(f"| {cond['label']} | {cond['scenes']} | " + " | ".join(
                f"{100 * a[k]:.1f} %" for k in ("color", "shape", "pattern", "joint")) + " |")
        if "ranking" in m:
            r = m["ranking"]
            mc = r["mean_cosine"]
            lines += ["", f"Guidance ranking on {r['meshes']} plain meshes (X-Mesh views): the mesh painted in the "
                      f"prompt's colour scores above the unpainted mesh in {100 * r['painted_above_unpainted']:.1f} % "
                      f"and above the half-painted one in {100 * r['painted_above_half_painted']:.1f} % of cases "
                      f"(mean cosine {mc['painted']:.3f} / {mc['half_painted']:.3f} / {mc['unpainted']:.3f})."]
        lines.append("")
    if "sd" in results:
        s = results["sd"]
        d = s["default"]
        origin = " (the folder's own: the sweep was cut short)" if d.get("from") == common.SWEEP_CUT_SHORT else ""
        lines += ["## shapes SD (reader accuracy)", "",
                  f"Default sampler: {d['scheduler']}, {d['num_inference_steps']} steps, "
                  f"guidance {d['guidance_scale']}{origin}.", "",
                  "| prompts | n | count | colour | shape | size | position | pattern | background | relation "
                  "| all attributes of every object | exact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def row(name, r):
            cells = [f"{100 * r[k]:.1f} %" if k in r else "-" for k in
                     ("count", "color", "shape", "size", "position", "pattern", "background", "relation",
                      "all_correct", "exact")]
            return f"| {name} | {r.get('n', '')} | " + " | ".join(cells) + " |"

        for key in ("one_object", "two_objects"):
            r = s[key]
            lines.append(row(key.replace("_", " "), r))
            lines.append(row(f"{key.replace('_', ' ')}: world renders (ceiling)", r["ceiling_renders"]))
            lines.append(row(f"{key.replace('_', ' ')}: VAE reconstructions", r["ceiling_vae"]))
        lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in s["targets"].items()),
                  "", "Sampler sweep (objects score = mean fraction of prompt objects fully right):", "",
                  "| scheduler | guidance | objects | all correct |", "|---|---|---|---|"]
        for r in s["sweep"]["results"]:
            lines.append(f"| {r['scheduler']} | {r['guidance']} | {100 * r.get('objects', 0):.1f} % | "
                         f"{100 * r['all_correct']:.1f} % |")
        lines.append("")
        if "relations" in s:
            lines += relation_markdown(s["relations"])
    if "relations" in results:
        lines += relation_markdown(results["relations"])
    if "motion" in results:
        from attncraft.shapes.training.motion_eval import motion_markdown

        lines += motion_markdown(results["motion"])
    return "\n".join(lines) + "\n"


def relation_markdown(r: dict[str, Any]) -> list[str]:
    """The per-relation-word table of :func:`eval_relations`."""
    lines = [f"## shapes SD: relations, word by word (target >= {100 * RELATION_TARGET:.0f} % each)", "",
             f"{r['prompts_per_word']} prompts per word; {r['protocol']}; {r['scheduler']}, guidance "
             f"{r['guidance_scale']}. *holds*: the stated relation holds; *reversed*: the opposite one does; "
             "*neither*: side by side or an object missing; *all correct*: every attribute and the relation.", "",
             "| word | n | holds | reversed | neither | all correct |", "|---|---|---|---|---|---|"]
    flip = r.get("flip_probe")
    rows = [(f"{w}", v) for w, v in r["words"].items()] + [(f"all '{k}'", v) for k, v in r["relations"].items()]
    for name, v in rows:
        lines.append(f"| {name} | {v['n']} | {100 * v['relation']:.1f} % | {100 * v['reversed']:.1f} % | "
                     f"{100 * v['neither']:.1f} % | {100 * v['all_correct']:.1f} % |")
    if flip:
        lines += ["", "Held-out v-loss of relation captions at t >= 500 with the opposite relation word, relative "
                  f"to their own word (1.00: the direction is ignored): vertical x{flip['vertical_ratio']:.3f}, "
                  f"horizontal x{flip['horizontal_ratio']:.3f}."]
    return lines + [""]


def evaluate(args: common.RunArgs, cfg: EvalConfig | None = None, quiet: bool = False) -> dict[str, Any]:
    from attncraft.shapes.models import SHAPES_CLIP_DIR, SHAPES_SD_DIR

    cfg = cfg or get_configs(args.config).eval
    if args.relation_prompts is not None:
        cfg = replace(cfg, relation_prompts=args.relation_prompts)
    say = (lambda m: None) if quiet else (lambda m: print(f"[eval] {m}", flush=True))
    budget = common.Budget(args.minutes, 0.0)
    scorer = Scorer(cfg.score_workers)  # fork before CUDA is initialised
    device = common.setup_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"command": " ".join(["python", "-m", "attncraft.shapes.training", *args.argv[1:]]),
                               "hardware": common.hardware(device)}
    try:
        if args.what in ("clip", "all"):
            clip_dir = Path(args.clip_dir) if args.clip_dir else SHAPES_CLIP_DIR
            results["clip"] = eval_clip(clip_dir, cfg, device)
            results["clip"]["folder"] = str(clip_dir)
            say("clip zero-shot: " + ", ".join(f"{k} {v:.3f}" for k, v in results["clip"]["accuracy"].items()))
            results["clip_mesh"] = eval_clip_mesh(clip_dir, cfg, device)
            for cond in results["clip_mesh"]["conditions"].values():
                say(f"clip on meshes ({cond['label']}): " + ", ".join(f"{k} {v:.3f}" for k, v in cond["accuracy"].items()))
        if args.what in ("sd", "all"):
            sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
            results["sd"] = eval_sd(sd_dir, cfg, device, scorer, out, budget, say)
            results["sd"]["folder"] = str(sd_dir)
        if args.what == "motion":
            from attncraft.shapes.models import SHAPES_MOTION_DIR
            from attncraft.shapes.training.motion_eval import eval_motion

            sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
            adapter_dir = Path(args.adapter_dir) if args.adapter_dir else SHAPES_MOTION_DIR
            if args.prompts:
                n = args.prompts
                cfg = replace(cfg, motion_one=min(cfg.motion_one, n), motion_seq=min(cfg.motion_seq, n),
                              motion_sweep_prompts=min(cfg.motion_sweep_prompts, n),
                              motion_baseline=min(cfg.motion_baseline, n))
            results["motion"] = eval_motion(sd_dir, adapter_dir, cfg, device, scorer, out, budget, say)
            results["motion"].update(sd_folder=str(sd_dir), adapter_folder=str(adapter_dir))
        if args.what == "relations":  # the folder's own default sampler; nothing is written into it
            from attncraft.shapes.models import load_shapes_sd_pipeline, shapes_sd_defaults

            sd_dir = Path(args.sd_dir) if args.sd_dir else SHAPES_SD_DIR
            dtype = torch.float16 if device.type == "cuda" else torch.float32
            pipe = load_shapes_sd_pipeline(sd_dir, torch_dtype=dtype).to(device)
            pipe.set_progress_bar_config(disable=True)
            guidance = float(shapes_sd_defaults(sd_dir)["guidance_scale"])
            results["relations"] = eval_relations(pipe, cfg, guidance, scorer, say=say)
            results["relations"]["folder"] = str(sd_dir)
    finally:
        scorer.close()
    results["wall_seconds"] = round(budget.elapsed(), 1)
    name = {"all": "shapes_eval", "motion": "motion_eval"}.get(args.what, f"shapes_eval_{args.what}")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(to_markdown(results))
    say(f"wrote {out / (name + '.json')} in {results['wall_seconds']}s")
    return results
