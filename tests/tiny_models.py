"""Tiny randomly initialised diffusers/transformers models built from configs, for tests.

Configurations follow diffusers' own test suites (see the diffusers notes, section 8.5), with the
text encoder sized for the real CLIP vocabulary (49,408 ids) so the shipped tokenizer works.
"""

from __future__ import annotations

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from attncraft.tokenizer import load_clip_tokenizer


def text_config(hidden: int = 32, projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        projection_dim=projection_dim or hidden, max_position_embeddings=77,
    )


def sd_unet(seed: int = 0, prediction_type_sample_size: int = 32) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=prediction_type_sample_size,
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    )


def sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=8,
    )


def vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=8,
        sample_size=64,
    )


def scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def sd_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config())
    pipe = StableDiffusionPipeline(
        vae=vae(seed), text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=sd_unet(seed),
        scheduler=scheduler(prediction_type), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    te1 = CLIPTextModel(text_config(32))
    te2 = CLIPTextModelWithProjection(text_config(32, projection_dim=32))
    tok = load_clip_tokenizer()
    pipe = StableDiffusionXLPipeline(
        vae=vae(seed), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
        unet=sdxl_unet(seed), scheduler=scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def motion_parts(seed: int = 0, max_frames: int = 32) -> tuple[UNet2DConditionModel, MotionAdapter]:
    """The tiny image UNet and the motion adapter that make :func:`motion_unet`."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, norm_num_groups=2,
    )
    adapter = MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=2,
        motion_num_attention_heads=4, motion_max_seq_length=max_frames,
    )
    return unet, adapter


def motion_unet(seed: int = 0, max_frames: int = 32) -> UNetMotionModel:
    return UNetMotionModel.from_unet2d(*motion_parts(seed, max_frames))


def animatediff_pipeline(seed: int = 0, max_frames: int = 32, keep_adapter: bool = False) -> AnimateDiffPipeline:
    """Tiny AnimateDiff; ``keep_adapter`` registers the motion adapter too (FreeNoise reads it)."""
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config())
    if keep_adapter:
        unet, adapter = motion_parts(seed, max_frames)
    else:
        unet, adapter = motion_unet(seed, max_frames), None
    pipe = AnimateDiffPipeline(
        vae=vae(seed), text_encoder=text_encoder, tokenizer=load_clip_tokenizer(), unet=unet,
        motion_adapter=adapter, scheduler=DDIMScheduler(beta_schedule="linear", clip_sample=False),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def quick_settings(loaded, **overrides):
    """Text-to-image settings for tests: 'a red circle', 2 steps, 32x32, plus ``overrides``."""
    from attncraft.pipelines import default_settings

    settings = default_settings(loaded, "a red circle")
    settings.num_inference_steps, settings.width, settings.height = 2, 32, 32
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings
