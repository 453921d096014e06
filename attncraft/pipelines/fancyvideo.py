"""The released FancyVideo model: image-to-video, and text-to-video in two stages.

:class:`FancyVideoPipeline` is a diffusers ``AnimateDiffPipeline`` (``from_pretrained``,
``save_pretrained``, ``from_pipe``, ``callback_on_step_end``, ``output_type``, offloading, batches
of prompts with one generator each, attention slicing, fused QKV and FreeU behave as there) that
runs FancyVideo as its inference code does (see ``attncraft.fancyvideo`` for the parts):

* components: ``unet`` an SD 1.5 ``UNetMotionModel`` with the 9-channel ``conv_in`` (built from the
  base UNet and the converted ``motion_adapter``: input channels 0..3 and the bias are the base
  model's, 4..8 FancyVideo's); ``vae`` CV-VAE (:class:`~attncraft.fancyvideo.vae.CVVAEModel`, 4x
  temporal compression); ``conditioning`` the fps / motion-score embeddings; ``scheduler`` the video
  stage's DDIM (v-prediction, zero terminal SNR); ``image_scheduler`` the first frame's DDIM
  (epsilon; derived from ``scheduler`` when None); ``image_vae`` the base model's SD VAE, which
  decodes the first frame of text-to-video (as the reference does; CV-VAE decodes it when None);
* **image-to-video** (``image`` given): the image is resized and centre-cropped to the size, encoded
  by ``vae`` as one frame (a posterior sample, x ``scaling_factor``), and becomes channels 4..7 of
  latent frame 0 with the mask (channel 8) 1 there: ``[latents, image latent, mask]``, the same in
  both guidance halves; the fps / motion-score embeddings are added to the time embedding; the video
  stage runs ``num_inference_steps`` of ``scheduler`` with guidance ``guidance_scale``;
* **text-to-video** (no ``image``): first the same UNet makes the first frame as a one-frame clip with
  its motion modules skipped, zeros in channels 4..8, no fps/motion embedding, ``image_scheduler``
  (``first_frame_steps`` / ``first_frame_guidance_scale``, default: the video stage's); that frame,
  rounded to 8-bit colours as the reference passes it on, is then the image of image-to-video. The
  generators are set back to their state at the start of the call before the image is encoded and
  before the video noise is drawn, as the reference re-seeds its generator for the second stage; so
  ``pipe(prompt)`` equals ``pipe(prompt, image=its first frame)`` exactly, and
  ``output.first_frames`` holds that frame;
* frames: ``num_frames`` counts video frames, ``1 + 4k`` with CV-VAE (default 61: 16 latent frames;
  125 = 32 latent frames is the most one pass takes: the motion modules' 32 frame positions; more is
  a one-line error before any work). With an SD VAE as ``vae`` (a stand-in, e.g. for tests: not the
  released model) latent frames are video frames and the default is 16.

Deviations from the reference, all outside the model: the reference encodes the image with a
posterior sample from torch's global random state, here it is drawn from the call's generators (so
a seed reproduces it); the reference centre-crops without resizing, here the image is first resized
to cover the size (an image of the exact size is treated identically); ``callback_on_step_end`` runs
on the video stage's steps (``first_frame_callback_on_step_end`` on the first frame's), and attncraft
techniques passed as ``techniques`` see two runs, the first frame's and the video's. Not supported:
FreeInit, FreeNoise and IP-Adapter (refused with one line).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.animatediff.pipeline_output import AnimateDiffPipelineOutput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor

from attncraft import __version__
from attncraft.errors import InputError
from attncraft.fancyvideo.conditioning import (
    DEFAULT_FPS,
    DEFAULT_MOTION_SCORE,
    MAX_FPS,
    MAX_MOTION_SCORE,
    FancyVideoConditioning,
    check_latent_frames,
    condition_embeddings,
    first_frame_scheduler,
    image_condition,
    model_input,
    motion_modules_disabled,
)
from attncraft.fancyvideo.vae import CVVAEModel, latent_frame_count, video_frame_count
from attncraft.pipelines.latents import UserLatentsMixin
from attncraft.progress import step_counter

__all__ = ["FancyVideoPipeline", "FancyVideoPipelineOutput", "FancyVideoSettings", "generate_fancyvideo",
           "load_fancyvideo"]

DEFAULT_LATENT_FRAMES = 16
REFERENCE_SIZE = 768


@dataclass
class FancyVideoPipelineOutput(AnimateDiffPipelineOutput):
    """``frames`` as in diffusers; ``first_frames``: the first frames text-to-video generated (in
    ``output_type``; None for image-to-video)."""

    first_frames: Any = None


def _generators(generator) -> list[torch.Generator]:
    if generator is None:
        return []
    return [g for g in (generator if isinstance(generator, (list, tuple)) else [generator]) if isinstance(g, torch.Generator)]


class FancyVideoPipeline(UserLatentsMixin, AnimateDiffPipeline):
    """FancyVideo image-to-video and two-stage text-to-video (see the module doc).

    Build it from a base SD 1.5 pipeline and a converted checkpoint::

        parts = load_fancyvideo_adapter("fancyvideo-converted")      # attncraft convert fancyvideo
        pipe = FancyVideoPipeline(vae=load_cv_vae("CV-VAE"), text_encoder=sd.text_encoder,
                                  tokenizer=sd.tokenizer, unet=sd.unet, motion_adapter=parts.adapter,
                                  scheduler=video_scheduler(), conditioning=parts.conditioning,
                                  image_vae=sd.vae)
        frames = pipe("a corgi running on the beach", num_frames=61, fps=25, motion_score=3.0).frames

    or with :func:`load_fancyvideo`. Extra call arguments beside ``AnimateDiffPipeline``'s: ``image``,
    ``fps``, ``motion_score``, ``first_frame_steps``, ``first_frame_guidance_scale``,
    ``first_frame_callback_on_step_end``, ``techniques`` (attncraft attention techniques for this call).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->image_vae->vae"
    _optional_components = ["feature_extractor", "image_encoder", "motion_adapter", "conditioning", "image_vae",
                            "image_scheduler"]
    _exclude_from_cpu_offload = ["conditioning"]  # called from inside the UNet's forward

    def __init__(
        self,
        vae: CVVAEModel | AutoencoderKL,
        text_encoder,
        tokenizer,
        unet: UNet2DConditionModel | UNetMotionModel,
        motion_adapter: MotionAdapter | None,
        scheduler: DDIMScheduler,
        conditioning: FancyVideoConditioning | None = None,
        image_vae: AutoencoderKL | None = None,
        image_scheduler: DDIMScheduler | None = None,
        feature_extractor=None,
        image_encoder=None,
    ):
        DiffusionPipeline.__init__(self)
        if isinstance(unet, UNet2DConditionModel):
            if motion_adapter is None or not motion_adapter.config.get("conv_in_channels"):
                raise ValueError("FancyVideoPipeline needs a motion adapter with a 9-channel conv_in (the converted "
                                 "FancyVideo checkpoint) to build its UNet from an image UNet")
            unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
        if unet.config.in_channels != 9:
            raise ValueError(f"FancyVideoPipeline needs a UNet with 9 input channels, this one has {unet.config.in_channels}")
        if image_vae is not None and vae is not None and self._spatial_factor(image_vae) != self._spatial_factor(vae):
            raise ValueError(f"the image VAE compresses space {self._spatial_factor(image_vae)}x but the video VAE "
                             f"{self._spatial_factor(vae)}x; FancyVideo needs both at the same factor (8 for SD 1.5)")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              motion_adapter=motion_adapter, scheduler=scheduler, conditioning=conditioning,
                              image_vae=image_vae, image_scheduler=image_scheduler,
                              feature_extractor=feature_extractor, image_encoder=image_encoder)
        self.vae_scale_factor = self._spatial_factor(vae)
        self.video_processor = VideoProcessor(do_resize=False, vae_scale_factor=self.vae_scale_factor)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @staticmethod
    def _spatial_factor(vae) -> int:
        if vae is None:
            return 8
        if isinstance(vae, CVVAEModel):
            return vae.spatial_compression
        return 2 ** (len(vae.config.block_out_channels) - 1)

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """As in diffusers; CV-VAE's attention has no fused form, so only an SD VAE is fused."""
        super().fuse_qkv_projections(unet=unet, vae=vae and isinstance(self.vae, AutoencoderKL))

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        super().unfuse_qkv_projections(unet=unet, vae=vae and isinstance(self.vae, AutoencoderKL))

    # ---------------------------------------------------------------------------------------
    @property
    def temporal_compression(self) -> int:
        """Video frames per latent frame step of ``vae`` (4 for CV-VAE, 1 for an SD VAE)."""
        return self.vae.temporal_compression if isinstance(self.vae, CVVAEModel) else 1

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of ``num_frames`` video frames, checked against the VAE and the UNet (one line)."""
        latent = latent_frame_count(num_frames, self.temporal_compression)
        check_latent_frames(self.unet, latent, self.temporal_compression)
        return latent

    def default_num_frames(self) -> int:
        return video_frame_count(DEFAULT_LATENT_FRAMES, self.temporal_compression)

    def _scaling(self, vae) -> float:
        return float(vae.config.scaling_factor)

    def encode_image_latents(self, image: torch.Tensor, generator=None) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[-1, 1]`` -> the scaled latent of each image as one frame ``(B, 4, h, w)``."""
        image = image.to(device=self._execution_device, dtype=self.vae.dtype)
        if isinstance(self.vae, CVVAEModel):
            latent = self.vae.encode(image[:, :, None]).latent_dist.sample(generator)[:, :, 0]
        else:
            latent = self.vae.encode(image).latent_dist.sample(generator)
        return latent * self._scaling(self.vae)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 16) -> torch.Tensor:
        """``(B, 4, L, h, w)`` latents -> ``(B, 3, F, H, W)`` float video in ``[-1, 1]``."""
        if not isinstance(self.vae, CVVAEModel):
            return super().decode_latents(latents, decode_chunk_size)
        video = self.vae.decode(latents.to(self.vae.dtype) / self._scaling(self.vae)).sample
        return video.float()

    def _decode_first_frame(self, latents: torch.Tensor) -> torch.Tensor:
        """``(B, 4, 1, h, w)`` -> ``(B, 3, H, W)`` in ``[-1, 1]`` with ``image_vae`` (else ``vae``)."""
        vae = self.image_vae if self.image_vae is not None else self.vae
        if isinstance(vae, CVVAEModel):
            return vae.decode(latents.to(vae.dtype) / self._scaling(vae)).sample[:, :, 0].float()
        return vae.decode(latents[:, :, 0].to(vae.dtype) / self._scaling(vae)).sample.float()

    def _prepare_image(self, image, batch_size: int, height: int, width: int) -> torch.Tensor:
        """PIL image(s), arrays or tensors -> ``(B, 3, H, W)`` in ``[-1, 1]``, resized to cover the size and
        centre-cropped; one image serves every prompt."""
        tensor = self.image_processor.preprocess(image, height=height, width=width, resize_mode="crop")
        if tensor.shape[0] == 1 and batch_size > 1:
            tensor = tensor.repeat(batch_size, 1, 1, 1)
        if tensor.shape[0] != batch_size:
            raise InputError(f"{tensor.shape[0]} images were given for {batch_size} prompts",
                             "pass one image, or one per prompt")
        return tensor

    # ---------------------------------------------------------------------------------------
    def _denoise(self, scheduler, latents, image, mask, embeds, steps, guidance, generator, eta, attention_kwargs,
                 callback, callback_inputs, prompt_embeds, negative_prompt_embeds, progress: bool = True):
        cfg = guidance > 1
        scheduler.set_timesteps(steps, device=self._execution_device)
        timesteps = scheduler.timesteps
        accepts = set(inspect.signature(scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepts}
        frames = latents.shape[2]
        with self.progress_bar(total=len(timesteps)) as bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                x = torch.cat([latents] * 2) if cfg else latents
                x = model_input(scheduler.scale_model_input(x, t), image, mask)
                noise = self.unet(x, t, encoder_hidden_states=embeds.repeat_interleave(frames, dim=0),
                                  cross_attention_kwargs=attention_kwargs).sample
                if cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + guidance * (cond - uncond)
                latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                if callback is not None:
                    values = dict(latents=latents, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
                    outputs = callback(self, i, t, {k: values[k] for k in callback_inputs}) or {}
                    latents = outputs.pop("latents", latents)
                    if "prompt_embeds" in outputs or "negative_prompt_embeds" in outputs:
                        prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
                bar.update()
        return latents

    def generate_first_frame(self, prompt_embeds, negative_prompt_embeds, height: int, width: int, steps: int,
                             guidance: float, generator=None, eta: float = 0.0, attention_kwargs=None,
                             callback=None, callback_inputs: Sequence[str] = ("latents",)) -> torch.Tensor:
        """Stage 1 of text-to-video: ``(B, 3, H, W)`` first frames in ``[-1, 1]`` (see the module doc)."""
        scheduler = self.image_scheduler if self.image_scheduler is not None else first_frame_scheduler(self.scheduler)
        batch = prompt_embeds.shape[0]
        shape = (batch, 4, 1, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=prompt_embeds.dtype)
        latents = latents * scheduler.init_noise_sigma
        image, mask = image_condition(None, 1, (batch, 4, shape[3], shape[4]))
        embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if guidance > 1 else prompt_embeds
        with motion_modules_disabled(self.unet):
            latents = self._denoise(scheduler, latents, image, mask, embeds, steps, guidance, generator, eta,
                                    attention_kwargs, callback, callback_inputs, prompt_embeds, negative_prompt_embeds)
        return self._decode_first_frame(latents)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image: Any = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        fps: float | None = None,
        motion_score: float | None = None,
        first_frame_steps: int | None = None,
        first_frame_guidance_scale: float | None = None,
        output_type: str | None = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' signature
        first_frame_callback_on_step_end: Callable | None = None,
        decode_chunk_size: int = 16,
        techniques: Sequence[Any] | None = None,
    ) -> FancyVideoPipelineOutput | tuple:
        if getattr(self, "free_init_enabled", False) or getattr(self, "free_noise_enabled", False):
            raise InputError("FancyVideoPipeline does not support FreeInit or FreeNoise",
                             "disable them (pipe.disable_free_init() / pipe.disable_free_noise())")
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, None, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          None, None, callback_on_step_end_tensor_inputs)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise InputError(f"the size {width}x{height} is not a multiple of {self.vae_scale_factor}",
                             f"pass a size that is a multiple of {self.vae_scale_factor}")
        num_frames = self.default_num_frames() if num_frames is None else num_frames
        latent_frames = self.latent_frames(num_frames)
        values = self.conditioning.config if self.conditioning is not None else {}
        fps = float(values.get("default_fps", DEFAULT_FPS)) if fps is None else float(fps)
        motion_score = float(values.get("default_motion_score", DEFAULT_MOTION_SCORE)) if motion_score is None else float(motion_score)
        self._guidance_scale, self._clip_skip = guidance_scale, clip_skip
        self._cross_attention_kwargs, self._interrupt = cross_attention_kwargs, False

        batch_size = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else prompt_embeds.shape[0]
        device = self._execution_device
        lora_scale = (cross_attention_kwargs or {}).get("scale")
        first_guidance = guidance_scale if first_frame_guidance_scale is None else first_frame_guidance_scale
        cfg_any = guidance_scale > 1 or (image is None and first_guidance > 1)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, cfg_any, negative_prompt, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, lora_scale=lora_scale, clip_skip=clip_skip)
        generators = _generators(generator)
        start = [g.get_state() for g in generators]

        def rewind():
            for g, state in zip(generators, start):
                g.set_state(state)

        techniques = tuple(techniques or ())
        first_steps = first_frame_steps or num_inference_steps
        with contextlib.ExitStack() as stack:
            manager = None
            if techniques:
                from attncraft.attention_processors import apply_techniques

                manager = stack.enter_context(apply_techniques(self, *techniques))
            first = None
            if image is None:
                if manager is not None:
                    manager.start_run(first_steps)  # the first frame is a run of its own
                first = self.generate_first_frame(
                    prompt_embeds, negative_prompt_embeds, height, width, first_steps,
                    first_guidance, generator,
                    eta, cross_attention_kwargs, first_frame_callback_on_step_end)
                # as an 8-bit image, the way the reference hands it on (and a saved PNG would be)
                pixels = ((first / 2 + 0.5).clamp(0, 1) * 255).round() / 255
                image_pixels = pixels * 2 - 1
            else:
                image_pixels = self._prepare_image(image, batch_size, height, width)
            rewind()
            image_latents = self.encode_image_latents(image_pixels, generator)
            rewind()
            cond_image, mask = image_condition(image_latents, latent_frames)
            latents = self.prepare_latents(batch_size, 4, latent_frames, height, width, prompt_embeds.dtype, device,
                                           generator, latents)
            embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if guidance_scale > 1 else prompt_embeds
            if manager is not None:
                manager.start_run(num_inference_steps)
            with condition_embeddings(self.unet, self.conditioning, fps, motion_score):
                latents = self._denoise(self.scheduler, latents, cond_image, mask, embeds, num_inference_steps,
                                        guidance_scale, generator, eta, cross_attention_kwargs, callback_on_step_end,
                                        callback_on_step_end_tensor_inputs, prompt_embeds, negative_prompt_embeds)
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(video=self.decode_latents(latents, decode_chunk_size),
                                                           output_type=output_type)
        first_out = None
        if first is not None:
            first_out = first if output_type == "latent" else self.image_processor.postprocess(
                pixels * 2 - 1, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return FancyVideoPipelineOutput(frames=video, first_frames=first_out)


# --------------------------------------------------------------------------------------------------
# Loading, settings, generation (the Python API of ``attncraft video --method fancyvideo``)
# --------------------------------------------------------------------------------------------------

SD_VAE = "sd"
"""``--vae sd``: the base model's SD VAE per frame instead of CV-VAE (not the released model)."""


def load_fancyvideo(model: str | None, adapter: str | None, vae: str | None, device=None, dtype=None,
                    config: str | None = None, trust_pickle: bool = False, res_adapter: str | None = None,
                    res_adapter_scale: str | float = "reference"):
    """A :class:`~attncraft.loading.LoadedPipeline` holding a :class:`FancyVideoPipeline`: the SD 1.x
    base ``model`` (any reference :func:`~attncraft.loading.load_text_to_image` takes), the converted
    FancyVideo ``adapter`` (folder, or checkpoint file converted in memory), ``vae`` (a CV-VAE
    folder, or ``sd`` for the base model's VAE per frame) and, as every released configuration has
    it, ``res_adapter`` (the ResAdapter folder; :func:`~attncraft.fancyvideo.res_adapter.apply_res_adapter`
    with ``res_adapter_scale``) applied to the base UNet first."""
    from attncraft.devices import resolve_device, resolve_dtype
    from attncraft.errors import ModelLoadError
    from attncraft.fancyvideo.conditioning import video_scheduler
    from attncraft.fancyvideo.convert import load_fancyvideo_adapter
    from attncraft.fancyvideo.vae import load_cv_vae
    from attncraft.loading import LoadedPipeline, check_adapter_fits, load_text_to_image

    if not adapter:
        raise ModelLoadError("--method fancyvideo needs the FancyVideo checkpoint as --adapter (no FancyVideo model "
                             "exists for the embedded Shapes models)",
                             "convert the released checkpoint once with 'attncraft convert fancyvideo CKPT --out DIR' "
                             "and pass --adapter DIR")
    if not vae:
        raise ModelLoadError("--method fancyvideo needs its 3-D VAE as --vae",
                             "pass the CV-VAE folder (CV-VAE/vae3d), or --vae sd for the base model's VAE per frame "
                             "(not the released model: latent frames are then video frames)")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    parts = load_fancyvideo_adapter(adapter, dtype=dt, trust_pickle=trust_pickle)
    video_vae = None if vae.strip().lower() == SD_VAE else load_cv_vae(vae, dtype=dt, trust_pickle=trust_pickle)
    base = load_text_to_image(model, device=dev, dtype=dt, config=config, trust_pickle=trust_pickle)
    if base.family != "sd":
        raise ModelLoadError(f"FancyVideo runs on SD 1.x models; {base.label} is {base.family}", "pass an SD 1.5 model as --model")
    image = base.pipeline
    if res_adapter:
        from attncraft.fancyvideo.res_adapter import apply_res_adapter

        apply_res_adapter(image.unet, res_adapter, scale=res_adapter_scale)
    adapter_label = f"{Path(adapter).name} (FancyVideo)"
    check_adapter_fits(parts.adapter, image.unet, adapter_label, base.label)
    pipe = FancyVideoPipeline(
        vae=video_vae if video_vae is not None else image.vae, text_encoder=image.text_encoder,
        tokenizer=image.tokenizer, unet=image.unet, motion_adapter=parts.adapter, scheduler=video_scheduler(),
        conditioning=parts.conditioning, image_vae=image.vae, image_scheduler=first_frame_scheduler(),
    )
    pipe = pipe.to(device=dev, dtype=dt)
    pipe.set_progress_bar_config(disable=True)
    vae_label = "CV-VAE" if video_vae is not None else "SD VAE per frame (not the released model's 3-D VAE)"
    label = f"{base.label}{' + ResAdapter' if res_adapter else ''} + {adapter_label} + {vae_label}"
    return LoadedPipeline(pipe, base.reference, label, "fancyvideo", base.source, dict(base.defaults),
                          adapter=str(adapter), adapter_label=adapter_label)


@dataclass
class FancyVideoSettings:
    """Everything that reproduces one FancyVideo clip (stored in its sidecar and contact sheet).

    ``fps`` is both the fps condition and the frame rate of the written video, as in every released
    configuration (25 and 25). ``image``: the first frame for image-to-video (its SHA-256 is stored
    too, so a re-run notices a changed file); None: text-to-video."""

    prompt: str
    image: str | None = None
    image_sha256: str | None = None
    negative_prompt: str | None = None
    num_frames: int = 61
    fps: float = DEFAULT_FPS
    motion_score: float = DEFAULT_MOTION_SCORE
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    seed: int = 0
    width: int = REFERENCE_SIZE
    height: int = REFERENCE_SIZE
    model: str = ""
    adapter: str | None = None
    vae: str | None = None
    res_adapter: str | None = None
    model_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | dict(attncraft_version=__version__, task="video", method="fancyvideo")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FancyVideoSettings:
        if data.get("method") != "fancyvideo" or "prompt" not in data:
            raise InputError("the sidecar holds no FancyVideo settings", "pass the sidecar of an attncraft FancyVideo clip")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def default_fancyvideo_settings(loaded, prompt: str) -> FancyVideoSettings:
    """The reference's settings (768 px for SD 1.5-width UNets, else the model's native size; 16
    latent frames; 50 steps; guidance 7.5; fps 25; motion score 3)."""
    pipe = loaded.pipeline
    side = REFERENCE_SIZE if pipe.unet.config.block_out_channels[0] == 320 else pipe.unet.config.sample_size * pipe.vae_scale_factor
    return FancyVideoSettings(prompt=prompt, num_frames=pipe.default_num_frames(), width=side, height=side,
                              model=loaded.reference, adapter=loaded.adapter, model_label=loaded.label)


def image_digest(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def validate_fancyvideo(settings: FancyVideoSettings, loaded) -> None:
    """One-line :class:`InputError` for any setting the model cannot take (before any work)."""
    from attncraft.pipelines.text_to_image import check_values
    from attncraft.validation import check_finite, check_input_file, check_int_range, check_text, check_token_count

    pipe = loaded.pipeline
    check_values(settings.prompt, settings.negative_prompt, settings.num_inference_steps, settings.guidance_scale,
                 settings.seed)
    check_finite("--fps", settings.fps, 0.0, MAX_FPS, low_inclusive=False, example=25)
    check_finite("--motion-score", settings.motion_score, 0.0, MAX_MOTION_SCORE, example=3)
    pipe.latent_frames(check_int_range("--frames", settings.num_frames, 1, example=pipe.default_num_frames()))
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    for name, value in (("width", settings.width), ("height", settings.height)):
        check_int_range(f"--{name}", value, 1, 2048)
        if value < multiple or value % multiple:
            raise InputError(f"the {name} {value} is not usable by this model: it must be a multiple of {multiple}",
                             f"pass e.g. --size {max(multiple, round(value / multiple) * multiple)}")
    for what, text in (("prompt", settings.prompt), ("negative prompt", settings.negative_prompt)):
        if text:
            check_text(what, text)
            check_token_count(pipe.tokenizer, text, what)
    if settings.image is not None:
        check_input_file(settings.image, "--image", suffixes=(".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        digest = image_digest(settings.image)
        if settings.image_sha256 and settings.image_sha256 != digest:
            raise InputError(f"{settings.image} is not the image this clip was made from (its content changed)",
                             "restore the original image, or pass --image to make a new clip")
        settings.image_sha256 = digest


def generate_fancyvideo(loaded, settings: FancyVideoSettings, on_step: Callable[[int, int], None] | None = None,
                        techniques: Sequence[Any] = (), **pipeline_kwargs: Any) -> FancyVideoPipelineOutput:
    """Generate one clip (both stages for text-to-video); ``on_step(done, total)`` after every step."""
    validate_fancyvideo(settings, loaded)
    pipe = loaded.pipeline
    device = pipe._execution_device
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(settings.seed)
    image = None
    if settings.image is not None:
        with PIL.Image.open(settings.image) as handle:
            image = handle.convert("RGB")
    steps = settings.num_inference_steps
    total = steps * (1 if image is not None else 2)
    step = step_counter(on_step, total)
    return pipe(settings.prompt, image=image, num_frames=settings.num_frames, height=settings.height,
                width=settings.width, num_inference_steps=steps, guidance_scale=settings.guidance_scale,
                negative_prompt=settings.negative_prompt, generator=generator, fps=settings.fps,
                motion_score=settings.motion_score, callback_on_step_end=step,
                first_frame_callback_on_step_end=step, techniques=techniques, **pipeline_kwargs)
