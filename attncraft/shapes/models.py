"""Architectures of the Shapes model family (shapes CLIP, shapes SD, shapes motion), shared by training and runtime.

The Shapes models are the project's embedded default: the real classes (transformers ``CLIPModel`` /
``CLIPTextModel``, diffusers ``AutoencoderKL`` / ``UNet2DConditionModel`` / ``StableDiffusionPipeline``)
at a miniature size, trained on the procedural Shapes world (``attncraft.shapes.world``).

Size budget (fp16 on disk, all Shapes weights together < 80 MB, see :func:`shapes_size_budget`):

- shapes CLIP: text tower hidden 128 x 4 layers (its 49408 x 128 token embedding is most of it),
  ViT image tower 64 px / patch 8, hidden 128 x 6 layers.
- shapes SD: its own copy of the text tower, a 2-downsampling ``AutoencoderKL`` (64 px -> 16x16x4
  latents), and a ``UNet2DConditionModel`` on 16x16 latents with cross-attention at 16x16 and 8x8
  (down, mid and up blocks), v-prediction.
- shapes motion: a diffusers ``MotionAdapter`` (AnimateDiff motion modules) for shapes SD's UNet:
  temporal transformers at both levels and in the mid block, ~2.6 M params.

``python -m attncraft.shapes.models`` prints the parameter counts and fp16 sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from attncraft.assets import models_dir
from attncraft.tokenizer import BOS_TOKEN_ID, CLIP_MAX_LENGTH, EOS_TOKEN_ID, VOCAB_SIZE

IMAGE_SIZE = 64  # Shapes canvas, pixels
LATENT_SIZE = 16  # VAE latent grid (2 downsamplings)
LATENT_CHANNELS = 4
TEXT_HIDDEN = 128  # text tower width == UNet cross_attention_dim

SHAPES_CLIP_DIR: Path = models_dir() / "shapes-clip"
SHAPES_SD_DIR: Path = models_dir() / "shapes-sd"
SHAPES_MOTION_DIR: Path = models_dir() / "shapes-motion"
SHAPES_REALCUSTOM_ENCODER_DIR: Path = models_dir() / "shapes-realcustom" / "image_encoder"
"""RealCustom's image encoder (a ``CLIPVisionModel``): the vision tower of the shapes CLIP as it was before the mesh
fine-tune opened its trunk. RealCustom's parts were trained on its features, which the mesh fine-tune changes
(benchmarks/RESULTS.md: RealCustom retrained on the mesh CLIP kept 33 % of identities, against 42.5 % on this one),
so it ships beside them (2.5 MB) and the mesh CLIP serves X-Mesh."""
SHAPES_CTGM_DIR: Path = models_dir() / "shapes-ctgm"
"""Trained CTGMs of the Shapes motion model (``ctgm-tii-tar.safetensors``, ``ctgm-all.safetensors``)."""

#: File in the shapes-sd folder with the recommended sampling settings, in the format of
#: ``attncraft.loading.DEFAULTS_FILE`` (width, height, num_inference_steps, guidance_scale); written by
#: the trainer and updated by ``python -m attncraft.shapes.training evaluate`` (sampler sweep).
SD_DEFAULTS_FILE = "attncraft_defaults.json"
#: Fallback defaults, used until a trained folder states its own.
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0
DEFAULT_SCHEDULER = "DPMSolverMultistepScheduler"

#: The full-size budget for all shipped Shapes weights in fp16 (CLIP, SD, and the motion and technique parts).
SIZE_BUDGET_BYTES = 80 * 1000 * 1000


# ----------------------------------------------------------------------------------------- configs
def shapes_clip_text_config_dict() -> dict[str, Any]:
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )


def shapes_clip_vision_config_dict() -> dict[str, Any]:
    return dict(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        hidden_act="quick_gelu",
        projection_dim=TEXT_HIDDEN,
    )


def shapes_clip_config():
    """``CLIPConfig`` of shapes CLIP (text hidden 128, ViT 64 px / patch 8)."""
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=shapes_clip_text_config_dict(),
        vision_config=shapes_clip_vision_config_dict(),
        projection_dim=TEXT_HIDDEN,
        logit_scale_init_value=2.6592,
    )


def shapes_text_encoder_config():
    """``CLIPTextConfig`` of the SD text encoder (the shapes CLIP text tower)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**shapes_clip_text_config_dict())


