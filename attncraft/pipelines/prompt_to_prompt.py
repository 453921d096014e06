"""Prompt-to-Prompt on generated images: :class:`PromptToPromptPipeline` (a ``StableDiffusionPipeline``)
and :class:`PromptToPromptXLPipeline` (a ``StableDiffusionXLPipeline``).

``pipe(["a red circle on the left", "a blue circle on the left"], mode="replace")`` generates the
source and every edit from the same initial noise, with the controllers of
:mod:`attncraft.attention_processors.prompt_to_prompt` on the UNet; the denoising loop is
diffusers' own, so schedulers, ``output_type``, ``return_dict``, ``callback_on_step_end``,
``negative_prompt`` and every other argument of the parent pipeline work as there (an unknown
argument is an error, never ignored). The controllers are also usable on any pipeline directly::

    controllers = make_controllers(pipe, [tokenize_prompt(tok, src), tokenize_prompt(tok, edit)])
    with apply_techniques(pipe, *controllers.techniques):
        pipe([src, edit], latents=same_noise, num_inference_steps=T,
             callback_on_step_end=controllers.local_blend.callback if controllers.local_blend else None)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from attncraft.attention_processors import AttentionStore, get_manager
from attncraft.attention_processors.prompt_to_prompt import make_controllers, tokenize_prompt
from attncraft.errors import InputError
from attncraft.loading import pipeline_as
from attncraft.pipelines.latents import UserLatentsMixin
from attncraft.validation import check_text


class PromptToPromptMixin:
    """The Prompt-to-Prompt ``__call__`` shared by the SD and SDXL classes."""

    def __call__(
        self,
        prompt: Sequence[str],
        *,
        mode: str = "replace",
        cross_replace: float | Sequence[float] = 0.8,
        self_replace: float | Sequence[float] = 0.4,
        word_windows: Mapping[str, float | Sequence[float]] | None = None,
        reweight: Mapping[str, float] | None = None,
        local_blend: Sequence[str] | str | None = None,
        local_blend_threshold: float = 0.3,
        num_inference_steps: int = 50,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        attention_store: AttentionStore | None = None,
        **kwargs,
    ):
        """Generate ``prompt[0]`` and its edits ``prompt[1:]`` from one initial noise.

        Windows are fractions of the steps (``cross_replace=0.8``, ``self_replace=0.4``);
        ``reweight`` maps words of the edit prompts to scales; ``local_blend`` names the words whose
        region may change. Other keyword arguments go to the diffusers pipeline unchanged.
        """
        if isinstance(prompt, str) or len(prompt) < 2:
            raise InputError("Prompt-to-Prompt needs a source prompt and at least one edit prompt",
                             "pass [source, edit, ...]")
        self._check_arguments(kwargs)
        if kwargs.get("num_images_per_prompt", 1) != 1:
            raise InputError("Prompt-to-Prompt generates one image per prompt", "call it once per seed")
        prompts = [check_text("prompt", p) for p in prompt]
        tokenizer = self.tokenizer if self.tokenizer is not None else self.tokenizer_2
        group = [tokenize_prompt(tokenizer, p) for p in prompts]
        if isinstance(local_blend, str):
            local_blend = [w.strip() for w in local_blend.split(",") if w.strip()]
        controllers = make_controllers(
            self, group, mode=mode, cross_replace=cross_replace, self_replace=self_replace, word_windows=word_windows,
            reweight=reweight, local_blend=local_blend, local_blend_threshold=local_blend_threshold,
            num_inference_steps=num_inference_steps,
        )
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if latents is None:
            shape = (1, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
            noise = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
            latents = noise.expand(len(prompts), *shape[1:]).clone()
        elif latents.shape[0] == 1:
            latents = latents.expand(len(prompts), *latents.shape[1:]).clone()
        blend = controllers.local_blend
        inputs = list(callback_on_step_end_tensor_inputs)
        if blend is not None and "latents" not in inputs:
            inputs.append("latents")

        def on_step_end(pipe, step, timestep, callback_kwargs):
            if blend is not None:
                callback_kwargs = blend.callback(pipe, step, timestep, callback_kwargs)
            if callback_on_step_end is not None:
                callback_kwargs = callback_on_step_end(pipe, step, timestep, callback_kwargs)
            return callback_kwargs

        techniques = controllers.techniques + ([attention_store] if attention_store is not None else [])
        manager = get_manager(self)
        with manager.applied(*techniques):
            manager.start_run(num_inference_steps)
            return super().__call__(
                prompt=prompts, num_inference_steps=num_inference_steps, latents=latents, height=height, width=width,
                callback_on_step_end=on_step_end if (blend is not None or callback_on_step_end is not None) else None,
                callback_on_step_end_tensor_inputs=inputs, **kwargs,
            )


    def _check_arguments(self, kwargs: dict) -> None:
        """diffusers' ``__call__`` swallows unknown keywords; here every one is an error."""
        parent = next(c for c in type(self).__mro__ if c.__module__.startswith("diffusers.") and "__call__" in vars(c))
        allowed = {n for n, p in inspect.signature(parent.__call__).parameters.items() if p.kind is not p.VAR_KEYWORD}
        unknown = sorted(set(kwargs) - allowed - {"self", "prompt"})
        if unknown:
            raise InputError(f"unknown argument {unknown[0]!r} of the Prompt-to-Prompt pipeline",
                             "windows are cross_replace and self_replace, fractions of the steps; see the docstring")


class PromptToPromptPipeline(PromptToPromptMixin, UserLatentsMixin, StableDiffusionPipeline):
    """Prompt-to-Prompt on SD 1.x / 2.x (and Shapes SD)."""


class PromptToPromptXLPipeline(PromptToPromptMixin, UserLatentsMixin, StableDiffusionXLPipeline):
    """Prompt-to-Prompt on SDXL."""


def prompt_to_prompt_pipeline(pipe):
    """The Prompt-to-Prompt pipeline of ``pipe``'s model type, sharing its components (``from_pipe``)."""
    if isinstance(pipe, PromptToPromptMixin):
        return pipe
    cls = PromptToPromptXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else PromptToPromptPipeline
    return pipeline_as(cls, pipe)
