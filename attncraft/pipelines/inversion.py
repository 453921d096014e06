"""DDIM inversion and null-text inversion (Mokady et al. 2022) for SD 1.x/2.x, SDXL and Shapes SD,
and the saved inversion that one image's many edits reuse.

* :class:`DDIMSchedule` - the DDIM timesteps and noise levels of the model's own noise schedule
  (spacing, offset and prediction type carried over from its scheduler's configuration); one
  :func:`ddim_step` serves sampling and inversion, for epsilon, v (SD 2.x, Shapes SD) and sample
  prediction, without clipping.
* :class:`ModelAdapter` - what the loops need from a pipeline: image <-> latent, prompt
  encoding (with dynamic tokens spliced in), the null embedding, one UNet call (SDXL's pooled
  text embedding and size ids included), classifier-free guidance.
* :func:`ddim_inversion` - z*_0 -> z*_T with the source prompt at guidance 1.
* :func:`null_text_inversion` - per-step null embeddings so that CFG sampling from z*_T retraces
  the inversion. Batched: B scenes optimise together, each with its own embedding and loss (Adam
  is element-wise, scenes never mix), early stop per scene.
* :class:`Inversion` - trajectory, null embeddings, dynamic tokens and settings; ``save`` writes
  one ``.safetensors`` and one ``.json``; ``load`` reads them; ``check`` refuses one made with
  another model or from another image.

Conventions and deviations: the VAE latent is the posterior *mean* by default (deterministic;
``sample_seed`` samples the posterior as DPL does); the image keeps its size when the model takes
it, otherwise it is resized to the nearest size the model takes; the model is evaluated at the
*target* timestep of each inversion step (as the original NTI and diffusers' DDIMInverseScheduler);
guidance is a parameter, never hard-coded; results are never cached behind the caller's back.
For SDXL only the null *sequence* embedding is optimised (its pooled part stays that of the empty
prompt); LoRA scales and ``clip_skip`` are not applied by this encoder.

Cost of the optimisation passes (see :class:`ModelAdapter`'s ``attention`` and :func:`tf32_scope`):
the passes take torch's fused SDPA kernel by default; ``attention="auto"`` takes the explicit product
(torch's ``math`` kernel) for float32 backward passes on CUDA, where the fused call is the
memory-efficient kernel with a slower float32 backward. On an H200 at SD 1.5 size the fused default
measured faster (the iterations are launch-bound, and the explicit product adds launches); TF32 is
opt-in (DPL's ``precision="tf32"``) and scoped to the optimisation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from torch.nn.attention import SDPBackend, sdpa_kernel

from attncraft import __version__
from attncraft.attention_processors.dpl import StopForward, TokenSplice, stop_after
from attncraft.attention_processors.layers import discover_layers
from attncraft.attention_processors.prompt_to_prompt import PromptTokens
from attncraft.errors import InputError
from attncraft.validation import check_finite, check_int_range

# --------------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------------


@dataclass
class DDIMSchedule:
    """DDIM timesteps ``t_0 > ... > t_{T-1}`` and the noise levels each sampling step goes between:
    step ``i`` takes a latent at ``alpha_from[i] = abar(t_i)`` to ``alpha_to[i]`` (``abar(t_i - 1000/T)``
    or the final level), exactly as diffusers' ``DDIMScheduler.step``; inversion walks the other way."""

    timesteps: torch.Tensor
    alpha_from: list[float]
    alpha_to: list[float]
    prediction_type: str
    config: dict[str, Any]

    @property
    def num_steps(self) -> int:
        return len(self.alpha_from)

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int, device: torch.device | str = "cpu") -> DDIMSchedule:
        from diffusers import DDIMScheduler

        check_int_range("the number of steps", num_inference_steps, 1, 1000, example=50)
        config = dict(scheduler.config)
        ddim = DDIMScheduler.from_config(config, clip_sample=False, thresholding=False)
        ddim.set_timesteps(num_inference_steps, device=device)
        alphas = ddim.alphas_cumprod.double()
        ratio = ddim.config.num_train_timesteps // num_inference_steps
        final = float(ddim.final_alpha_cumprod)
        steps = [int(t) for t in ddim.timesteps]
        alpha_from = [float(alphas[t]) for t in steps]
        alpha_to = [float(alphas[t - ratio]) if t - ratio >= 0 else final for t in steps]
        kept = {k: config.get(k) for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                           "prediction_type", "timestep_spacing", "steps_offset",
                                           "rescale_betas_zero_snr")}
        kept["set_alpha_to_one"] = bool(ddim.config.set_alpha_to_one)
        return cls(ddim.timesteps, alpha_from, alpha_to, ddim.config.prediction_type, kept)