def shapes_vae_config(scaling_factor: float = 1.0) -> dict[str, Any]:
    """``AutoencoderKL`` kwargs: 64 px RGB -> 16x16x4 latents (3 blocks = 2 downsamplings), ~1.7 M params.

    ``scaling_factor`` is 1/std of the trained VAE's latents (measured by the VAE trainer).
    """
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
        scaling_factor=float(scaling_factor),
    )


def shapes_unet_config() -> dict[str, Any]:
    """``UNet2DConditionModel`` kwargs: 16x16 latents, ~6.3 M params.

    Two levels: 16x16 (64 ch) and 8x8 (128 ch, also the mid block), each with a transformer block
    (self- and cross-attention) after every resnet: 11 cross-attention layers, 5 at 16x16 (256
    queries) and 6 at 8x8 (64 queries). Self-attention at 8x8 gives every position a global view, so
    no 4x4 level is needed (it would cost ~2.5 M params, mostly in 4x4 resnets).
    ``attention_head_dim`` is diffusers' legacy name for the number of heads per block (here head
    dim 32 everywhere). v-prediction (see :data:`NOISE_SCHEDULE`).
    """
    return dict(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(64, 128),
        layers_per_block=2,
        attention_head_dim=(2, 4),
        cross_attention_dim=TEXT_HIDDEN,
        norm_num_groups=16,
    )


def motion_config_for_unet(unet_config: dict[str, Any], heads: int = 4, max_frames: int = 32) -> dict[str, Any]:
    """``MotionAdapter`` kwargs that fit a ``UNet2DConditionModel`` config: its widths, one motion
    module after each resnet (``layers_per_block`` down, one more up, as ``UNetMotionModel`` places
    them), a mid-block module, and its group-norm groups (``UNetMotionModel`` builds the motion
    modules with the UNet's ``norm_num_groups``, so the adapter states the same number)."""
    return dict(
        block_out_channels=tuple(unet_config["block_out_channels"]),
        motion_layers_per_block=unet_config["layers_per_block"],
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=heads,
        motion_norm_num_groups=unet_config["norm_num_groups"],
        motion_max_seq_length=max_frames,
        use_motion_mid_block=True,
    )


def shapes_motion_config() -> dict[str, Any]:
    """``MotionAdapter`` kwargs for shapes SD's UNet: ~2.6 M params (5.3 MB in fp16).

    Widths 64 / 128, 2 motion modules per down block and 3 per up block, one in the mid block; four
    heads (head dim 16 at 16x16, 32 at 8x8); sinusoidal frame positions up to 32 frames.
    """
    return motion_config_for_unet(shapes_unet_config(), heads=4, max_frames=32)


#: Noise schedule used in training and sampling (SD's), with v-prediction.
NOISE_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
)


def shapes_scheduler(name: str = DEFAULT_SCHEDULER):
    """A sampling scheduler on the Shapes noise schedule; ``name`` is a diffusers scheduler class name."""
    import diffusers

    if name == "DPMSolverMultistepScheduler":
        return diffusers.DPMSolverMultistepScheduler(
            **NOISE_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing", steps_offset=1,
            final_sigmas_type="zero", lower_order_final=True,
        )
    if name == "DDIMScheduler":
        return diffusers.DDIMScheduler(
            **NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=True, steps_offset=1,
            timestep_spacing="trailing",
        )
    if name == "EulerDiscreteScheduler":
        return diffusers.EulerDiscreteScheduler(**NOISE_SCHEDULE, timestep_spacing="trailing", steps_offset=1)
    if name == "UniPCMultistepScheduler":
        return diffusers.UniPCMultistepScheduler(**NOISE_SCHEDULE, timestep_spacing="trailing", steps_offset=1)
    raise ValueError(f"unknown Shapes scheduler {name!r}")


