"""Real-image editing: invert -> (optional) DPL -> Prompt-to-Prompt edit, as diffusers pipelines.

:class:`RealImageEditPipeline` (a ``StableDiffusionPipeline``) and :class:`RealImageEditXLPipeline`
(a ``StableDiffusionXLPipeline``) share :class:`RealImageEditMixin`:

* :meth:`~RealImageEditMixin.invert` - DDIM inversion with the source caption, then null-text
  inversion, or DPL (dynamic tokens for the nouns, updated at every step before the null-text
  optimisation of that step); returns an :class:`~attncraft.pipelines.inversion.Inversion`, which
  saves to one file and serves many edits. Batched: a list of images and captions is inverted
  together, each scene with its own null embeddings and dynamic tokens.
* ``__call__(inversion, prompt, mode=...)`` - the edit: the source (the reconstruction) and the edit
  prompts sampled from z*_T with the per-step null embeddings (and dynamic tokens, re-encoded with
  both prompts as DPL does), Prompt-to-Prompt controllers on the UNet. Returns diffusers'
  ``StableDiffusionPipelineOutput`` / ``StableDiffusionXLPipelineOutput``; per scene the images are
  ``[reconstruction, edit_1, ...]``. ``output_type``, ``return_dict`` and ``callback_on_step_end``
  behave as in diffusers.

:func:`dpl_inversion` is the loop itself (spec section 8), on a :class:`ModelAdapter`; with token
updates off (``token_steps <= 1``) it is null-text inversion exactly. Deviations from the reference:
only the placeholder vectors get gradients (UNet and text encoder frozen: no weight gradients), the
token-update pass stops the UNet once the loss layers have run, the map average counts its steps,
a missing background cluster drops L_bg for that scene (logged), one noun gives L_dj = 0 (warned).
Cost: the loop waits for the GPU only where it must read a value (the early-stop checks); the
backpropagating passes take the fused attention kernel unless ``DPLConfig.attention`` says otherwise
(``auto``: the explicit product for float32 on CUDA, see
:func:`~attncraft.pipelines.inversion.explicit_attention_wanted`); ``DPLConfig.precision="tf32"`` is opt-in, and
so is ``DPLConfig.compile`` (the backpropagating UNet calls under ``torch.compile``, see
:class:`~attncraft.pipelines.inversion.CompiledUNet`: the token pass's graph ends at the loss layers).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion_xl import StableDiffusionXLPipelineOutput

from attncraft.attention_processors import AttentionStore, get_manager, select_layers
from attncraft.attention_processors.dpl import (
    BackgroundMasks,
    DPLConfig,
    LossMaps,
    background_masks,
    below_thresholds,
    dpl_losses,
)
from attncraft.attention_processors.prompt_to_prompt import (
    AttentionPlan,
    PromptTokens,
    attention_plan,
    make_controllers,
    placeholder_vectors_init,
    tokenize_prompt,
)
from attncraft.errors import InputError
from attncraft.loading import pipeline_as
from attncraft.pipelines.inversion import (
    DDIMSchedule,
    Inversion,
    ModelAdapter,
    NullTextResult,
    NullTextSettings,
    TextConditioning,
    ddim_inversion,
    ddim_step,
    frozen,
    image_fingerprint,
    model_fingerprint,
    null_text_inversion,
    prepare_image,
    tf32_scope,
)
from attncraft.validation import check_finite, check_int_range, check_text

log = logging.getLogger("attncraft.dpl")

AUTOCAST = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------------------------------
# Prompts of a batch of scenes
# --------------------------------------------------------------------------------------------------


def _per_scene(value, count: int, what: str) -> list:
    if value is None:
        return [None] * count
    if isinstance(value, str):
        return [value] * count
    value = list(value)
    if len(value) != count:
        raise InputError(f"{len(value)} {what} for {count} images", f"pass one {what.rstrip('s')} per image")
    return value


def _noun_lists(nouns, count: int) -> list[list[str]]:
    if nouns is None:
        return [[] for _ in range(count)]
    if isinstance(nouns, str):
        nouns = [n.strip() for n in nouns.split(",") if n.strip()]
    nouns = list(nouns)
    if nouns and all(isinstance(n, str) for n in nouns):
        return [list(nouns) for _ in range(count)]
    if len(nouns) != count:
        raise InputError(f"{len(nouns)} noun lists for {count} images", "pass one list of nouns per image")
    return [list(n) for n in nouns]


@dataclass
class SceneTokens:
    """The source caption of each scene, as the DDIM inversion reads it (``plain``: the nouns keep
    their own tokens) and as DPL encodes it (``dynamic``: one placeholder per noun occurrence)."""

    plain: list[PromptTokens]
    dynamic: list[PromptTokens]

    @property
    def names(self) -> list[list[str]]:
        return [list(p.placeholder_names) for p in self.dynamic]

    @property
    def max_tokens(self) -> int:
        return max((len(n) for n in self.names), default=0)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) placeholder positions in the dynamic prompts and (B, K) validity."""
        K = max(self.max_tokens, 1)
        pos = torch.ones(len(self.dynamic), K, dtype=torch.long)
        valid = torch.zeros(len(self.dynamic), K, dtype=torch.bool)
        for b, prompt in enumerate(self.dynamic):
            for k, p in prompt.placeholder_positions().items():
                pos[b, k], valid[b, k] = p, True
        return pos, valid


