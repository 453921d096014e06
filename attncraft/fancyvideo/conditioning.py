"""FancyVideo's conditioning on a diffusers ``UNetMotionModel``: fps and motion-score embeddings, the
9-channel input, the two DDIM schedulers, and the first-frame pass without motion modules.

* **fps / motion score** (:class:`FancyVideoConditioning`, :func:`condition_embeddings`): two
  ``Linear(320, 1280)`` layers (``fps_embedding.linear``, ``motion_embedding.linear``, zero-initialised
  when FancyVideo was built). Each value is projected with the UNet's own sinusoidal ``time_proj``
  (as the timestep is), through its linear layer and a SiLU, and added to the output of
  ``unet.time_embedding``: ``emb + SiLU(L_fps(proj(fps))) + SiLU(L_motion(proj(motion)))``. The value
  is broadcast over the batch (both guidance halves) there, and ``UNetMotionModel`` repeats ``emb``
  over the frames afterwards, exactly as it does the timestep embedding. With zeroed layers the
  addition is exactly zero and the UNet output is bit-identical to the UNet without the hook.
* **input** (:func:`image_condition`, :func:`model_input`): FancyVideo's 9 channels are
  ``[noisy latents (0..3), image latent at frame 0 and zeros elsewhere (4..7), mask 1 at frame 0 and 0
  elsewhere (8)]``, the same condition in both guidance halves. (diffusers' PIA pipeline orders them
  ``[latents, mask, masked image]``; that order is never used here.)
* **schedulers** (:func:`video_scheduler`, :func:`first_frame_scheduler`): DDIM on the reference's
  betas (linear 0.00085..0.012 over 1000 steps, ``steps_offset=1``, no sample clipping, "leading"
  timesteps); the video stage predicts v on betas rescaled to zero terminal SNR
  (``rescale_betas_zero_snr``, the same rescaling as the reference's ``enforce_zero_terminal_snr``, so
  ``alphas_cumprod[-1] == 0``), the first frame predicts epsilon on the plain betas.
* **first frame** (:func:`motion_modules_disabled`): the two-stage text-to-video makes the first frame
  with the same UNet as a one-frame clip with its motion modules skipped (the reference's
  ``compute_motion=False``), no fps/motion embedding and zeros in channels 4..8.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from attncraft.errors import InputError

__all__ = [
    "DEFAULT_FPS",
    "DEFAULT_MOTION_SCORE",
    "FancyVideoConditioning",
    "check_latent_frames",
    "condition_embeddings",
    "first_frame_scheduler",
    "image_condition",
    "model_input",
    "motion_modules_disabled",
    "video_scheduler",
]

DEFAULT_FPS = 25.0
DEFAULT_MOTION_SCORE = 3.0
MAX_FPS = 240.0
MAX_MOTION_SCORE = 100.0

SCHEDULER_BASE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                      steps_offset=1, clip_sample=False, set_alpha_to_one=True, timestep_spacing="leading")
"""The DDIM settings of the released inference code (both stages)."""


class CondEmbedding(nn.Module):
    """``SiLU(Linear(x))`` (the parameter names of the released checkpoint: ``linear.weight/bias``)."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_channels, embed_dim)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class FancyVideoConditioning(ModelMixin, ConfigMixin):
    """The fps and motion-score embeddings of FancyVideo (``fps_embedding``, ``motion_embedding``).

    ``in_channels`` is the UNet's ``time_proj`` width (320 for SD 1.5), ``embed_dim`` its time
    embedding width (1280). ``embedding(unet, fps, motion_score, batch)`` returns what is added to
    the time embedding; :func:`condition_embeddings` adds it during a UNet call.
    """

    @register_to_config
    def __init__(self, in_channels: int = 320, embed_dim: int = 1280, default_fps: float = DEFAULT_FPS,
                 default_motion_score: float = DEFAULT_MOTION_SCORE):
        super().__init__()
        self.fps_embedding = CondEmbedding(in_channels, embed_dim)
        self.motion_embedding = CondEmbedding(in_channels, embed_dim)

    def zero_(self) -> FancyVideoConditioning:
        """Zero both layers (FancyVideo's initialisation: the embeddings then add exactly nothing)."""
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
        return self

    def forward(self, fps_proj: torch.Tensor | None = None, motion_proj: torch.Tensor | None = None
                ) -> torch.Tensor | None:
        """``SiLU(L_fps(fps_proj)) + SiLU(L_motion(motion_proj))`` of sinusoidal projections
        ``(B, in_channels)``; a projection that is None adds nothing (None when both are)."""
        parts = [layer(x.to(self.dtype)) for x, layer in ((fps_proj, self.fps_embedding),
                                                           (motion_proj, self.motion_embedding)) if x is not None]
        return None if not parts else parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def embedding(self, time_proj: nn.Module, fps: float | None, motion_score: float | None, batch: int,
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """What is added to a ``(batch, embed_dim)`` time embedding: each value broadcast to ``batch``
        rows, projected by ``time_proj`` (the UNet's), through its layer and SiLU; summed."""
        def project(value):
            return None if value is None else time_proj(torch.full((batch,), float(value), device=device))

        out = self(project(fps), project(motion_score))
        return None if out is None else out.to(device=device, dtype=dtype)


@contextlib.contextmanager
def condition_embeddings(unet, conditioning: FancyVideoConditioning | None, fps: float | None,
                         motion_score: float | None) -> Iterator[None]:
    """Add the fps / motion-score embeddings to ``unet.time_embedding``'s output for the calls made
    inside the block (nothing when ``conditioning`` is None or both values are None)."""
    if conditioning is None or (fps is None and motion_score is None):
        yield
        return
    if conditioning.config.in_channels != unet.time_proj.num_channels:
        raise InputError(
            f"the fps/motion embeddings take {conditioning.config.in_channels} channels but this UNet's time "
            f"projection has {unet.time_proj.num_channels}",
            "use the embeddings converted for this base model (SD 1.5: 320)",
        )

    def add(module, args, output):
        extra = conditioning.embedding(unet.time_proj, fps, motion_score, output.shape[0], output.dtype, output.device)
        return output if extra is None else output + extra

    handle = unet.time_embedding.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def image_condition(image_latents: torch.Tensor | None, num_latent_frames: int, shape: tuple[int, ...] | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image_tensor, mask)`` of FancyVideo's input: ``(B, 4, F, h, w)`` holding the (scaled) image
    latent at frame 0 and zeros elsewhere, ``(B, 1, F, h, w)`` with 1 at frame 0 and 0 elsewhere.

    ``image_latents`` is ``(B, 4, h, w)`` or ``(B, 4, 1, h, w)``; None (the first-frame pass) gives
    zeros in both, of ``shape`` ``(B, 4, h, w)``."""
    if image_latents is None:
        b, c, h, w = shape
        zeros = torch.zeros(b, c, num_latent_frames, h, w)
        return zeros, torch.zeros(b, 1, num_latent_frames, h, w)
    if image_latents.dim() == 5:
        image_latents = image_latents[:, :, 0]
    b, c, h, w = image_latents.shape
    image = image_latents.new_zeros(b, c, num_latent_frames, h, w)
    image[:, :, 0] = image_latents
    mask = image_latents.new_zeros(b, 1, num_latent_frames, h, w)
    mask[:, :, 0] = 1
    return image, mask


def model_input(latents: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 9-channel UNet input ``[latents, image, mask]`` (FancyVideo's order, not PIA's), with the
    condition repeated to the batch of ``latents`` (e.g. both guidance halves)."""
    repeat = latents.shape[0] // image.shape[0]
    if repeat * image.shape[0] != latents.shape[0]:
        raise ValueError(f"{latents.shape[0]} latent rows cannot take conditions of {image.shape[0]} videos")
    cond = torch.cat([image, mask], dim=1).to(device=latents.device, dtype=latents.dtype)
    return torch.cat([latents, cond.repeat(repeat, 1, 1, 1, 1)], dim=1)


def video_scheduler(**overrides: Any) -> DDIMScheduler:
    """The video stage's DDIM: v-prediction on zero-terminal-SNR betas."""
    return DDIMScheduler(**(SCHEDULER_BASE | dict(prediction_type="v_prediction", rescale_betas_zero_snr=True) | overrides))


def first_frame_scheduler(video: Any = None, **overrides: Any) -> DDIMScheduler:
    """The first frame's DDIM: epsilon prediction on the plain betas (from a video scheduler's
    config when given: the same betas before the zero-SNR rescaling)."""
    base = dict(video.config) if video is not None else dict(SCHEDULER_BASE)
    base.update(prediction_type="epsilon", rescale_betas_zero_snr=False)
    return DDIMScheduler.from_config(base | overrides)


@contextlib.contextmanager
def motion_modules_disabled(unet) -> Iterator[None]:
    """Skip every motion module of ``unet`` for the calls inside the block (each returns its input)."""
    modules = [m for block in (*unet.down_blocks, unet.mid_block, *unet.up_blocks)
               for m in getattr(block, "motion_modules", None) or ()]

    def skip(hidden_states, *args, **kwargs):
        return hidden_states

    saved = [module.__dict__.get("forward") for module in modules]  # e.g. an accelerate hook's wrapper
    for module in modules:
        module.forward = skip
    try:
        yield
    finally:
        for module, forward in zip(modules, saved):
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def check_latent_frames(unet, num_latent_frames: int, frames_per_latent: int = 4) -> None:
    """One line if ``num_latent_frames`` exceed the motion modules' frame positions (32 for FancyVideo:
    125 video frames with CV-VAE)."""
    limit = getattr(unet, "config", {}).get("motion_max_seq_length")
    if limit and num_latent_frames > limit:
        most = 1 + frames_per_latent * (limit - 1)
        raise InputError(
            f"{num_latent_frames} latent frames exceed the motion modules' limit of {limit} latent frames "
            f"({most} video frames) in one pass",
            f"generate at most {most} frames, and extend longer videos from their last frame",
        )