def shapes_training_scheduler():
    """The DDPM scheduler whose ``add_noise``/``get_velocity`` the UNet trainer uses."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE, clip_sample=False)


# ---------------------------------------------------------------------------------------- builders
def build_shapes_clip(seed: int = 0):
    """A randomly initialised shapes ``CLIPModel``."""
    from transformers import CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPModel(shapes_clip_config()).eval()


def build_shapes_text_encoder(seed: int = 0):
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(shapes_text_encoder_config()).eval()


def text_encoder_from_clip(clip_model):
    """A ``CLIPTextModel`` holding (a copy of) the text tower of a shapes ``CLIPModel``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**clip_model.config.text_config.to_dict())
    enc = CLIPTextModel(cfg)
    src = clip_model.text_model.state_dict()  # keys "embeddings...", "encoder...", "final_layer_norm..."
    # transformers 5 puts the tower right in CLIPTextModel; 4.x nests it under ``text_model``
    prefix = "text_model." if any(k.startswith("text_model.") for k in enc.state_dict()) else ""
    enc.load_state_dict({prefix + k: v for k, v in src.items()}, strict=True)
    return enc.to(dtype=next(clip_model.parameters()).dtype).eval()


def build_shapes_vae(seed: int = 0, scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**shapes_vae_config(scaling_factor)).eval()


def build_shapes_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**shapes_unet_config()).eval()


def zero_motion_outputs(adapter) -> None:
    """Zero the output projection of every motion module, so that the adapter starts as the identity
    (each motion module adds nothing to its residual stream): a fresh motion UNet then denoises each
    frame exactly as the image UNet does, and training starts from the image model's loss (as
    AnimateDiff initialises its motion modules)."""
    for name, module in adapter.named_modules():
        if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def build_shapes_motion_adapter(seed: int = 0, overrides: dict[str, Any] | None = None, zero_outputs: bool = True):
    """A fresh shapes ``MotionAdapter`` (identity at start, see :func:`zero_motion_outputs`)."""
    from diffusers import MotionAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        adapter = MotionAdapter(**(shapes_motion_config() | (overrides or {})))
    if zero_outputs:
        zero_motion_outputs(adapter)
    return adapter.eval()


def assemble_sd_pipeline(text_encoder, vae, unet, scheduler=None, tokenizer=None):
    """A ``StableDiffusionPipeline`` from Shapes components (no safety checker / feature extractor)."""
    from diffusers import StableDiffusionPipeline

    from attncraft.tokenizer import load_clip_tokenizer

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer if tokenizer is not None else load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler if scheduler is not None else shapes_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_random_shapes_sd_pipeline(seed: int = 0):
    """Shapes SD with random weights (same architecture): the stand-in until trained weights exist."""
    return assemble_sd_pipeline(
        text_encoder=build_shapes_text_encoder(seed),
        vae=build_shapes_vae(seed + 1),
        unet=build_shapes_unet(seed + 2),
    )


# --------------------------------------------------------------------------------------- trained
def trained_shapes_clip_available(folder: str | Path | None = None) -> bool:
    folder = Path(folder) if folder is not None else SHAPES_CLIP_DIR
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def shapes_clip_reads_meshes(folder: str | Path | None = None) -> bool:
    """Whether a shapes CLIP folder was trained on renders of painted 3-D meshes (its
    ``training_log.json`` records a ``mesh_fraction`` > 0), i.e. whether it can guide X-Mesh."""
    path = (Path(folder) if folder is not None else SHAPES_CLIP_DIR) / "training_log.json"
    try:
        return float(json.loads(path.read_text()).get("mesh_fraction") or 0) > 0
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def trained_shapes_sd_available(folder: str | Path | None = None) -> bool:
    folder = Path(folder) if folder is not None else SHAPES_SD_DIR
    return (folder / "model_index.json").is_file() and (folder / "unet").is_dir()


def trained_shapes_motion_available(folder: str | Path | None = None) -> bool:
    folder = Path(folder) if folder is not None else SHAPES_MOTION_DIR
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def shapes_sd_defaults(folder: str | Path | None = None) -> dict[str, Any]:
    """Recommended sampling settings of a shapes SD folder (its scheduler is the recommended sampler)."""
    folder = Path(folder) if folder is not None else SHAPES_SD_DIR
    out: dict[str, Any] = {"width": IMAGE_SIZE, "height": IMAGE_SIZE, "num_inference_steps": DEFAULT_STEPS,
                           "guidance_scale": DEFAULT_GUIDANCE}
    path = folder / SD_DEFAULTS_FILE
    if path.is_file():
        out.update(json.loads(path.read_text()))
    return out


