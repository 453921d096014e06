"""RealCustom pipelines: :class:`RealCustomPipeline` (SD 1.x/2.x, Shapes SD) and :class:`RealCustomXLPipeline`.

Both subclass the diffusers pipeline of their model type, so ``from_pretrained``, ``from_pipe``,
``save_pretrained``, ``callback_on_step_end``, ``output_type`` and offloading behave as diffusers
users expect; called without ``subject_image`` they are the plain diffusers pipeline. The trained
parts are loaded with :meth:`RealCustomMixin.load_realcustom` (as diffusers loads IP-Adapters: not
a pipeline component, so ``save_pretrained`` saves the base model, and the checkpoint travels on
its own). Outputs are diffusers' output classes, with one more field ``masks``: the influence mask
used at each step, ``(steps, batch, H, W)``.

One sampling step (paper mode, the default)::

    rows  [ text-only (T) | unconditional (0) | text + image (TI) ]   one UNet call
    eps = eps_0 + omega_t (eps_T - eps_0) + omega_i (eps_TI - eps_T)             (Eq. 13)

The text-only rows give the real word's cross-attention (read by :class:`WordMapReader` through
the core's deferred, layer-batched maps) and the adaptive mask of the *next* step; the visual
branch of the TI rows is multiplied by the current mask. Step 0 takes its mask and ``eps_T`` from
one text-only call on ``z_0`` (so its guidance call has 2 rows, and step 1 reuses that mask). The scoring module picks and re-weights
the image features from the text, the masked latent and the timestep before each call. Release
mode (``guidance_mode="release"``): ``eps = eps_u + w (eps_c - eps_u)`` with ``eps_u`` from the
negative prompt and the encoding of an all-zero image (masked too) and ``eps_c`` from the TI rows;
the text-only rows are then only there for the mask, and leave the batch once the mask is reused
(``mask_reused_step``), so a step costs one call of 3 rows while the mask is recomputed and 2
rows after.

Deviation, and why: the paper and the release compute the mask of step ``t`` from a text-only
pass on ``z_t`` that runs *before* the guidance passes (the release: three UNet calls per step).
Here the mask is read in the same batched call as the guidance branches (one call per step), so
the mask applied at step ``t`` comes from ``z_{t-1}``; step 0 gets its mask from one text-only
call on ``z_0``. ``mask_pass="separate"`` restores the sequential order (a text-only call reading
the mask of ``z_t``, then one call with the other branches; in paper mode its output is
``eps_T``), for comparison.

``mask_pass="conditional"`` (an option, not the method): the word map is read from the text +
image rows of the batched call instead of text-only rows, i.e. the text cross-attention of the
branch whose visual branch is on. In release mode the text-only rows then leave the batch
altogether (one call of 2 rows per step, as plain CFG, after step 0's text-only call); in paper
mode they stay (Eq. 13 needs ``eps_T``) and only the map's source changes. Both the paper (Sec.
3.3, the T2I branch "with the visual condition set to 0") and the release (its mask pass without
image tokens) read the mask from a text-only branch, which is why the default keeps it.

Cost (what a step runs, release guidance, batch of ``b`` prompts): while the mask is recomputed,
one UNet call of ``3 b`` rows (text-only | zero image | subject), plain CFG's is ``2 b``; once it is
reused, ``2 b``. The word maps are computed for the text-only rows only, after the call, batched
across layers; every layer keeps the fused attention kernel. The zero-image and subject branches
are one attention call per layer (adjacent rows, one mask); their keys/values are projected once
per run (and split into heads once per layer and run); the image encoder runs once per image per
run; no host sync in the loop (the scheduler gets its begin index, as in diffusers' SDXL pipeline).
The visual condition (with its mask resized per resolution) and the concatenated text conditioning
are kept across calls while they do not change (the mask reused, the same rows): the eager UNet is
launch-bound, so RealCustom's cost is the operators it adds per layer and call
(``benchmarks/bench_realcustom.py`` counts them per step).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput

from attncraft.attention_processors.manager import get_manager
from attncraft.attention_processors.realcustom import (
    MASK_MODES,
    RealCustomVisualAttention,
    VisualCondition,
    VisualTokens,
    WordMapReader,
    adaptive_mask,
    token_weights,
    word_token_indices,
)
from attncraft.attention_processors.selection import CROSS_ATTENTION, LayerSelector
from attncraft.errors import InputError, TechniqueError
from attncraft.pipelines.latents import UserLatentsMixin

GUIDANCE_MODES = ("paper", "release")
MASK_PASSES = ("batched", "separate", "conditional")
PAPER_DEFAULTS = {"guidance_mode": "paper", "image_guidance_scale": 12.5, "gamma_scope": 0.25, "gamma_num": 0.8,
                  "mask_mode": "max"}


@dataclass
class RealCustomPipelineOutput(StableDiffusionPipelineOutput):
    """Diffusers' SD output plus ``masks``: the mask used at each step, (steps, batch, H, W), on CPU."""

    masks: torch.Tensor | None = None