def scene_tokens(tokenizer, prompts: Sequence[str], nouns: Sequence[Sequence[str]]) -> SceneTokens:
    plain = [tokenize_prompt(tokenizer, p, n, collapse=False) for p, n in zip(prompts, nouns)]
    dynamic = [tokenize_prompt(tokenizer, p, n, collapse=True) for p, n in zip(prompts, nouns)]
    return SceneTokens(plain, dynamic)


def given_background(masks: torch.Tensor, count: int, resolution: tuple[int, int]) -> BackgroundMasks:
    """Background masks given by the caller ((B, H, W) bool, any resolution), at the loss-map
    resolution (area average >= 0.5)."""
    masks = torch.as_tensor(masks)
    if masks.dim() == 2:
        masks = masks[None]
    if masks.dim() != 3 or masks.shape[0] != count:
        raise InputError(f"background_mask has shape {tuple(masks.shape)}, not ({count}, H, W)",
                         "pass one boolean mask per image")
    small = F.adaptive_avg_pool2d(masks.float()[:, None], resolution)[:, 0] >= 0.5
    names = [["given"] for _ in range(count)]
    return BackgroundMasks(masks=small, has_background=small.flatten(1).any(1), cluster_labels=small.long(),
                           cluster_names=names)


def noun_maps(cross: torch.Tensor, tokens: SceneTokens, resolution: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, h, w) map of each noun occurrence (sum over its tokens) from averaged cross-attention
    (B, Q, keys) of the plain captions, and (B, K) validity."""
    B, Q, keys = cross.shape
    h, w = resolution
    K = max(tokens.max_tokens, 1)
    out = torch.zeros(B, K, h, w, device=cross.device)
    valid = torch.zeros(B, K, dtype=torch.bool, device=cross.device)
    for b, prompt in enumerate(tokens.plain):
        for k, span in prompt.placeholder_spans.items():
            out[b, k] = cross[b, :, list(span)].sum(-1).reshape(h, w)
            valid[b, k] = True
    return out, valid


# --------------------------------------------------------------------------------------------------
# The DPL loop
# --------------------------------------------------------------------------------------------------


@dataclass
class DPLResult:
    null: NullTextResult
    token_vectors: list[torch.Tensor]
    """Per text encoder, (T, B, K, D_e): the dynamic tokens of every step."""
    losses: dict[str, torch.Tensor]
    """``at``, ``dj``, ``bg`` (T, B) before the first update of each step, and after the last."""
    updates: torch.Tensor
    """(T, B) token updates taken per step and scene."""


def dpl_inversion(
    model: ModelAdapter,
    trajectory: torch.Tensor,
    schedule: DDIMSchedule,
    tokens: SceneTokens,
    null_init: TextConditioning,
    guidance_scale: float,
    null_text: NullTextSettings,
    config: DPLConfig,
    background: BackgroundMasks | None,
    plan: AttentionPlan,
    image_size: tuple[int, int] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> DPLResult:
    """Null-text inversion with DPL's token update before each step's null-text optimisation."""
    config.validate()
    B = len(tokens.dynamic)
    positions, valid = tokens.positions()
    positions, valid = positions.to(model.device), valid.to(model.device)
    names = tokens.names
    K = positions.shape[1]
    vectors = []
    for enc in model.encoders:
        table = torch.zeros(B, K, enc.get_input_embeddings().weight.shape[1], device=model.device)
        for b, scene_names in enumerate(names):
            if scene_names:
                table[b, : len(scene_names)] = placeholder_vectors_init(enc.get_input_embeddings(), model.tokenizer, scene_names).to(model.device)
        vectors.append(table)
    owners = list(range(B))
    manager = get_manager(model.unet)
    collector = LossMaps(plan.map_selector())
    loss_layers = [layer.name for layer in manager.layers_for(collector)]
    history: list[list[torch.Tensor]] = []
    first = {k: [] for k in ("at", "dj", "bg")}
    final = {k: [] for k in ("at", "dj", "bg")}
    updates = []
    if K < 2 or bool((valid.sum(1) < 2).any()):
        warnings.warn("DPL: a scene has fewer than two dynamic tokens; its disjoint-object loss is 0", stacklevel=2)
    if background is not None and not bool(background.has_background.all()):
        missing = (~background.has_background).nonzero().flatten().tolist()
        log.warning("DPL: no background cluster in scene(s) %s; the background loss is dropped there", missing)
    bg_masks = background.masks.to(model.device) if background is not None else None
    bg_ok = background.has_background.to(model.device) if background is not None else None
    token_updates = config.token_steps > 1 and bool(valid.any())

    def measure(step, current, latents, t):
        cond = model.encode(tokens.dynamic, current, owners, image_size)
        collector.reset()
        model.observe(latents, t, cond, loss_layers)
        maps = collector.aggregate().float()
        collector.reset()
        compiled = config.compile if torch.is_grad_enabled() else None  # the no-grad measure stays eager
        return dpl_losses(maps, positions, bg_masks, bg_ok, config, step, valid=valid, compile=compiled)

    def cond_at(i: int, latents: torch.Tensor, t: torch.Tensor) -> TextConditioning:
        nonlocal vectors
        taken = torch.zeros(B, dtype=torch.long, device=model.device)
        if token_updates:
            params = [v.clone().requires_grad_(True) for v in vectors]
            optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **model.optimizer_options)
            active = torch.ones(B, dtype=torch.bool, device=model.device)
            previous = manager.context.cfg_batched
            manager.context.cfg_batched = False  # the token passes are conditional-only
            with manager.applied(collector), _restoring(manager.context, previous):
                for j in range(config.token_steps):
                    values = measure(i, params, latents, t)
                    if j == 0:
                        for key in first:
                            first[key].append(getattr(values, key).detach().cpu())
                    active &= ~below_thresholds(values, i, config)
                    if not bool(active.any()):
                        break
                    before = [p.detach().clone() for p in params]
                    optimizer.zero_grad(set_to_none=True)
                    (values.total * active).sum().backward()
                    optimizer.step()
                    with torch.no_grad():  # scenes already below their thresholds keep their vectors
                        for p, old in zip(params, before):
                            p.copy_(torch.where(active.view(-1, 1, 1), p, old))
                    taken += active.long()
                else:  # every update was taken: measure where the last one left the maps
                    with torch.no_grad():
                        values = measure(i, params, latents, t)
            for key in final:
                final[key].append(getattr(values, key).detach().cpu())
            vectors = [p.detach() for p in params]
        updates.append(taken.cpu())
        history.append([v.clone() for v in vectors])
        with torch.no_grad():
            return model.encode(tokens.dynamic, vectors, owners, image_size)

    null = null_text_inversion(model, trajectory, schedule, cond_at, null_init, guidance_scale, null_text, on_step)
    token_vectors = [torch.stack([h[e] for h in history]) for e in range(len(vectors))]
    losses = {}
    for key in first:
        if first[key]:
            losses[f"{key}_first"] = torch.stack(first[key])
            losses[f"{key}_final"] = torch.stack(final[key])
    return DPLResult(null=null, token_vectors=token_vectors, losses=losses, updates=torch.stack(updates))


@contextlib.contextmanager
def _restoring(context, cfg_batched):
    try:
        yield
    finally:
        context.cfg_batched = cfg_batched


# --------------------------------------------------------------------------------------------------
# The pipelines
# --------------------------------------------------------------------------------------------------

METHODS = ("nti", "ddim")


class RealImageEditMixin:
    """``invert`` and the edit ``__call__``, shared by the SD and SDXL pipeline classes."""

    _output_class = StableDiffusionPipelineOutput

    # -- inversion -------------------------------------------------------------------------------
    def invert(
        self,
        image,
        prompt: str | Sequence[str],
        *,
        nouns: Sequence[str] | Sequence[Sequence[str]] | str | None = None,
        dpl: bool | DPLConfig | None = None,
        method: str = "nti",
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        null_text: NullTextSettings | None = None,
        sample_seed: int | None = None,
        height: int | None = None,
        width: int | None = None,
        record_maps: bool = True,
        background_mask: torch.Tensor | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> Inversion:
        """Invert ``image`` (a path, PIL image, array, or a list of them) described by ``prompt``.

        ``method``: ``nti`` (null-text inversion, default) or ``ddim`` (plain DDIM inversion: the
        empty prompt's null embedding at every step). ``dpl``: True or a :class:`DPLConfig` adds
        DPL's dynamic tokens for ``nouns`` (needs ``nti``). ``null_text``: the NTI settings
        (:class:`NullTextSettings`; ``NullTextSettings.faithful()`` is DPL's 51 steps without early
        stop). ``background_mask`` (B, H, W) bool, any resolution, replaces DPL's self-attention
        k-means background (a segmentation prior, as in DPL's LocInv variant); an image whose mask is
        empty has no background loss. ``on_progress(phase, done, total)`` reports ``"inversion"``
        and ``"optimisation"``.
        """
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        prompts = [check_text("source prompt", p) for p in _per_scene(prompt, len(images), "prompts")]
        if method not in METHODS:
            raise InputError(f"unknown inversion method {method!r}", f"pass one of {', '.join(METHODS)}")
        steps = check_int_range("num_inference_steps", num_inference_steps, 1, 1000, example=50)
        guidance = check_finite("guidance_scale", guidance_scale, 1.0, 100.0, example=7.5)
        config = DPLConfig() if dpl is True else (dpl or None)
        if config is not None:
            config.validate()
            if method != "nti":
                raise InputError("DPL runs with null-text inversion", "use method='nti' (the default) with dpl")
        nti = (null_text or NullTextSettings()).validate()
        noun_lists = _noun_lists(nouns, len(images))
        if config is not None and not any(noun_lists):
            raise InputError("DPL needs the nouns of the source prompt", "pass nouns, e.g. --nouns circle,square")
        arrays, pixels = zip(*(prepare_image(self, im, height, width) for im in images))
        if len({a.shape for a in arrays}) > 1:
            raise InputError("the images of one inversion batch have different sizes", "invert them separately or resize them")
        pixels = torch.cat(pixels)
        H, W = arrays[0].shape[:2]
        tokens = scene_tokens(self.tokenizer if self.tokenizer is not None else self.tokenizer_2, prompts, noun_lists)
        passes = config if config is not None else DPLConfig()  # the optimisation passes' precision and kernels
        fast = ModelAdapter(self, AUTOCAST[passes.precision], attention=passes.attention, compile=passes.compile)
        tf32 = passes.precision == "tf32"
        model = ModelAdapter(self)
        plan = attention_plan(self)
        schedule = DDIMSchedule.from_scheduler(self.scheduler, steps, model.device)
        manager = get_manager(self)
        report = on_progress or (lambda phase, done, total: None)
        with frozen(self.unet, self.vae, *model.encoders):
            z0 = model.encode_images(pixels, sample_seed)
            with torch.no_grad():
                cond = model.encode(tokens.plain, image_size=(H, W))
            map_resolution = plan.resolution(plan.map_level, tuple(z0.shape[-2:]))
            self_resolution = plan.resolution(plan.background_self_level, tuple(z0.shape[-2:]))
            cross_store = AttentionStore(select_layers(kinds="cross", places=("down", "up"), levels=plan.map_level),
                                         cond_only=False, reset_each_run=False)
            self_store = (AttentionStore(select_layers(kinds="self", levels=plan.background_self_level), cond_only=False,
                                         reset_each_run=False) if config is not None else None)
            stores = [s for s in (cross_store if record_maps or config is not None else None, self_store) if s is not None]
            previous = manager.context.cfg_batched
            manager.context.cfg_batched = False  # the inversion is conditional-only
            with manager.applied(*stores), _restoring(manager.context, previous):
                trajectory = ddim_inversion(model, z0, cond, schedule, on_step=lambda k: report("inversion", k, steps))
            extras: dict[str, Any] = {}
            if cross_store.layer_names:
                extras["maps_inversion"] = cross_store.average(map_resolution).float().cpu()
                extras["map_resolution"] = map_resolution
            null_init = model.null(len(images), (H, W))
            token_vectors = None
            if method == "ddim":
                nulls = null_init.embeds[None].expand(steps, *null_init.embeds.shape).clone()
            elif config is None:
                result = null_text_inversion(fast, trajectory, schedule, lambda i, z, t: cond, null_init, guidance, nti,
                                             on_step=lambda k: report("optimisation", k, steps))
                nulls = result.null_embeddings
                extras["nti_losses"] = result.losses
                extras["nti_iterations"] = result.iterations
            else:
                background = None
                if background_mask is not None:
                    background = given_background(background_mask, len(images), map_resolution)
                    extras["background"] = background
                elif config.lambda_bg > 0:
                    sa = self_store.average(self_resolution).float()
                    maps, valid = noun_maps(cross_store.average(map_resolution).float(), tokens, map_resolution)
                    background = background_masks(sa, self_resolution, maps, valid, tokens.names, map_resolution, config)
                    extras["background"] = background
                with tf32_scope(model.device, tf32):
                    result = dpl_inversion(fast, trajectory, schedule, tokens, null_init, guidance, nti, config, background,
                                           plan, (H, W), on_step=lambda k: report("optimisation", k, steps))
                nulls = result.null.null_embeddings
                token_vectors = result.token_vectors
                extras.update(nti_losses=result.null.losses, nti_iterations=result.null.iterations,
                              dpl_losses=result.losses, dpl_updates=result.updates)
        settings = {
            "prompts": prompts,
            "nouns": noun_lists if any(noun_lists) else None,
            "placeholder_names": tokens.names if config is not None else None,
            "method": "dpl" if config is not None else method,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "null_text": vars(nti) if method == "nti" else None,
            "dpl": config.to_dict() if config is not None else None,
            "sample_seed": sample_seed,
            "height": H,
            "width": W,
            "scheduler": schedule.config,
            "model": str(getattr(self, "name_or_path", "") or getattr(self.config, "_name_or_path", "") or type(self).__name__),
            "model_fingerprint": model_fingerprint(self),
            "image_fingerprints": [image_fingerprint(a) for a in arrays],
        }
        return Inversion(
            trajectory=trajectory.detach(), null_embeddings=nulls.detach().float(), settings=settings,
            token_vectors=token_vectors, null_pooled=null_init.pooled.detach() if null_init.pooled is not None else None,
            extras=extras,
        )

    # -- editing ---------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        inversion: Inversion,
        prompt: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        mode: str = "replace",
        cross_replace: float | Sequence[float] = 0.8,
        self_replace: float | Sequence[float] = 0.4,
        word_windows: dict[str, float | Sequence[float]] | None = None,
        reweight: dict[str, float] | None = None,
        local_blend: Sequence[str] | str | None = None,
        local_blend_threshold: float = 0.3,
        guidance_scale: float | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        attention_store: AttentionStore | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        """Edit the inverted image(s): ``prompt`` is the edit prompt (one per image, or a list of
        edit prompts per image; None reconstructs only). Windows are fractions of the steps
        (``cross_replace=0.8``, ``self_replace=0.4``: DPL's 40 and 20 of 50). Per image the output
        holds ``[reconstruction, edit_1, ...]``."""
        if not isinstance(inversion, Inversion):
            raise InputError("the edit needs an Inversion (from .invert or Inversion.load)", "invert the image first")
        inversion.check(self)
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in ("latents",)]
        if bad:
            raise InputError(f"callback tensor input {bad[0]!r} is not offered by this pipeline", "use ['latents']")
        B, T = inversion.batch_size, inversion.num_steps
        guidance = inversion.settings["guidance_scale"] if guidance_scale is None else check_finite("guidance_scale", guidance_scale, 1.0, 100.0)
        edits = self._edit_prompts(prompt, B)
        tokenizer = self.tokenizer if self.tokenizer is not None else self.tokenizer_2
        names = inversion.placeholder_names if inversion.token_vectors is not None else [[] for _ in range(B)]
        nouns = inversion.settings.get("nouns") or [[] for _ in range(B)]
        groups = []
        for b in range(B):
            src = tokenize_prompt(tokenizer, inversion.prompts[b], nouns[b] if names[b] else (), collapse=True)
            group = [src] + [tokenize_prompt(tokenizer, check_text("edit prompt", e), nouns[b] if names[b] else (),
                                             names=src.placeholder_names if names[b] else None) for e in edits[b]]
            groups.append(group)
        P = len(groups[0])
        prompts = [p for g in groups for p in g]
        owners = [b for b in range(B) for _ in range(P)]
        model = ModelAdapter(self)
        schedule = DDIMSchedule.from_scheduler(self.scheduler, T, model.device)
        H, W = inversion.settings["height"], inversion.settings["width"]
        controllers = []
        blend = None
        if P > 1:
            if isinstance(local_blend, str):
                local_blend = [w.strip() for w in local_blend.split(",") if w.strip()]
            built = make_controllers(self, groups, mode=mode, cross_replace=cross_replace, self_replace=self_replace,
                                     word_windows=word_windows, reweight=reweight, local_blend=local_blend,
                                     local_blend_threshold=local_blend_threshold, num_inference_steps=T)
            controllers = built.techniques
            blend = built.local_blend
        techniques = controllers + ([attention_store] if attention_store is not None else [])
        repeat = torch.tensor(owners, device=model.device)
        latents = inversion.final_latents.to(model.device)[repeat].float()
        vectors = None if inversion.token_vectors is None else [v.to(model.device) for v in inversion.token_vectors]
        fixed_cond = None if vectors is not None else model.encode(prompts, image_size=(H, W))
        null_base = model.null(len(prompts), (H, W))
        if inversion.null_pooled is not None:
            null_base = TextConditioning(null_base.embeds, inversion.null_pooled.to(model.device)[repeat], null_base.time_ids)
        manager = get_manager(self)
        previous = manager.context.cfg_batched
        manager.context.cfg_batched = guidance != 1.0
        report = on_progress or (lambda phase, done, total: None)
        with _restoring(manager.context, previous):
            with manager.applied(*techniques):
                manager.start_run(T)
                for i in range(T):
                    t = schedule.timesteps[i]
                    cond = fixed_cond if vectors is None else model.encode(prompts, [v[i] for v in vectors], owners, (H, W))
                    null = null_base.with_embeds(inversion.null_embeddings[i].to(model.device)[repeat])
                    out = model.guided(latents, t, null, cond, guidance)
                    latents = ddim_step(latents, out, schedule.alpha_from[i], schedule.alpha_to[i], schedule.prediction_type)
                    if blend is not None:
                        latents = blend.blend(latents, i)
                    if callback_on_step_end is not None:
                        outputs = callback_on_step_end(self, i, t, {"latents": latents})
                        latents = outputs.pop("latents", latents)
                    report("editing", i + 1, T)
        if output_type == "latent":
            images = latents
        else:
            pixels = model.decode(latents)
            images = self.image_processor.postprocess(pixels, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,) if self._output_class is StableDiffusionXLPipelineOutput else (images, None)
        if self._output_class is StableDiffusionXLPipelineOutput:
            return StableDiffusionXLPipelineOutput(images=images)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)

    @staticmethod
    def _edit_prompts(prompt, count: int) -> list[list[str]]:
        if prompt is None:
            return [[] for _ in range(count)]
        if isinstance(prompt, str):
            return [[prompt] for _ in range(count)]
        prompt = list(prompt)
        if all(isinstance(p, str) for p in prompt):
            if count == 1:
                return [prompt]
            if len(prompt) != count:
                raise InputError(f"{len(prompt)} edit prompts for {count} inverted images", "pass one edit prompt per image")
            return [[p] for p in prompt]
        if len(prompt) != count or len({len(p) for p in prompt}) != 1:
            raise InputError("pass as many lists of edit prompts as images, all of one length", "e.g. [[edit], [edit]]")
        return [list(p) for p in prompt]


class RealImageEditPipeline(RealImageEditMixin, StableDiffusionPipeline):
    """SD 1.x / 2.x (and Shapes SD) real-image editing: ``invert`` then ``__call__`` (see the mixin)."""

    _output_class = StableDiffusionPipelineOutput


class RealImageEditXLPipeline(RealImageEditMixin, StableDiffusionXLPipeline):
    """SDXL real-image editing (two text encoders: dynamic tokens in both)."""

    _output_class = StableDiffusionXLPipelineOutput


def real_image_edit_pipeline(pipe) -> RealImageEditMixin:
    """The real-image edit pipeline of ``pipe``'s model type, sharing its components (``from_pipe``)."""
    if isinstance(pipe, RealImageEditMixin):
        return pipe
    cls = RealImageEditXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else RealImageEditPipeline
    return pipeline_as(cls, pipe)


# --------------------------------------------------------------------------------------------------
# Attention-map pictures
# --------------------------------------------------------------------------------------------------


def word_maps(
    tokenizer,
    prompt: str,
    maps: torch.Tensor,
    resolution: tuple[int, int],
    words: Sequence[str],
    plain: bool = True,
    nouns: Sequence[str] = (),
) -> list[tuple[str, torch.Tensor]]:
    """Per occurrence of each word of ``prompt``: its (h, w) map from cross-attention (Q, keys) of one
    row (the sum over the word's tokens). ``plain=False`` reads the prompt with the dynamic tokens
    of ``nouns`` (as DPL encodes it)."""
    tokens = tokenize_prompt(tokenizer, prompt) if plain else tokenize_prompt(tokenizer, prompt, nouns, collapse=True)
    h, w = resolution
    out = []
    for word in words:
        occurrence = 0
        for text, span in zip(tokens.words, tokens.spans):
            if text.strip(".,;:!?").lower() != word.lower():
                continue
            occurrence += 1
            keep = [p for p in span if p < maps.shape[-1]]
            label = word if occurrence == 1 else f"{word}#{occurrence}"
            out.append((label, maps[:, keep].sum(-1).reshape(h, w).float().cpu()))
    return out


def _heat(values):
    """[0, 1] array -> RGB uint8 (a blue-cyan-yellow-red ramp)."""
    import numpy as np

    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0.05, 0.05, 0.45], [0.0, 0.75, 0.95], [0.98, 0.9, 0.1], [0.85, 0.05, 0.05]])
    pos = v * (len(stops) - 1)
    i = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    f = pos - i
    rgb = stops[i[..., 0]] * (1 - f) + stops[i[..., 0] + 1] * f
    return (rgb * 255).astype(np.uint8)


