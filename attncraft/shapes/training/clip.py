"""Stage ``clip``: contrastive training of shapes CLIP on rendered scenes and their captions.

Symmetric InfoNCE (CLIP's loss) with a learnable temperature, on batches drawn from an on-device
pool of rendered scenes, each with 4 captions of varying detail (``caption_scene(..., omit=...)``
drops size / pattern / position / background with probability 0, 0.3, 0.6, 0.9), refreshed from a
stream of fresh scenes throughout training. Pixels are in [-1, 1] (mean 0.5, std 0.5).
"""

from __future__ import annotations

import json
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
    out, device, budget, max_steps, workers, say = common.start_stage("clip", args, cfg, quiet).unpack()

    stream = ChunkStream(SceneChunks(cfg.chunk, caption_omits=cfg.caption_omits), workers=workers)
    model = build_clip_model(cfg, args.seed).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    say(f"CLIPModel {n_params / 1e6:.3f} M params on {device}; budget {args.minutes} min")

    n_caps = len(cfg.caption_omits)
    pool = DevicePool(cfg.pool, {"images": ((3, 64, 64), torch.uint8), "tokens": ((n_caps, 77), torch.int32)}, device)

    def encode(chunk):
        return {"images": render_uint8(chunk.scenes, device), "tokens": torch.from_numpy(chunk.tokens)}

    fill_pool(pool, stream, encode, limit_s=cfg.pool_fill_limit_s, log=say)

    opt = common.adamw(_param_groups(model, cfg.weight_decay), cfg.lr, cfg.weight_decay, device, betas=cfg.betas)
    log = common.LossLog("clip", every_s=cfg.log_every_s, quiet=quiet)
    labels = torch.arange(cfg.batch, device=device)
    steps = common.TrainingSteps(budget, max_steps, cfg, opt)
    for step, lr in steps:
        maybe_refresh(step, cfg.refresh_every, pool, stream, encode)
        idx = pool.sample_index(cfg.batch)
        cap = torch.randint(0, n_caps, (cfg.batch,), device=device)
        pixels = to_unit(pool.data["images"][idx])
        ids = pool.data["tokens"][idx, cap].long()
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
        "logit_scale": float(model.logit_scale.detach().float().exp()),
        "folder_bytes": common.folder_size(out),
        **common.summarize_losses(log.history),
    }
    common.write_training_log(out, "clip", args, info)
    say(f"saved {out} ({info['folder_bytes'] / 1e6:.2f} MB) after {step} steps, {info['train_seconds']}s")
    info["loss_history"] = log.history
    return info