@dataclass
class RealCustomXLPipelineOutput(StableDiffusionXLPipelineOutput):
    """Diffusers' SDXL output plus ``masks`` (see :class:`RealCustomPipelineOutput`)."""

    masks: torch.Tensor | None = None


def realcustom_guidance(mode: str, predictions: dict[str, torch.Tensor], guidance_scale: float,
                        image_guidance_scale: float) -> torch.Tensor:
    """Combine the branch predictions (``text``, ``uncond``, ``image``) of one step.

    ``paper``: ``eps_0 + omega_t (eps_T - eps_0) + omega_i (eps_TI - eps_T)`` (Eq. 13 on the
    predictions; with ``omega_i = 0`` it is plain classifier-free guidance). ``release``:
    ``eps_u + w (eps_c - eps_u)``, where ``uncond`` carries the zero-image visual branch and ``image``
    is the conditional branch.
    """
    uncond, image = predictions["uncond"], predictions["image"]
    if mode == "release":
        return uncond + guidance_scale * (image - uncond)
    text = predictions["text"]
    return uncond + guidance_scale * (text - uncond) + image_guidance_scale * (image - text)


@dataclass
class _Branch:
    """Text conditioning of one block of rows: embeddings and (SDXL) the added conditions."""

    embeds: torch.Tensor
    added: dict[str, torch.Tensor] | None = None


@dataclass
class RealCustomOptions:
    """The RealCustom settings of one call (validated)."""

    subject_word: str | list[str]
    guidance_mode: str = "paper"
    image_guidance_scale: float = 12.5
    gamma_scope: float = 0.25
    gamma_num: float = 0.8
    use_scoring: bool = True
    mask_mode: str = "max"
    mask_reused_step: int | None = None
    mask_pass: str = "batched"
    mask_layers: LayerSelector | None = None
    mask_heads: Sequence[int] | None = None

    def validate(self, num_steps: int, has_scoring: bool) -> None:
        if self.guidance_mode not in GUIDANCE_MODES:
            raise InputError(f"unknown guidance mode {self.guidance_mode!r}", f"pass one of {', '.join(GUIDANCE_MODES)}")
        if self.mask_pass not in MASK_PASSES:
            raise InputError(f"unknown mask pass {self.mask_pass!r}", f"pass one of {', '.join(MASK_PASSES)}")
        if self.mask_mode not in MASK_MODES:
            raise InputError(f"unknown mask mode {self.mask_mode!r}", f"pass one of {', '.join(MASK_MODES)}")
        for name, value, low in (("gamma_scope", self.gamma_scope, 0.0), ("gamma_num", self.gamma_num, 1e-9)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= 1.0):
                raise InputError(f"{name} must be in [{low:g}, 1], got {value}", f"pass e.g. {name}={PAPER_DEFAULTS[name]}")
        if not math.isfinite(float(self.image_guidance_scale)):
            raise InputError(f"image_guidance_scale must be finite, got {self.image_guidance_scale}", "pass e.g. 3")
        if self.use_scoring and not has_scoring:
            raise TechniqueError("this RealCustom checkpoint has no scoring module", "pass use_scoring=False (--no-scoring)")
        if self.use_scoring and self.guidance_mode == "release":
            raise InputError("the release guidance has no scoring module", "pass use_scoring=False with guidance_mode='release'")
        if self.mask_reused_step is not None and self.mask_reused_step < 1:
            raise InputError(f"mask_reused_step must be at least 1, got {self.mask_reused_step}",
                             "pass None to recompute the mask at every step")

    def reuse_from(self, num_steps: int) -> int:
        """The first step that reuses the mask (``num_steps``: never)."""
        return num_steps if self.mask_reused_step is None else min(int(self.mask_reused_step), num_steps)


