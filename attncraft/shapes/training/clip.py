"""Stage ``clip``: contrastive training of shapes CLIP on rendered scenes and their captions.

Symmetric InfoNCE (CLIP's loss) with a learnable temperature, on batches drawn from an on-device
pool of rendered scenes, each with 4 captions of varying detail (``caption_scene(..., omit=...)``
drops size / pattern / position / background with probability 0, 0.3, 0.6, 0.9), refreshed from a
stream of fresh scenes throughout training. Pixels are in [-1, 1] (mean 0.5, std 0.5).

With ``mesh_fraction`` > 0 (``--mesh-fraction``) that share of every batch comes from a second
pool: renders of painted procedural meshes (:mod:`attncraft.shapes.training.mesh_data`) with their
captions, so that the CLIP reads 3-D renders (X-Mesh's guidance) as well as the 2-D world. ``--init``
starts from a trained CLIP folder (a fine-tune) instead of a fresh initialisation; ``train_vision_from``
keeps the vision trunk below that layer frozen, its states bit for bit (``--train-vision-from 0`` trains it all).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attncraft.shapes.models import load_in_float32_by_default
from attncraft.shapes.training import common
from attncraft.shapes.training.configs import ClipTrain, get_configs
from attncraft.shapes.training.data import (
    ChunkStream,
    DevicePool,
    SceneChunks,
    fill_pool,
    maybe_refresh,
    render_uint8,
    to_unit,
)

PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)


def build_clip_model(cfg: ClipTrain, seed: int):
    from transformers import CLIPConfig, CLIPModel

    from attncraft.shapes.models import shapes_clip_text_config_dict, shapes_clip_vision_config_dict

    text = shapes_clip_text_config_dict() | (cfg.text_overrides or {})
    vision = shapes_clip_vision_config_dict() | (cfg.vision_overrides or {})
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"],
                        logit_scale_init_value=2.6592)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(config)


def load_init_model(folder: str):
    """A trained CLIP folder to fine-tune (fp32 weights, training mode)."""
    from transformers import CLIPModel

    path = common.init_folder(folder, "clip")
    return CLIPModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)


def freeze_vision_trunk(model, train_from: int | None) -> dict[str, torch.Tensor]:
    """Freeze the patch embedding, the pre-norm and vision layers ``< train_from``; returns copies of
    their weights (to check after training that they did not move)."""
    if train_from is None:
        return {}
    vision = model.vision_model
    layers = vision.encoder.layers
    if not 0 < train_from <= len(layers):
        from attncraft.errors import InputError

        raise InputError(f"--train-vision-from {train_from}: the vision tower has {len(layers)} layers",
                         f"give a layer index from 1 to {len(layers)}, or 0 to train every layer")
    frozen: dict[str, torch.Tensor] = {}
    for prefix, module in (("embeddings", vision.embeddings), ("pre_layrnorm", vision.pre_layrnorm),
                           *((f"encoder.layers.{i}", layers[i]) for i in range(train_from))):
        module.requires_grad_(False)
        frozen.update({f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return frozen


def frozen_unchanged(model, frozen: dict[str, torch.Tensor]) -> bool:
    """Whether the frozen vision weights are bit for bit what they were before training."""
    state = model.vision_model.state_dict()
    return all(torch.equal(state[k].to(v.device, v.dtype), v) for k, v in frozen.items())


def clip_features(model, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None):
    """L2-normalised projected image / text embeddings (version-stable: uses the towers directly)."""
    out = []
    if pixel_values is not None:
        pooled = model.vision_model(pixel_values=pixel_values).pooler_output
        out.append(F.normalize(model.visual_projection(pooled).float(), dim=-1))
    if input_ids is not None:
        pooled = model.text_model(input_ids=input_ids).pooler_output
        out.append(F.normalize(model.text_projection(pooled).float(), dim=-1))
    return out[0] if len(out) == 1 else tuple(out)


def write_preprocessor_config(folder: Path) -> None:
    """A ``CLIPImageProcessor`` config matching the training convention (64 px, mean = std = 0.5)."""
    cfg = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 64},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 64, "width": 64},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(PIXEL_MEAN),
        "image_std": list(PIXEL_STD),
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or name == "logit_scale":
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_clip(args: common.RunArgs, cfg: ClipTrain | None = None, quiet: bool = False) -> dict[str, Any]:
    cfg = common.apply_overrides(cfg or get_configs(args.config).clip, args)
    if args.train_vision_from is not None:  # 0: every vision layer trained
        cfg = replace(cfg, train_vision_from=args.train_vision_from or None)
    out, device, budget, max_steps, workers, say = common.start_stage("clip", args, cfg, quiet).unpack()

    mesh_fraction = cfg.mesh_fraction if args.mesh_fraction is None else args.mesh_fraction
    n_mesh = int(round(cfg.batch * mesh_fraction))
    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=cfg.caption_omits), workers=workers)
    model = load_init_model(args.init_dir) if args.init_dir else build_clip_model(cfg, args.seed)
    model = model.to(device).train()
    frozen = freeze_vision_trunk(model, cfg.train_vision_from)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"CLIPModel {n_params / 1e6:.3f} M params on {device}; budget {args.minutes} min"
        + (f"; from {args.init_dir}" if args.init_dir else "") + (f"; {n_mesh} mesh renders per batch" if n_mesh else ""))

    n_caps = len(cfg.caption_omits)
    specs = {"images": ((3, 64, 64), torch.uint8), "tokens": ((n_caps, 77), torch.int32)}
    pool = DevicePool(cfg.pool, specs, device)

    def encode(chunk):
        return {"images": render_uint8(chunk.scenes, device), "tokens": torch.from_numpy(chunk.tokens)}

    fill_pool(pool, stream, encode, limit_s=cfg.pool_fill_limit_s, log=say)
    mesh_pool = mesh_stream = mesh_encode = None
    if n_mesh:
        from attncraft.shapes.training.mesh_data import MeshChunks, render_mesh_uint8

        mesh_stream = ChunkStream(MeshChunks(cfg.chunk, caption_omits=cfg.caption_omits),
                                  workers=min(workers, cfg.mesh_workers))
        mesh_pool = DevicePool(cfg.mesh_pool, specs, device)
        warp_gen = torch.Generator().manual_seed(args.seed)

        def mesh_encode(chunk):
            return {"images": render_mesh_uint8(chunk.scenes, device, warp_gen), "tokens": torch.from_numpy(chunk.tokens)}

        fill_pool(mesh_pool, mesh_stream, mesh_encode, limit_s=cfg.pool_fill_limit_s, log=say)

    opt = common.adamw(_param_groups(model, cfg.weight_decay), cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    log = common.LossLog("clip", every_s=cfg.log_every_s, quiet=quiet)
    labels = torch.arange(cfg.batch, device=device)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encode)
        idx = pool.sample_index(cfg.batch - n_mesh)
        cap = torch.randint(0, n_caps, (cfg.batch,), device=device)
        images, tokens = pool.data["images"][idx], pool.data["tokens"][idx]
        if n_mesh:
            maybe_refresh(step, cfg.mesh_refresh_every, mesh_pool, mesh_stream, mesh_encode)
            midx = mesh_pool.sample_index(n_mesh)
            images = torch.cat([images, mesh_pool.data["images"][midx]])
            tokens = torch.cat([tokens, mesh_pool.data["tokens"][midx]])
        pixels = to_unit(images)
        ids = tokens[torch.arange(cfg.batch, device=device), cap].long()
        with common.autocast(device):
            img, txt = clip_features(model, pixels, ids)
        scale = model.logit_scale.float().clamp(max=4.6052).exp()
        logits = scale * img @ txt.t()
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, 4.6052)
        log.add(loss)
        log.maybe_print(step + 1, lr, budget)
    train_s = steps.finish(log)
    step = steps.done
    stream.close()
    if mesh_stream is not None:
        mesh_stream.close()

    # save fp16 safetensors in the standard transformers layout
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(str(out))
    load_in_float32_by_default(out)
    write_preprocessor_config(out)
    info = {
        "model": "shapes-clip",
        "params": n_params,
        **common.run_stats(step, cfg.batch, train_s, budget),
        "pool": {"capacity": cfg.pool, "scenes_added": pool.added},
        **({"mesh_fraction": n_mesh / cfg.batch, "mesh_pool": {"capacity": cfg.mesh_pool, "meshes_added": mesh_pool.added}}
           if n_mesh else {}),
        **({"initialised_from": common.init_provenance(args.init_dir, "clip")} if args.init_dir else {}),
        **({"frozen_vision": {"layers_trained_from": cfg.train_vision_from, "unchanged": frozen_unchanged(model, frozen)}}
           if frozen else {}),
        "logit_scale": float(model.logit_scale.detach().float().exp()),
        "folder_bytes": common.folder_size(out),
        **common.summarize_losses(log.history),
    }
    common.write_training_log(out, "clip", args, info)
    say(f"saved {out} ({info['folder_bytes'] / 1e6:.2f} MB) after {step} steps, {info['train_seconds']}s")
    info["loss_history"] = log.history
    return info
