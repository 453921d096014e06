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


def motion_unet(seed: int = 0, max_frames: int = 32) -> UNetMotionModel:
    return motion_unet_and_adapter(seed, max_frames)[0]


def motion_unet_and_adapter(seed: int = 0, max_frames: int = 32) -> tuple[UNetMotionModel, MotionAdapter]:
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
    return UNetMotionModel.from_unet2d(unet, adapter), adapter


def animatediff_pipeline(seed: int = 0, max_frames: int = 32) -> AnimateDiffPipeline:
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(text_config())
    unet, adapter = motion_unet_and_adapter(seed, max_frames)
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


def image_encoder_config(projection_dim: int = 32):
    """A tiny ``CLIPVisionModelWithProjection`` configuration (32 px images)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, projection_dim=projection_dim, num_hidden_layers=2,
        num_attention_heads=4, image_size=32, patch_size=4, num_channels=3,
    )


def write_ip_adapter(unet, folder, seed: int = 0, weight_name: str = "ip-adapter.safetensors",
                     num_tokens: int = 4, image_embed_dim: int = 32, with_encoder: bool = True):
    """Write an IP-Adapter for ``unet`` with random weights, in diffusers' layout, to ``folder``.

    ``folder/models/<weight_name>`` holds ``image_proj.*`` (the plain IP-Adapter ``ImageProjection``)
    and ``ip_adapter.<id>.to_{k,v}_ip.weight`` with ids 1, 3, 5, ... for the cross-attention layers
    in ``unet.attn_processors`` order (motion modules excluded), as diffusers' loader reads them;
    ``folder/models/image_encoder`` a tiny ``CLIPVisionModelWithProjection``. Load it with
    ``pipe.load_ip_adapter(folder, subfolder="models", weight_name=weight_name)``.
    """
    from pathlib import Path

    from safetensors.torch import save_file
    from transformers import CLIPVisionModelWithProjection

    root = Path(folder) / "models"
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn(num_tokens * cross, image_embed_dim, generator=g) / image_embed_dim**0.5,
        "image_proj.proj.bias": torch.zeros(num_tokens * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    modules = dict(unet.named_modules())
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        hidden = modules[name[: -len(".processor")]].to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{part}.weight"] = torch.randn(hidden, cross, generator=g) / cross**0.5
        key_id += 2
    save_file(tensors, str(root / weight_name))
    if with_encoder:
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(image_encoder_config(image_embed_dim)).save_pretrained(root / "image_encoder")
    return Path(folder)