def _x0_eps(sample: torch.Tensor, output: torch.Tensor, alpha: float, prediction_type: str):
    beta = 1.0 - alpha
    if prediction_type == "epsilon":
        return (sample - beta ** 0.5 * output) / alpha ** 0.5, output
    if prediction_type == "v_prediction":
        return alpha ** 0.5 * sample - beta ** 0.5 * output, alpha ** 0.5 * output + beta ** 0.5 * sample
    if prediction_type == "sample":
        return output, (sample - alpha ** 0.5 * output) / beta ** 0.5
    raise InputError(f"unknown prediction type {prediction_type!r}", "use an epsilon, v_prediction or sample model")


def ddim_step(sample: torch.Tensor, output: torch.Tensor, alpha: float, alpha_next: float, prediction_type: str) -> torch.Tensor:
    """Deterministic DDIM move of ``sample`` (at level ``alpha``) to level ``alpha_next``, given the
    model ``output`` at this step (the formula of diffusers' DDIMScheduler with eta 0, no clipping)."""
    x0, eps = _x0_eps(sample, output, alpha, prediction_type)
    return alpha_next ** 0.5 * x0 + (1.0 - alpha_next) ** 0.5 * eps


# --------------------------------------------------------------------------------------------------
# What the loops need from a pipeline
# --------------------------------------------------------------------------------------------------


@dataclass
class TextConditioning:
    """Text conditioning of a batch: sequence embeddings, and SDXL's pooled embedding and size ids."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def with_embeds(self, embeds: torch.Tensor) -> TextConditioning:
        return TextConditioning(embeds, self.pooled, self.time_ids)

    def cat(self, other: TextConditioning) -> TextConditioning:
        def join(a, b):
            return None if a is None else torch.cat([a, b])

        return TextConditioning(torch.cat([self.embeds, other.embeds]), join(self.pooled, other.pooled),
                                join(self.time_ids, other.time_ids))

    def select(self, index) -> TextConditioning:
        def pick(x):
            return None if x is None else x[index]

        return TextConditioning(self.embeds[index], pick(self.pooled), pick(self.time_ids))

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.embeds}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def _is_xl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None or hasattr(pipe, "tokenizer_2")


def valid_size(pipe, height: int, width: int) -> bool:
    multiple = size_multiple(pipe)
    return height % multiple == 0 and width % multiple == 0 and height >= multiple and width >= multiple


def size_multiple(pipe) -> int:
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


ATTENTION_CHOICES = ("auto", "explicit", "fused")

EXPLICIT_ATTENTION_BUDGET = 4 * 2**30
"""Bytes of attention maps (float32, every attention layer of one UNet call) up to which ``auto``
takes the explicit product; the backward keeps one map per layer. Stable Diffusion 1.5 at 512x512,
batch 1: 2.7 GiB; larger images or batches fall back to the fused kernel."""


def attention_map_bytes(unet, batch: int, latent_hw: tuple[int, int], text_tokens: int) -> int:
    """Bytes of the float32 attention maps of one UNet call: sum over its self- and cross-attention
    layers of ``batch * heads * queries * keys * 4`` (queries from the layer's level)."""
    total = 0
    for layer in discover_layers(unet).values():
        hw = layer.resolution(tuple(latent_hw))
        if hw is None or layer.kind not in ("self", "cross"):
            continue
        queries = hw[0] * hw[1]
        keys = text_tokens if layer.kind == "cross" else queries
        total += batch * layer.heads * queries * keys * 4
    return total


def check_attention_choice(choice: str, what: str = "attention choice") -> str:
    """``choice`` if it is one of :data:`ATTENTION_CHOICES`, else a one-line :class:`InputError`."""
    if choice not in ATTENTION_CHOICES:
        raise InputError(f"unknown {what} {choice!r}", f"pass one of {', '.join(ATTENTION_CHOICES)}")
    return choice


def explicit_attention_wanted(choice: str, device: torch.device, dtype: torch.dtype, autocast: torch.dtype | None,
                              map_bytes: int, grad: bool) -> bool:
    """Whether a UNet call of the optimisation takes the explicit attention product.

    Only calls that backpropagate (``grad``) are concerned: ``explicit``: always; ``fused``: never;
    ``auto``: in float32 (no autocast) on CUDA when the call's maps fit
    :data:`EXPLICIT_ATTENTION_BUDGET`.
    The idea: float32 has no flash kernel, so the fused call is the memory-efficient kernel, whose
    backward kernels are slower than the explicit product's; under bf16/fp16 autocast the flash
    kernel is faster, and on the CPU torch's fused kernel is. Forward-only calls keep the fused
    kernel (no backward to pay). The two give the same attention up to float32 rounding. Measured on
    an H200 at SD 1.5 size, quiet: ``auto`` was slower than ``fused`` (null-text 105 against 88 ms),
    because those iterations are launch-bound and the explicit product adds launches; so ``fused``
    is DPL's default and ``auto`` an option for GPUs and sizes where the kernels dominate.
    """
    check_attention_choice(choice)
    if not grad or choice == "fused":
        return False
    if choice == "explicit":
        return True
    return device.type == "cuda" and dtype == torch.float32 and autocast is None and map_bytes <= EXPLICIT_ATTENTION_BUDGET


@contextlib.contextmanager
def tf32_scope(device: torch.device | str, enabled: bool = True):
    """TF32 tensor-core matmuls and convolutions for the block on a CUDA ``device`` (float32
    storage; products rounded to TF32's 10-bit mantissa), the previous settings restored afterwards
    (they are process-wide). A no-op elsewhere or when not ``enabled``: TF32 exists on NVIDIA GPUs
    from Ampere on. Wrap the forward *and* the backward: the flags are read when kernels launch."""
    if not enabled or torch.device(device).type != "cuda":
        yield
        return
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes of the optimisation passes (``reduce-overhead`` adds CUDA graphs on CUDA)."""

CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

COMPILE_BACKEND = "inductor"
"""The ``torch.compile`` backend of :class:`CompiledUNet` (the modes are inductor's)."""


def check_compile_mode(mode: str | None, what: str = "compile mode") -> str | None:
    """``mode`` if it is None or one of :data:`COMPILE_MODES`, else a one-line :class:`InputError`."""
    if mode is not None and mode not in COMPILE_MODES:
        raise InputError(f"unknown {what} {mode!r}", f"pass one of {', '.join(COMPILE_MODES)}, or nothing to run eagerly")
    return mode


@contextlib.contextmanager
def _forward_replaced(module: torch.nn.Module, forward: Callable):
    """``module.forward`` is ``forward`` for the block (its hooks still run around it, eagerly)."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        yield
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


class CompiledUNet:
    """The UNet's ``forward`` under ``torch.compile``, for the optimisation passes' calls.

    The UNet is still called as a module, so its hooks (the step tracker, the manager's) run eagerly
    around the compiled forward and never split its graph; techniques' hooks inside the forward
    (attention processors, observers) are traced into it. Two graphs:

    * :meth:`__call__` - the UNet output (null-text inversion's inner iterations);
    * :meth:`maps` - the UNet run for its side effects only (what its observers record, e.g. DPL's
      loss maps) and its output dropped: the compiler removes every operation that feeds nothing
      recorded, so the graph ends with the last observed layer. This is the compiled form of
      :func:`~attncraft.attention_processors.dpl.stop_after`, whose exception would split the graph.

    ``dynamic=False``: the passes keep one shape per run. Each new run's hooks and techniques are new
    objects, so the first call of a run compiles (a recompilation, not a graph break).
    """

    def __init__(self, unet: torch.nn.Module, mode: str):
        self.unet, self.mode = unet, check_compile_mode(mode)
        self._forward = unet.forward
        self._full = torch.compile(self._run_full, backend=COMPILE_BACKEND, dynamic=False,
                                   **({"mode": mode} if COMPILE_BACKEND == "inductor" else {}))
        self._partial = torch.compile(self._run_partial, backend=COMPILE_BACKEND, dynamic=False,
                                      **({"mode": mode} if COMPILE_BACKEND == "inductor" else {}))

    def _run_full(self, *args, **kwargs):
        return self._forward(*args, **kwargs)

    def _run_partial(self, *args, **kwargs):
        self._forward(*args, **kwargs)
        return ()  # not None: a post-forward hook reads None as "the forward raised"

    def _call(self, forward, args, kwargs):
        if self.mode in CUDA_GRAPH_MODES and self.unet.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new iteration: its inputs are new
        with _forward_replaced(self.unet, forward):
            return self.unet(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._call(self._full, args, kwargs)

    def maps(self, *args, **kwargs) -> None:
        self._call(self._partial, args, kwargs)


class ModelAdapter:
    """The pieces of an SD / SDXL pipeline the inversion, DPL and editing loops use.

    ``autocast_dtype``: autocast for the UNet calls (the optimisation's mixed precision).
    ``attention``: the attention kernel of UNet calls that record gradients, ``fused`` (torch's
    SDPA choice, as diffusers), ``explicit`` (the materialised product) or ``auto``
    (:func:`explicit_attention_wanted`). Calls without gradients always take the fused kernel.
    ``compile``: a :data:`COMPILE_MODES` mode runs the UNet calls that record gradients through
    :class:`CompiledUNet` (calls without gradients stay eager: they are few, and a second graph
    would cost a second compilation); on CUDA the passes' optimisers then take the fused kernel
    (:attr:`optimizer_options`).
    """

    def __init__(self, pipe, autocast_dtype: torch.dtype | None = None, attention: str = "fused",
                 compile: str | None = None):
        check_attention_choice(attention)
        if check_compile_mode(compile) is not None and COMPILE_BACKEND == "inductor" and pipe._execution_device.type == "cpu":
            raise InputError("DPL's compile option is refused on the CPU: torch's inductor returns wrong gradients there "
                             "for UNet calls where only the text embeddings require grad (also on a plain diffusers UNet)",
                             "leave compile off on the CPU, or run on CUDA")
        self.compiled = CompiledUNet(pipe.unet, compile) if check_compile_mode(compile) is not None else None
        self.attention = attention
        self._map_bytes: dict[tuple, int] = {}
        self._indices: dict[tuple, torch.Tensor] = {}
        self.pipe = pipe
        self.unet = pipe.unet
        self.xl = _is_xl(pipe)
        self.device = pipe._execution_device
        self.dtype = pipe.unet.dtype
        self.autocast_dtype = autocast_dtype
        encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)] if self.xl else [pipe.text_encoder]
        self.encoders = [e for e in encoders if e is not None]
        self.splice = TokenSplice([e.get_input_embeddings() for e in self.encoders])
        self.tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2

    # -- images ----------------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor, sample_seed: int | None = None) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> scaled latents (posterior mean, or a sample)."""
        vae = self.pipe.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
            if sample_seed is None:
                z = dist.mode()
            else:
                gen = torch.Generator(device="cpu").manual_seed(int(sample_seed))
                noise = torch.randn(dist.mean.shape, generator=gen, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
                z = dist.mean + dist.std * noise
        cfg = vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        if mean is not None and std is not None:
            mean_t = torch.tensor(mean).view(1, -1, 1, 1).to(z)
            std_t = torch.tensor(std).view(1, -1, 1, 1).to(z)
            return ((z - mean_t) * cfg.scaling_factor / std_t).float()
        return (z * cfg.scaling_factor).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels (B, 3, H, W) in [-1, 1]."""
        vae = self.pipe.vae
        cfg = vae.config
        mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
        z = latents.to(self.device, vae.dtype)
        if mean is not None and std is not None:
            z = z * torch.tensor(std).view(1, -1, 1, 1).to(z) / cfg.scaling_factor + torch.tensor(mean).view(1, -1, 1, 1).to(z)
        else:
            z = z / cfg.scaling_factor
        with torch.no_grad():
            return vae.decode(z, return_dict=False)[0].float()

    # -- text ------------------------------------------------------------------------------------
    def encode(
        self,
        prompts: Sequence[PromptTokens],
        vectors: Sequence[torch.Tensor] | None = None,
        owners: Sequence[int] | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> TextConditioning:
        """Encode ``prompts`` (their :attr:`~PromptTokens.encoder_text`), with each placeholder's
        vector spliced in: ``vectors[e]`` is (scenes, K, D_e) for encoder ``e`` and ``owners[r]`` the
        scene of prompt ``r``. Gradients flow to ``vectors``."""
        texts = [p.encoder_text for p in prompts]
        rows, positions, picks = [], [], []
        if vectors is not None:
            owners = list(owners) if owners is not None else list(range(len(prompts)))
            for r, prompt in enumerate(prompts):
                for k, pos in prompt.placeholder_positions().items():
                    rows.append(r)
                    positions.append(pos)
                    picks.append((owners[r], k))
        context = None
        if picks:
            scene = tuple(s for s, _ in picks)
            slot = tuple(k for _, k in picks)
            chosen = [v[self._index(scene, v.device), self._index(slot, v.device)] for v in vectors]
            context = self.splice.active(self._index(tuple(rows), self.device), self._index(tuple(positions), self.device),
                                         chosen, max_row=max(rows))
        with context if context is not None else contextlib.nullcontext():
            if self.xl:
                embeds, _, pooled, _ = self.pipe.encode_prompt(
                    prompt=texts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
                return TextConditioning(embeds.float(), pooled.float(), self._time_ids(len(texts), image_size))
            embeds = self.pipe.encode_prompt(texts, self.device, 1, False)[0]
        return TextConditioning(embeds.float())

    def _index(self, values: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``values`` as a long tensor on ``device``, made once: a host-to-device copy waits for the
        GPU, and the loops encode the same prompts at every iteration."""
        key = (values, str(device))
        index = self._indices.get(key)
        if index is None:
            index = self._indices[key] = torch.tensor(values, dtype=torch.long).to(device)
        return index

    def null(self, batch: int, image_size: tuple[int, int] | None = None) -> TextConditioning:
        """The empty prompt's conditioning, ``batch`` rows (SDXL: zeros when its config says so)."""
        with torch.no_grad():
            if self.xl:
                if getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
                    one = self.encode_plain([""], image_size)
                    cond = TextConditioning(torch.zeros_like(one.embeds), torch.zeros_like(one.pooled), one.time_ids)
                else:
                    cond = self.encode_plain([""], image_size)
            else:
                cond = self.encode_plain([""], image_size)
        return cond.select(torch.zeros(batch, dtype=torch.long))

    def encode_plain(self, texts: Sequence[str], image_size: tuple[int, int] | None = None) -> TextConditioning:
        if self.xl:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=list(texts), device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False)
            return TextConditioning(embeds.float(), pooled.float(), self._time_ids(len(texts), image_size))
        return TextConditioning(self.pipe.encode_prompt(list(texts), self.device, 1, False)[0].float())

    def _time_ids(self, batch: int, image_size: tuple[int, int] | None) -> torch.Tensor:
        size = tuple(image_size) if image_size is not None else (self.pipe.default_sample_size * self.pipe.vae_scale_factor,) * 2
        enc2 = getattr(self.pipe, "text_encoder_2", None)
        proj = enc2.config.projection_dim if enc2 is not None else None
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=torch.float32, text_encoder_projection_dim=proj)
        return ids.to(self.device).repeat(batch, 1)

    # -- the UNet ----------------------------------------------------------------------------------
    def _cast(self, cond: TextConditioning) -> dict[str, Any]:
        kwargs = cond.unet_kwargs()
        kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(self.dtype)
        if "added_cond_kwargs" in kwargs:
            kwargs["added_cond_kwargs"] = {k: v.to(self.dtype) for k, v in kwargs["added_cond_kwargs"].items()}
        return kwargs

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, cond: TextConditioning) -> torch.Tensor:
        """One UNet call; the output in float32."""
        unet = self.compiled if self.compiled is not None and torch.is_grad_enabled() else self.unet
        with self._scope(latents, cond):
            out = unet(latents.to(self.dtype), timestep, return_dict=False, **self._cast(cond))[0]
        return out.float()

    def observe(self, latents: torch.Tensor, timestep: torch.Tensor, cond: TextConditioning,
                stop_after_layers: Sequence[str]) -> None:
        """One UNet call for what its observers record (DPL's loss maps), its output unused: the
        forward ends once ``stop_after_layers`` have run (eagerly through
        :func:`~attncraft.attention_processors.dpl.stop_after`; compiled, :meth:`CompiledUNet.maps`
        leaves out what comes after them)."""
        kwargs = dict(return_dict=False, **self._cast(cond))
        with self._scope(latents, cond):
            if self.compiled is not None and torch.is_grad_enabled():
                self.compiled.maps(latents.to(self.dtype), timestep, **kwargs)
                return
            try:
                with stop_after(self.unet, stop_after_layers):
                    self.unet(latents.to(self.dtype), timestep, **kwargs)
            except StopForward:
                pass

    @property
    def optimizer_options(self) -> dict[str, Any]:
        """Options of the passes' Adam/AdamW: with ``compile`` on CUDA, torch's fused kernel (one
        launch per step instead of about ten; it rounds differently from the loop by about one
        float32 ulp, like the compiled UNet, so eager runs keep the loop and stay bit-exact)."""
        return {"fused": True} if self.compiled is not None and self.device.type == "cuda" else {}

    @contextlib.contextmanager
    def _scope(self, latents: torch.Tensor, cond: TextConditioning):
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx, self._attention_scope(latents, cond):
            yield

    def explicit_attention(self, latents: torch.Tensor, cond: TextConditioning) -> bool:
        """Whether a call on ``latents`` with ``cond`` (now, with gradients as they are) takes the
        explicit attention product (see the class docstring)."""
        if self.attention == "fused" or not torch.is_grad_enabled():
            return False
        key = (latents.shape[0], *latents.shape[-2:], cond.embeds.shape[1])
        if key not in self._map_bytes:
            self._map_bytes[key] = attention_map_bytes(self.unet, key[0], key[1:3], key[3])
        return explicit_attention_wanted(self.attention, latents.device, self.dtype, self.autocast_dtype,
                                         self._map_bytes[key], torch.is_grad_enabled())

    def _attention_scope(self, latents: torch.Tensor, cond: TextConditioning):
        return sdpa_kernel(SDPBackend.MATH) if self.explicit_attention(latents, cond) else contextlib.nullcontext()

    def guided(self, latents: torch.Tensor, timestep: torch.Tensor, null: TextConditioning, cond: TextConditioning,
               guidance_scale: float) -> torch.Tensor:
        """Classifier-free guided output, with the unconditional and conditional rows in one batch."""
        if guidance_scale == 1.0:
            return self(latents, timestep, cond)
        both = self(torch.cat([latents, latents]), timestep, null.cat(cond))
        uncond, text = both.chunk(2)
        return uncond + guidance_scale * (text - uncond)


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module | None):
    """Parameters of ``modules`` without gradients for the block (restored afterwards): the
    optimisations backpropagate into embeddings only, never into model weights."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(image: Any) -> Image.Image:
    """A path, PIL image, (H, W, 3) uint8 array or (3, H, W) tensor in [0, 1] as an RGB PIL image."""
    if isinstance(image, (str, Path)):
        from attncraft.validation import check_input_file

        path = check_input_file(image, "image")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the image {str(path)!r}: {' '.join(str(exc).split())}",
                             "pass a PNG or JPEG image") from None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        arr = image.detach().float().cpu()
        if arr.ndim == 3 and arr.shape[0] in (1, 3):
            arr = arr.permute(1, 2, 0)
        return Image.fromarray((arr.clamp(0, 1).numpy() * 255).round().astype(np.uint8)).convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


def prepare_image(pipe, image: Any, height: int | None = None, width: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """The image at a size the model takes: its own when valid, ``height``/``width`` when given,
    else rounded to the nearest valid size. Returns (uint8 (H, W, 3), pixels (1, 3, H, W) in [-1, 1])."""
    im = load_image(image)
    multiple = size_multiple(pipe)
    w, h = width or im.size[0], height or im.size[1]
    if not valid_size(pipe, h, w):
        if height is not None and width is not None:
            raise InputError(f"the size {w}x{h} is not usable by this model: each side must be a multiple of {multiple}",
                             f"pass --width/--height as multiples of {multiple}")
        h = height if height is not None and height % multiple == 0 else max(multiple, round(h / multiple) * multiple)
        w = width if width is not None and width % multiple == 0 else max(multiple, round(w / multiple) * multiple)
    if im.size != (w, h):
        im = im.resize((w, h), Image.LANCZOS)
    arr = np.asarray(im, dtype=np.uint8)
    pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    return arr, pixels


def image_fingerprint(pixels_uint8: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(pixels_uint8.shape).encode())
    h.update(np.ascontiguousarray(pixels_uint8).tobytes())
    return h.hexdigest()[:32]


def _config_text(config: Any) -> str:
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    drop = {"transformers_version", "torch_dtype", "dtype", "architectures", "name_or_path", "output_hidden_states",
            "use_return_dict", "return_dict"}
    data = {k: v for k, v in data.items() if not k.startswith("_") and k not in drop}
    return json.dumps(data, sort_keys=True, default=str)


def model_fingerprint(pipe) -> str:
    """A short hash of the model: component configurations and a strided sample of every weight
    tensor (float32 values), so another checkpoint, architecture or fine-tune gives another hash."""
    h = hashlib.sha256()
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        h.update(name.encode())
        h.update(_config_text(module.config).encode())
        with torch.no_grad():
            for pname, param in module.named_parameters():
                flat = param.detach().reshape(-1)
                step = max(1, flat.numel() // 16)
                h.update(pname.encode())
                h.update(flat[::step][:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# DDIM inversion
# --------------------------------------------------------------------------------------------------


def ddim_inversion(
    model: ModelAdapter,
    latents: torch.Tensor,
    cond: TextConditioning,
    schedule: DDIMSchedule,
    on_step: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The DDIM trajectory (T+1, B, C, h, w): index 0 is z*_0 (the image), index T is z*_T."""
    T = schedule.num_steps
    z = latents.float()
    traj = [z]
    with torch.no_grad():
        for k in range(T):
            i = T - 1 - k
            out = model(z, schedule.timesteps[i], cond)
            z = ddim_step(z, out, schedule.alpha_to[i], schedule.alpha_from[i], schedule.prediction_type)
            traj.append(z)
            if on_step is not None:
                on_step(k + 1)
    return torch.stack(traj)


# --------------------------------------------------------------------------------------------------
# Null-text inversion
# --------------------------------------------------------------------------------------------------


@dataclass
class NullTextSettings:
    """Null-text optimisation: the original NTI by default (10 inner steps, early stop at
    ``epsilon + i * 2e-5``); :meth:`faithful` is DPL's setting (51 steps, no early stop)."""

    inner_steps: int = 10
    early_stop: bool = True
    epsilon: float = 1e-5
    lr: float = 1e-2
    """Adam learning rate at step 0; step ``i`` uses ``lr * (1 - i / 100)``."""

    @classmethod
    def faithful(cls) -> NullTextSettings:
        return cls(inner_steps=51, early_stop=False)

    def validate(self) -> NullTextSettings:
        check_int_range("null-text inner steps", self.inner_steps, 0, 10000, example=10)
        check_finite("null-text epsilon", self.epsilon, 0.0, example=1e-5)
        check_finite("null-text learning rate", self.lr, 0.0, low_inclusive=False, example=1e-2)
        return self


@dataclass
class NullTextResult:
    null_embeddings: torch.Tensor
    """(T, B, L, D): the null embedding of every step."""
    losses: torch.Tensor
    """(T, B): the last latent loss of every step and scene."""
    iterations: torch.Tensor
    """(T, B): optimiser steps taken per step and scene."""
    conds: list[TextConditioning] = field(default_factory=list)


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) mask shaped to broadcast over ``like`` (B, ...)."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def null_text_inversion(
    model: ModelAdapter,
    trajectory: torch.Tensor,
    schedule: DDIMSchedule,
    cond_at: Callable[[int, torch.Tensor, torch.Tensor], TextConditioning],
    null_init: TextConditioning,
    guidance_scale: float,
    settings: NullTextSettings,
    on_step: Callable[[int], None] | None = None,
) -> NullTextResult:
    """Optimise one null embedding per step so that guided DDIM sampling from z*_T follows
    ``trajectory`` (from :func:`ddim_inversion`).

    ``cond_at(i, latents, timestep)`` gives the conditional embeddings of step ``i`` (constant for
    NTI; DPL updates its dynamic tokens there, on the current latents). Each step starts from the
    previous step's embedding; a scene that meets the early stop keeps its embedding for that step.
    """
    settings.validate()
    T = schedule.num_steps
    B = trajectory.shape[1]
    z = trajectory[T].clone()
    null = null_init.embeds.detach().float().clone()
    nulls, losses, iters, conds = [], [], [], []
    threshold_of = (lambda i: settings.epsilon + i * 2e-5)
    for i in range(T):
        t = schedule.timesteps[i]
        cond = cond_at(i, z, t)
        conds.append(cond)
        target = trajectory[T - i - 1]
        a, a_next = schedule.alpha_from[i], schedule.alpha_to[i]
        with torch.no_grad():
            out_c = model(z, t, cond)
        param = null.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([param], lr=settings.lr * (1.0 - i / 100.0), **model.optimizer_options)
        active = torch.ones(B, dtype=torch.bool, device=z.device)
        count = torch.zeros(B, dtype=torch.long, device=z.device)
        last = torch.zeros(B, device=z.device)
        for _ in range(settings.inner_steps):
            out_u = model(z, t, null_init.with_embeds(param))
            guided = out_u + guidance_scale * (out_c - out_u)
            prev = ddim_step(z, guided, a, a_next, schedule.prediction_type)
            per = (prev - target).pow(2).flatten(1).mean(1)
            before = param.detach().clone() if settings.early_stop else None
            optimizer.zero_grad(set_to_none=True)
            (per * active).sum().backward()
            optimizer.step()
            with torch.no_grad():
                last = torch.where(active, per.detach(), last)
                count += active.long()
                if settings.early_stop:  # scenes already stopped keep their embedding (no sync but the check)
                    param.copy_(torch.where(_rows(active, param), param, before))
                    active &= per.detach() >= threshold_of(i)
                    if not bool(active.any()):
                        break
        null = param.detach()
        nulls.append(null)
        losses.append(last)
        iters.append(count)
        with torch.no_grad():
            z = ddim_step(z, model.guided(z, t, null_init.with_embeds(null), cond, guidance_scale), a, a_next,
                          schedule.prediction_type)
        if on_step is not None:
            on_step(i + 1)
    return NullTextResult(torch.stack(nulls), torch.stack(losses).cpu(), torch.stack(iters).cpu(), conds)