def load_shapes_clip(folder: str | Path | None = None, torch_dtype: torch.dtype = torch.float32):
    from transformers import CLIPModel

    folder = Path(folder) if folder is not None else SHAPES_CLIP_DIR
    return CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch_dtype).eval()


def load_shapes_sd_pipeline(folder: str | Path | None = None, torch_dtype: torch.dtype = torch.float32):
    """Load the trained shapes SD folder (fp16 on disk, upcast to ``torch_dtype``)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder) if folder is not None else SHAPES_SD_DIR
    return StableDiffusionPipeline.from_pretrained(
        str(folder), local_files_only=True, torch_dtype=torch_dtype,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


# ---------------------------------------------------------------------------------------- budget
def load_in_float32_by_default(folder: str | Path) -> None:
    """Make a transformers model folder saved in fp16 load as fp32 when no dtype is given.

    The weights stay fp16 on disk (size budget). transformers 5 loads a model in the dtype its
    ``config.json`` records unless told otherwise, while diffusers loads its models in fp32: a plain
    ``StableDiffusionPipeline.from_pretrained(folder)`` would then mix an fp16 text encoder with an
    fp32 UNet and fail on CPU. Recording float32 gives every component the same default.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = "float32"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def legacy_text_encoder_keys(folder: str | Path) -> None:
    """Store the text encoder under SD 1.x's key names (``text_model.*``).

    transformers 5 writes a ``CLIPTextModel`` without the ``text_model.`` prefix; 4.x cannot load
    that, while 5.x strips the prefix on load (as it does for every SD 1.5 checkpoint). With the
    prefix the folder loads in both.
    """
    from safetensors.torch import load_file, save_file

    for path in Path(folder).glob("*.safetensors"):
        sd = load_file(str(path))
        if all(k.startswith("text_model.") for k in sd):
            continue
        save_file({(k if k.startswith("text_model.") else "text_model." + k): v for k, v in sd.items()},
                  str(path), metadata={"format": "pt"})


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shipped_sd_vocab_size() -> int | None:
    """The vocabulary size of the shipped shapes SD's text encoder (None when it is not shipped)."""
    path = SHAPES_SD_DIR / "text_encoder" / "config.json"
    return int(json.loads(path.read_text())["vocab_size"]) if path.is_file() else None


def shapes_size_budget() -> dict[str, dict[str, int]]:
    """Parameter counts and fp16 bytes of each full-size Shapes model (built on the meta device)."""
    with torch.device("meta"):
        clip = build_shapes_clip()
        vae = build_shapes_vae()
        unet = build_shapes_unet()
        motion = build_shapes_motion_adapter(zero_outputs=False)
    # shapes SD's text encoder is the text tower with the token embedding cut to the Shapes vocabulary
    # (attncraft.shapes.vocab): the shipped folder's vocabulary size, CLIP's before one is shipped
    text = clip.config.text_config
    sd_vocab = shipped_sd_vocab_size() or text.vocab_size
    parts = {
        "shapes-clip": count_params(clip),
        "shapes-sd/text_encoder": count_params(clip.text_model) - (text.vocab_size - sd_vocab) * text.hidden_size,
        "shapes-sd/vae": count_params(vae),
        "shapes-sd/unet": count_params(unet),
        "shapes-motion": count_params(motion),
        "shapes-clip (text tower)": count_params(clip.text_model),
        "shapes-clip (vision tower)": count_params(clip.vision_model),
        # RealCustom's image encoder: a copy of the vision tower as it was before the mesh fine-tune
        "shapes-realcustom/image_encoder": count_params(clip.vision_model),
    }
    out = {k: {"params": v, "fp16_bytes": 2 * v} for k, v in parts.items()}
    total = sum(parts[k] for k in ("shapes-clip", "shapes-sd/text_encoder", "shapes-sd/vae", "shapes-sd/unet",
                                   "shapes-motion", "shapes-realcustom/image_encoder"))
    out["total"] = {"params": total, "fp16_bytes": 2 * total}
    return out


def main() -> None:  # pragma: no cover - a printout
    budget = shapes_size_budget()
    for name, row in budget.items():
        print(f"{name:28s} {row['params'] / 1e6:8.3f} M params  {row['fp16_bytes'] / 1e6:8.2f} MB fp16")
    print(f"budget: {SIZE_BUDGET_BYTES / 1e6:.0f} MB")


if __name__ == "__main__":  # pragma: no cover
    main()