class RealCustomMixin:
    """The RealCustom parts of a pipeline: loading the adapter and the image encoder, the sampling loop."""

    realcustom_adapter = None
    realcustom_encoder = None

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """diffusers' ``from_pipe``; a RealCustom pipeline's loaded parts come along (shared)."""
        new = super().from_pipe(pipeline, **kwargs)
        for name in ("realcustom_adapter", "realcustom_encoder"):
            if getattr(pipeline, name, None) is not None:
                setattr(new, name, getattr(pipeline, name))
        return new

    # -- loading ------------------------------------------------------------------------------
    def load_realcustom(self, adapter: Any = None, image_encoder: Any = None, dtype: torch.dtype | None = None):
        """Load the trained parts: ``adapter`` a checkpoint path (file or folder; None = the Shapes
        adapter shipped in ``assets/models/shapes-realcustom``) or a
        :class:`~attncraft.realcustom.modules.RealCustomAdapter`; ``image_encoder`` a reference
        (``shapes``, folder, Hub id) or an :class:`~attncraft.realcustom.encoder.ImageEncoder`, by
        default the one the checkpoint names. Checks that both fit this pipeline's UNet."""
        from attncraft.realcustom.encoder import ImageEncoder, load_image_encoder
        from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, RealCustomAdapter, checkpoint_file, load_adapter

        device, dtype = self.unet.device, dtype or self.unet.dtype
        if adapter is None:
            if not checkpoint_file(SHAPES_ADAPTER_DIR).is_file():
                raise TechniqueError("no RealCustom checkpoint is shipped for Shapes SD yet",
                                     "train one (python -m attncraft.shapes.training realcustom) and pass it as the adapter")
            adapter = SHAPES_ADAPTER_DIR
        if isinstance(adapter, RealCustomAdapter):
            adapter.check_unet(self.unet)
            adapter = adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)
        else:
            adapter = load_adapter(adapter, unet=self.unet, device=device, dtype=dtype)
        if image_encoder is None or isinstance(image_encoder, str):
            image_encoder = load_image_encoder(image_encoder or adapter.config.encoder, layer=adapter.config.encoder_layer,
                                               device=device, dtype=dtype)
        elif not isinstance(image_encoder, ImageEncoder):
            raise TechniqueError(f"image_encoder must be an ImageEncoder or a model reference, got {type(image_encoder).__name__}",
                                 "wrap a transformers vision model with attncraft.realcustom.encoder.wrap_vision_model")
        if image_encoder.hidden_size != adapter.config.feature_dim:
            raise TechniqueError(
                f"the image encoder gives {image_encoder.hidden_size}-d features; the RealCustom checkpoint expects "
                f"{adapter.config.feature_dim}-d ({adapter.config.encoder})",
                "pass the image encoder the checkpoint was trained with",
            )
        self.realcustom_adapter = adapter
        self.realcustom_encoder = image_encoder.to(device)
        return self

    def unload_realcustom(self) -> None:
        self.realcustom_adapter = None
        self.realcustom_encoder = None

    def _realcustom_parts(self):
        if self.realcustom_adapter is None:
            raise TechniqueError("no RealCustom checkpoint is loaded", "call pipe.load_realcustom(path) first")
        device, dtype = self.unet.device, self.unet.dtype
        adapter = self.realcustom_adapter
        if next(adapter.parameters()).device != device:
            adapter.to(device)
        if self.realcustom_encoder.device != device:
            self.realcustom_encoder.to(device)
        return adapter, self.realcustom_encoder, dtype

    def options_from(self, subject_word: str | list[str], **kwargs: Any) -> RealCustomOptions:
        """Call settings, the checkpoint's recommended values (then the paper's) where None."""
        defaults = dict(PAPER_DEFAULTS)
        if self.realcustom_adapter is not None:
            defaults.update(self.realcustom_adapter.config.defaults or {})
        values = {k: (v if v is not None else defaults.get(k)) for k, v in kwargs.items()}
        values = {k: v for k, v in values.items() if v is not None}
        if values.get("use_scoring") is None:
            has = self.realcustom_adapter is not None and self.realcustom_adapter.scoring is not None
            values["use_scoring"] = has and values.get("guidance_mode", "paper") == "paper"
        return RealCustomOptions(subject_word=subject_word, **values)

    # -- subject ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_subject(self, subject_image: Any, batch: int, per_prompt: int, zero: bool = False,
                       parts: tuple | None = None) -> torch.Tensor:
        """Projected image features ``(batch, n_i, width)`` of one subject image (or one per prompt).

        ``parts``: what :meth:`_realcustom_parts` returned, when the caller has it already (reading
        the UNet's device and dtype walks its modules: once per run is enough)."""
        adapter, encoder, dtype = parts or self._realcustom_parts()
        if zero:
            states = encoder.zero_image_states(1)
        else:
            states = encoder.encode(subject_image)
        feats = adapter.project(states).to(dtype)
        n_prompts = batch // per_prompt
        if feats.shape[0] == 1:
            return feats.expand(batch, -1, -1).contiguous()
        if feats.shape[0] == n_prompts:
            return feats.repeat_interleave(per_prompt, dim=0)
        raise InputError(f"got {feats.shape[0]} subject images for {n_prompts} prompts", "pass one subject image, or one per prompt")

    # -- the loop -----------------------------------------------------------------------------
    def _realcustom_sample(
        self,
        *,
        options: RealCustomOptions,
        prompts: list[str],
        text: _Branch,
        uncond: _Branch,
        subject_image: Any,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        num_images_per_prompt: int,
        extra_step_kwargs: dict[str, Any],
        guidance_scale: float,
        guidance_rescale: float,
        cross_attention_kwargs: dict[str, Any] | None,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str],
        callback_tensors: Callable[[_Branch, _Branch], dict[str, torch.Tensor]],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self._realcustom_parts()
        adapter, encoder, dtype = parts
        device = latents.device
        batch = latents.shape[0]
        n_steps = len(timesteps)
        options.validate(n_steps, adapter.scoring is not None)
        reuse = options.reuse_from(n_steps)
        paper = options.guidance_mode == "paper"
        batched = options.mask_pass != "separate"

        words = [options.subject_word] * len(prompts) if isinstance(options.subject_word, str) else list(options.subject_word)
        if len(words) != len(prompts):
            raise InputError(f"got {len(words)} subject words for {len(prompts)} prompts", "pass one word, or one per prompt")
        indices = [word_token_indices(self.tokenizer, p, w) for p, w in zip(prompts, words)]
        weights = token_weights(indices, text.embeds.shape[1], device).repeat_interleave(num_images_per_prompt, 0)
        subject_features = self.encode_subject(subject_image, batch, num_images_per_prompt, parts=parts)
        tokens = VisualTokens(subject_features)
        # release: the unconditional rows (zero image) and the conditional rows (subject) are adjacent
        # in the batch and share the mask, so their visual branch is one attention call per layer
        # over both blocks (their keys/values projected once per run for both)
        pair_tokens = None if paper else VisualTokens(torch.cat(
            [self.encode_subject(None, batch, num_images_per_prompt, zero=True, parts=parts), subject_features]))
        mask_role = "image" if options.mask_pass == "conditional" else "text"

        visual = RealCustomVisualAttention(adapter)
        reader = WordMapReader(options.mask_layers or CROSS_ATTENTION, heads=options.mask_heads)
        manager = get_manager(self)
        previous_cfg = manager.context.cfg_batched
        manager.context.cfg_batched = False  # the batch is [T | 0 | TI], not [uncond; cond]
        alpha_bars = self.scheduler.alphas_cumprod.to(device)[timesteps.long().clamp(0, len(self.scheduler.alphas_cumprod) - 1).to(device)]
        mask = None
        masks: list[torch.Tensor] = []
        manager.start_run(n_steps)
        if hasattr(self.scheduler, "set_begin_index"):  # as diffusers' SDXL pipeline: no index search (a host sync)
            self.scheduler.set_begin_index(0)

        # made once and reused while what they are made of is unchanged (host work per call: the UNet
        # is launch-bound): the release's visual condition per mask (its resized masks with it), the
        # concatenated text conditioning per set of roles
        kept_condition: dict[tuple, tuple[Any, VisualCondition]] = {}
        kept_inputs: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict | None]] = {}

        def call_unet(x, t, roles, read=None):
            """One UNet call over the blocks ``roles`` (the word map read on the rows of role ``read``);
            returns {role: prediction}."""
            branches = {"text": text, "uncond": uncond, "image": text}
            visual.conditions = []
            start = 0
            spans = {}
            for role in roles:
                spans[role] = slice(start, start + batch)
                start += batch
            if "image" in roles and not paper:  # release: the zero image's branch (masked too) and the subject's
                pair = slice(spans["uncond"].start, spans["image"].stop)
                kept = kept_condition.get((pair.start, pair.stop))
                if kept is None or kept[0] is not mask:
                    condition = VisualCondition(pair, pair_tokens, mask=None if mask is None else torch.cat([mask, mask]))
                    kept = kept_condition[(pair.start, pair.stop)] = (mask, condition)
                visual.conditions.append(kept[1])
            elif "image" in roles:
                visual.conditions.append(VisualCondition(spans["image"], tokens, index=scored[0], weights=scored[1], mask=mask))
            if read:
                manager.install(reader)
                reader.arm(spans[read], weights)
            elif reader in manager.techniques:
                manager.remove(reader)
            inputs = kept_inputs.get(tuple(roles))
            if inputs is None or inputs[0] is not text.embeds or inputs[1] is not uncond.embeds:  # a callback may replace them
                added = None
                if text.added is not None:
                    added = {k: torch.cat([branches[r].added[k] for r in roles]) for k in text.added}
                inputs = (text.embeds, uncond.embeds, torch.cat([branches[r].embeds for r in roles]), added)
                kept_inputs[tuple(roles)] = inputs
            out = self.unet(
                torch.cat([x] * len(roles)), t, encoder_hidden_states=inputs[2],
                cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=inputs[3], return_dict=False,
            )[0]
            visual.conditions = []
            return {role: out[span] for role, span in spans.items()}

        def read_mask():
            reader.disarm()
            return adaptive_mask(reader.word_map(), options.gamma_scope, options.mask_mode)

        try:
            with manager.applied(visual):
                with self.progress_bar(total=n_steps) as bar:
                    for i, t in enumerate(timesteps):
                        if getattr(self, "_interrupt", False):
                            continue
                        x = self.scheduler.scale_model_input(latents, t) if hasattr(self.scheduler, "scale_model_input") else latents
                        scored = (None, None)
                        predictions: dict[str, torch.Tensor] = {}
                        recompute = i < reuse
                        if (batched and i == 0) or (not batched and recompute):
                            # text-only call on z_t: the mask of this step (and, in paper mode, eps_T)
                            predictions.update(call_unet(x, t, ["text"], read="text"))
                            mask = read_mask()
                        if options.use_scoring:
                            scored = self._scores(adapter, tokens.features, text.embeds, x, mask, alpha_bars[i], options.gamma_num)
                        # the call of step i reads the mask of step i + 1; step 0's (of z_0) is the
                        # text-only call's, so the first read is at step 1
                        read_now = batched and 1 <= i < min(reuse, n_steps) - 1
                        text_rows = (paper and "text" not in predictions) or (read_now and mask_role == "text")
                        roles = (["text"] if text_rows else []) + ["uncond", "image"]
                        masks.append(mask[:, 0])  # kept on the device: no host sync per step
                        predictions.update(call_unet(x, t, roles, read=mask_role if read_now else None))
                        if read_now:
                            mask = read_mask()
                        noise = realcustom_guidance(options.guidance_mode, predictions, guidance_scale,
                                                    float(options.image_guidance_scale))
                        if guidance_rescale > 0:
                            noise = rescale_noise_cfg(noise, predictions["image"], guidance_rescale=guidance_rescale)
                        latents = self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]
                        if callback_on_step_end is not None:
                            available = {"latents": latents, **callback_tensors(text, uncond)}
                            outputs = callback_on_step_end(self, i, t, {k: available[k] for k in callback_on_step_end_tensor_inputs})
                            latents = outputs.pop("latents", latents)
                            text.embeds = outputs.pop("prompt_embeds", text.embeds)
                            uncond.embeds = outputs.pop("negative_prompt_embeds", uncond.embeds)
                        bar.update()
        finally:
            manager.remove(reader)
            manager.context.cfg_batched = previous_cfg
        return latents, torch.stack(masks).float().cpu() if masks else torch.zeros(0)

    @staticmethod
    def _scores(adapter, features, text_embeds, x, mask, alpha_bar, gamma_num):
        """The scoring module's (index, weights) for the TI rows: masked latent, text, timestep."""
        from attncraft.realcustom.modules import reweight_and_select

        m = F.interpolate(mask.float(), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        scores = adapter.scoring(features, text_embeds, (x.float() * m).to(features.dtype), alpha_bar).scores
        weights, index = reweight_and_select(scores, gamma_num)
        return index, weights


def realcustom_pipeline_for(pipe):
    """The RealCustom pipeline of ``pipe``'s type, sharing its components (no copy, no dtype change)."""
    if isinstance(pipe, StableDiffusionXLPipeline):
        out = RealCustomXLPipeline(**pipe.components)
    else:
        out = RealCustomPipeline(**pipe.components, requires_safety_checker=False)
    out.set_progress_bar_config(disable=True)
    return out


def _prompt_list(prompt: Any) -> list[str]:
    if prompt is None:
        raise InputError("RealCustom needs the prompt as text (its word's tokens are looked up there)",
                         "pass prompt=... instead of prompt_embeds")
    return [prompt] if isinstance(prompt, str) else list(prompt)


class RealCustomPipeline(RealCustomMixin, UserLatentsMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` with RealCustom (SD 1.x/2.x and Shapes SD); see the module docstring."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subject_image: Any = None,
        subject_word: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        image_guidance_scale: float | None = None,
        guidance_mode: str | None = None,
        gamma_scope: float | None = None,
        gamma_num: float | None = None,
        use_scoring: bool | None = None,
        mask_mode: str | None = None,
        mask_reused_step: int | None = None,
        mask_pass: str = "batched",
        mask_layers: LayerSelector | None = None,
        mask_heads: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        """Generate with the subject of ``subject_image`` narrowing ``subject_word`` of the prompt.

        Without ``subject_image`` this is ``StableDiffusionPipeline.__call__``. RealCustom settings
        left at None take the checkpoint's recommended values, then the paper's (guidance
        ``paper``, ``image_guidance_scale`` (omega_i) 12.5, ``gamma_scope`` 0.25, ``gamma_num`` 0.8,
        mask ``max``); ``guidance_scale`` is omega_t (paper) or w (release).
        """
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if subject_image is None:
            return super().__call__(
                prompt=prompt, height=height, width=width, num_inference_steps=num_inference_steps, timesteps=timesteps,
                sigmas=sigmas, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                num_images_per_prompt=num_images_per_prompt, eta=eta, generator=generator, latents=latents,
                prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds, output_type=output_type,
                return_dict=return_dict, cross_attention_kwargs=cross_attention_kwargs, guidance_rescale=guidance_rescale,
                clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=tensor_inputs, **kwargs,
            )
        options = self.options_from(
            subject_word, guidance_mode=guidance_mode, image_guidance_scale=image_guidance_scale, gamma_scope=gamma_scope,
            gamma_num=gamma_num, use_scoring=use_scoring, mask_mode=mask_mode, mask_reused_step=mask_reused_step,
            mask_pass=mask_pass, mask_layers=mask_layers, mask_heads=mask_heads,
        )
        prompts = _prompt_list(prompt)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, None, negative_prompt, None, None, callback_on_step_end_tensor_inputs=tensor_inputs)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = guidance_scale, guidance_rescale, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False
        device = self._execution_device
        positive, negative = self.encode_prompt(
            prompts, device, num_images_per_prompt, True, negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, clip_skip=clip_skip,
        )
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        self._num_timesteps = len(timesteps)
        latents = self.prepare_latents(len(prompts) * num_images_per_prompt, self.unet.config.in_channels, height, width,
                                       positive.dtype, device, generator, latents)
        text, uncond = _Branch(positive), _Branch(negative)
        latents, masks = self._realcustom_sample(
            options=options, prompts=prompts, text=text, uncond=uncond, subject_image=subject_image, latents=latents,
            timesteps=timesteps, num_images_per_prompt=num_images_per_prompt,
            extra_step_kwargs=self.prepare_extra_step_kwargs(generator, eta), guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale, cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
            callback_tensors=lambda t, u: {"prompt_embeds": t.embeds, "negative_prompt_embeds": u.embeds},
        )
        if output_type == "latent":
            image, nsfw = latents, None
        else:
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, nsfw = self.run_safety_checker(image, device, positive.dtype)
            denormalize = [True] * image.shape[0] if nsfw is None else [not n for n in nsfw]
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=denormalize)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, nsfw, masks
        return RealCustomPipelineOutput(images=image, nsfw_content_detected=nsfw, masks=masks)


class RealCustomXLPipeline(RealCustomMixin, UserLatentsMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` with RealCustom; see the module docstring.

    Micro-conditioning ``time_ids`` follow diffusers' (height, width) order, not the release's
    swapped one (it matters only for non-square sizes).
    """

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        subject_image: Any = None,
        subject_word: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        image_guidance_scale: float | None = None,
        guidance_mode: str | None = None,
        gamma_scope: float | None = None,
        gamma_num: float | None = None,
        use_scoring: bool | None = None,
        mask_mode: str | None = None,
        mask_reused_step: int | None = None,
        mask_pass: str = "batched",
        mask_layers: LayerSelector | None = None,
        mask_heads: Sequence[int] | None = None,
        **kwargs: Any,
    ):
        """As :meth:`RealCustomPipeline.__call__`, for SDXL (without ``subject_image``: the plain pipeline)."""
        tensor_inputs = list(callback_on_step_end_tensor_inputs or ["latents"])
        if subject_image is None:
            return super().__call__(
                prompt=prompt, prompt_2=prompt_2, height=height, width=width, num_inference_steps=num_inference_steps,
                timesteps=timesteps, sigmas=sigmas, guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                negative_prompt_2=negative_prompt_2, num_images_per_prompt=num_images_per_prompt, eta=eta,
                generator=generator, latents=latents, output_type=output_type, return_dict=return_dict,
                cross_attention_kwargs=cross_attention_kwargs, guidance_rescale=guidance_rescale,
                original_size=original_size, crops_coords_top_left=crops_coords_top_left, target_size=target_size,
                clip_skip=clip_skip, callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=tensor_inputs, **kwargs,
            )
        options = self.options_from(
            subject_word, guidance_mode=guidance_mode, image_guidance_scale=image_guidance_scale, gamma_scope=gamma_scope,
            gamma_num=gamma_num, use_scoring=use_scoring, mask_mode=mask_mode, mask_reused_step=mask_reused_step,
            mask_pass=mask_pass, mask_layers=mask_layers, mask_heads=mask_heads,
        )
        prompts = _prompt_list(prompt)
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        self.check_inputs(prompt, prompt_2, height, width, None, negative_prompt, negative_prompt_2,
                          callback_on_step_end_tensor_inputs=tensor_inputs)
        self._guidance_scale, self._guidance_rescale, self._clip_skip = guidance_scale, guidance_rescale, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False
        self._denoising_end, self._denoising_start = None, None
        device = self._execution_device
        positive, negative, pooled, negative_pooled = self.encode_prompt(
            prompt=prompts, prompt_2=prompt_2, device=device, num_images_per_prompt=num_images_per_prompt,
            do_classifier_free_guidance=True, negative_prompt=negative_prompt, negative_prompt_2=negative_prompt_2,
            clip_skip=clip_skip,
        )
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)
        self._num_timesteps = len(timesteps)
        batch = len(prompts) * num_images_per_prompt
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width, positive.dtype, device,
                                       generator, latents)
        projection = (int(pooled.shape[-1]) if self.text_encoder_2 is None else self.text_encoder_2.config.projection_dim)
        time_ids = self._get_add_time_ids(original_size or (height, width), crops_coords_top_left,
                                          target_size or (height, width), dtype=positive.dtype,
                                          text_encoder_projection_dim=projection).to(device).repeat(batch, 1)
        text = _Branch(positive, {"text_embeds": pooled.to(device), "time_ids": time_ids})
        uncond = _Branch(negative, {"text_embeds": negative_pooled.to(device), "time_ids": time_ids})
        latents, masks = self._realcustom_sample(
            options=options, prompts=prompts, text=text, uncond=uncond, subject_image=subject_image, latents=latents,
            timesteps=timesteps, num_images_per_prompt=num_images_per_prompt,
            extra_step_kwargs=self.prepare_extra_step_kwargs(generator, eta), guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale, cross_attention_kwargs=cross_attention_kwargs,
            callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=tensor_inputs,
            callback_tensors=lambda t, u: {"prompt_embeds": t.embeds, "negative_prompt_embeds": u.embeds,
                                           "add_text_embeds": t.added["text_embeds"], "add_time_ids": t.added["time_ids"]},
        )
        image = latents if output_type == "latent" else self._decode_xl(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, masks
        return RealCustomXLPipelineOutput(images=image, masks=masks)

    def _decode_xl(self, latents: torch.Tensor, output_type: str):
        """SDXL's decoding (fp16 VAEs upcast, optional latent mean/std), as the diffusers pipeline does."""
        upcast = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        if upcast:
            self.upcast_vae()
        latents = latents.to(next(iter(self.vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(self.vae.config, "latents_mean", None), getattr(self.vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / self.vae.config.scaling_factor + mean
        else:
            latents = latents / self.vae.config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        if upcast:
            self.vae.to(dtype=torch.float16)
        if self.watermark is not None:
            image = self.watermark.apply_watermark(image)
        return self.image_processor.postprocess(image, output_type=output_type)