# --------------------------------------------------------------------------------------------------
# The saved inversion
# --------------------------------------------------------------------------------------------------

INVERSION_FORMAT = "attncraft-inversion/1"


@dataclass
class Inversion:
    """Everything an edit needs from inverting one image (or a batch of B images).

    ``trajectory`` (T+1, B, C, h, w) is the DDIM inversion (index 0 the image's latent);
    ``null_embeddings`` (T, B, L, D) the null embedding per step (the empty prompt's at every step
    for plain DDIM inversion); ``token_vectors`` one (T, B, K, D_e) tensor per text encoder with
    DPL's dynamic tokens, else None; ``settings`` the prompts, nouns, steps, guidance, method,
    scheduler, image size and fingerprints of the model and of each image.
    """

    trajectory: torch.Tensor
    null_embeddings: torch.Tensor
    settings: dict[str, Any]
    token_vectors: list[torch.Tensor] | None = None
    null_pooled: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """Not saved: diagnostics of the run (losses, attention maps, background masks...)."""

    @property
    def num_steps(self) -> int:
        return int(self.null_embeddings.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.trajectory.shape[1])

    @property
    def prompts(self) -> list[str]:
        return list(self.settings["prompts"])

    @property
    def nouns(self) -> list[str]:
        return list(self.settings.get("nouns") or [])

    @property
    def placeholder_names(self) -> list[list[str]]:
        return [list(n) for n in self.settings.get("placeholder_names") or [[] for _ in self.prompts]]

    @property
    def final_latents(self) -> torch.Tensor:
        return self.trajectory[-1]

    def select(self, index: Sequence[int]) -> Inversion:
        """The inversion of some of the scenes (same steps and settings)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        settings = dict(self.settings)
        for key in ("prompts", "image_fingerprints", "placeholder_names"):
            if settings.get(key) is not None:
                settings[key] = [settings[key][int(i)] for i in idx]
        return Inversion(
            trajectory=self.trajectory[:, idx], null_embeddings=self.null_embeddings[:, idx], settings=settings,
            token_vectors=None if self.token_vectors is None else [v[:, idx] for v in self.token_vectors],
            null_pooled=None if self.null_pooled is None else self.null_pooled[idx],
        )

    # -- files -------------------------------------------------------------------------------------
    @staticmethod
    def paths(path: str | Path) -> tuple[Path, Path]:
        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (settings), each atomically;
        returns the ``.safetensors`` path. The JSON is also stored in the safetensors metadata."""
        from safetensors.torch import save_file

        from attncraft.outputs import atomic_path, to_strict_json

        tensors_path, json_path = self.paths(path)
        tensors = {"trajectory": self.trajectory, "null_embeddings": self.null_embeddings}
        for e, vec in enumerate(self.token_vectors or []):
            tensors[f"token_vectors.{e}"] = vec
        if self.null_pooled is not None:
            tensors["null_pooled"] = self.null_pooled
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        settings = dict(self.settings, format=INVERSION_FORMAT, attncraft_version=__version__)
        text = to_strict_json(settings, indent=2, sort_keys=True)
        with atomic_path(tensors_path) as tmp:
            save_file(tensors, str(tmp), metadata={"attncraft": text})
        with atomic_path(json_path) as tmp:
            tmp.write_text(text + "\n")
        return tensors_path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Inversion:
        """Read a saved inversion (``path`` may name the ``.safetensors`` or the ``.json``)."""
        from safetensors import safe_open

        from attncraft.validation import check_input_file

        tensors_path, json_path = cls.paths(path)
        check_input_file(tensors_path, "saved inversion")
        try:
            with safe_open(str(tensors_path), "pt", device="cpu") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged file
            raise InputError(f"the saved inversion {str(tensors_path)!r} is not a readable safetensors file",
                             "invert the image again") from exc
        text = json_path.read_text() if json_path.is_file() else meta.get("attncraft")
        if not text:
            raise InputError(f"the saved inversion {str(tensors_path)!r} has no settings", "invert the image again")
        settings = json.loads(text)
        if settings.get("format") != INVERSION_FORMAT or "trajectory" not in tensors:
            raise InputError(f"{str(tensors_path)!r} is not an attncraft inversion", "pass a file written by attncraft edit")
        vectors = [tensors[f"token_vectors.{e}"].to(device) for e in range(8) if f"token_vectors.{e}" in tensors]
        return cls(
            trajectory=tensors["trajectory"].to(device), null_embeddings=tensors["null_embeddings"].to(device),
            settings=settings, token_vectors=vectors or None,
            null_pooled=tensors["null_pooled"].to(device) if "null_pooled" in tensors else None,
        )

    def check(self, pipe, image_fingerprints: Sequence[str] | None = None, source: str = "the saved inversion") -> None:
        """Refuse an inversion made with another model, or from other images, with one line."""
        made_with = self.settings.get("model_fingerprint")
        if made_with != model_fingerprint(pipe):
            label = self.settings.get("model", "another model")
            raise InputError(f"{source} was made with another model ({label}), not the one loaded",
                             "invert the image again with this model, or load the model it was made with")
        if image_fingerprints is not None and list(image_fingerprints) != list(self.settings.get("image_fingerprints", [])):
            raise InputError(f"{source} was made from another image (or another size of it)",
                             "invert this image again, or pass the image the inversion was made from")


def inversion_settings(**values: Any) -> dict[str, Any]:
    """Settings of an inversion as plain JSON values."""
    out = {}
    for key, value in values.items():
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif hasattr(value, "__dataclass_fields__"):
            value = asdict(value)
        out[key] = value
    return out


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB between images in [0, 1], per image (B, 3, H, W)."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)