def map_picture(image, rows: Sequence[tuple[str, Sequence[tuple[str, torch.Tensor]]]], words: Sequence[str] = (), cell: int = 128):
    """A grid a person can read: per row (a label and its word maps) the image, then each word's
    map as a heat overlay on it (min-max normalised per map), with labels."""
    import numpy as np
    from PIL import Image, ImageDraw

    base = image.convert("RGB").resize((cell, cell), Image.NEAREST)
    base_arr = np.asarray(base).astype(np.float32)
    columns = max((len(r[1]) for r in rows), default=0) + 1
    label_h = 14
    canvas = Image.new("RGB", (columns * cell, len(rows) * (cell + 2 * label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (title, maps) in enumerate(rows):
        y = r * (cell + 2 * label_h)
        draw.text((2, y + 1), title, fill=(0, 0, 0))
        canvas.paste(base, (0, y + 2 * label_h))
        draw.text((2, y + label_h + 1), "image", fill=(60, 60, 60))
        for c, (label, m) in enumerate(maps, start=1):
            m = m.float()
            lo, hi = float(m.min()), float(m.max())
            norm = (m - lo) / (hi - lo) if hi - lo > 1e-12 else torch.zeros_like(m)
            up = torch.nn.functional.interpolate(norm[None, None], size=(cell, cell), mode="bilinear", align_corners=False)[0, 0]
            heat = _heat(up.numpy()).astype(np.float32)
            blend = (0.45 * base_arr + 0.55 * heat).clip(0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(blend), (c * cell, y + 2 * label_h))
            draw.text((c * cell + 2, y + label_h + 1), label, fill=(0, 0, 0))
    return canvas
