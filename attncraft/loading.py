"""Loading models from any reference, in one place.

A *model reference* (``--model``) is one of

* ``shapes`` (also ``default`` or nothing): the project's embedded Shapes SD model from
  ``assets/models/shapes-sd``; until that model has been trained, a randomly initialised model of the
  same architecture, labelled "random stand-in" wherever it is reported;
* a local diffusers folder (with ``model_index.json``);
* a single-file checkpoint (``.safetensors`` / ``.ckpt``), loaded with diffusers' single-file loaders;
  ``config`` may name a diffusers folder (or Hub id) of the same architecture, which single-file
  loading needs when the Hub is unreachable;
* a Hugging Face Hub id (``org/name``), downloaded or read from the local cache.

Weights are read from safetensors only: a pickled checkpoint (``.ckpt``/``.bin``/``.pt``, or a
folder whose components hold only pickles) is refused unless ``trust_pickle`` (``--trust-pickle``),
see :mod:`attncraft.checkpoints`. ``HF_HUB_OFFLINE=1`` is honoured (the cache only). Every failure becomes a one-line
:class:`~attncraft.errors.ModelLoadError` naming the model, the problem and what to pass instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attncraft.checkpoints import check_pickle_trust
from attncraft.devices import resolve_device, resolve_dtype
from attncraft.errors import ModelLoadError, short_reason

EMBEDDED_ALIASES = {"", "shapes", "default"}
SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt", ".pt", ".bin"}
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
SUPPORTED_TEXT_TO_IMAGE = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}
DEFAULTS_FILE = "attncraft_defaults.json"
"""Optional file in a model folder with recommended width/height/steps/guidance/scheduler."""


@dataclass
class LoadedPipeline:
    """A loaded pipeline and what to report about it."""

    pipeline: Any
    reference: str
    """What the user passed (normalised: ``shapes`` for the embedded default)."""
    label: str
    """Human description, e.g. ``shapes (embedded)`` or ``shapes (random stand-in, untrained)``."""
    family: str
    """``sd`` (1.x/2.x) or ``sdxl``."""
    source: str
    """``embedded``, ``folder``, ``file`` or ``hub``."""
    defaults: dict[str, Any]

    @property
    def is_stand_in(self) -> bool:
        return "stand-in" in self.label


def reference_looks_like_path(ref: str, suffixes: tuple[str, ...] = ()) -> bool:
    """True if a model reference that is neither a folder nor a file here reads as a local path
    (so "does not exist" is the error) rather than a Hub id ``org/name``: it starts with ``.``, ``/``
    or ``~``, has more than one ``/``, or ends with one of ``suffixes``."""
    return (ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1)
            or Path(ref).suffix.lower() in suffixes)  # fmt: skip


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _unreachable(ref: str) -> ModelLoadError:
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub is unreachable"
    return ModelLoadError(
        f"cannot load model {ref!r}: it is not in the local cache and {why}",
        "download it on a connected machine and pass its local folder or .safetensors file, or use --model shapes",
    )


def _is_hub_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    hub_errors = {
        "LocalEntryNotFoundError", "HfHubHTTPError", "RepositoryNotFoundError", "ConnectionError", "ConnectError",
        "OfflineModeIsEnabled", "EntryNotFoundError", "RevisionNotFoundError", "Timeout", "TimeoutException",
        "HTTPError", "GatedRepoError", "ProxyError",
    }
    if names & hub_errors:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("offline", "connection", "couldn't connect", "cannot reach", "huggingface.co", "local_files_only", "not found in the local cache", "resolve"))


def read_defaults(folder: str | os.PathLike | None) -> dict[str, Any]:
    if folder is None:
        return {}
    path = Path(folder) / DEFAULTS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _finish(pipe, device: torch.device, dtype: torch.dtype):
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(dtype=dtype)
    if pipe.device != device:
        pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _family_of(pipe) -> str:
    family = SUPPORTED_TEXT_TO_IMAGE.get(type(pipe).__name__)
    if family is None:
        raise ModelLoadError(
            f"model is a {type(pipe).__name__}, not a text-to-image Stable Diffusion model",
            "pass an SD 1.x/2.x or SDXL model (StableDiffusionPipeline or StableDiffusionXLPipeline)",
        )
    return family


def _load_embedded(device: torch.device, dtype: torch.dtype) -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline

    folder = None
    try:
        from attncraft.shapes import models as shapes_models

        folder = Path(shapes_models.SHAPES_SD_DIR)
    except ImportError:
        shapes_models = None
    if folder is not None and (folder / "model_index.json").is_file():
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype)
        return LoadedPipeline(_finish(pipe, device, dtype), "shapes", "shapes (embedded)", "sd", "embedded", read_defaults(folder))
    if shapes_models is not None and hasattr(shapes_models, "build_random_shapes_sd_pipeline"):
        pipe = shapes_models.build_random_shapes_sd_pipeline()
    else:
        pipe = _tiny_random_sd_pipeline()
    defaults = {"width": 64, "height": 64, "num_inference_steps": 20, "guidance_scale": 5.0}
    label = "shapes (random stand-in, untrained: outputs are noise-like)"
    return LoadedPipeline(_finish(pipe, device, dtype), "shapes", label, "sd", "embedded", defaults)


def _tiny_random_sd_pipeline():
    """SD-architecture pipeline with random weights, used only if the Shapes module is absent."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64, norm_num_groups=8,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=64,
        intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
    ))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _load_folder(folder: Path, device, dtype, trust_pickle: bool = False) -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelLoadError(
            f"folder {str(folder)!r} is not a diffusers model (no model_index.json)",
            "pass a folder saved with save_pretrained, a .safetensors checkpoint, or a Hub id",
        )
    try:
        class_name = json.loads(index_file.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{index_file} is unreadable or has no _class_name", "re-save the model with save_pretrained") from exc
    cls = {"StableDiffusionPipeline": StableDiffusionPipeline, "StableDiffusionXLPipeline": StableDiffusionXLPipeline}.get(class_name)
    if cls is None:
        raise ModelLoadError(
            f"model {str(folder)!r} is a {class_name}, not a text-to-image Stable Diffusion model",
            "pass an SD 1.x/2.x or SDXL model",
        )
    kwargs = {"safety_checker": None, "requires_safety_checker": False} if cls is StableDiffusionPipeline else {}
    check_pickle_trust(folder, "model folder", trust_pickle, components=True)
    try:
        pipe = cls.from_pretrained(folder, local_files_only=True, dtype=dtype, use_safetensors=None if trust_pickle else True,
                                   **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load model folder {str(folder)!r}: {short_reason(exc, 200)}",
                             "check that the folder is complete (all component subfolders and weights)") from exc
    return LoadedPipeline(_finish(pipe, device, dtype), str(folder), f"{folder.name} (folder)", _family_of(pipe), "folder", read_defaults(folder))


def checkpoint_family(path: Path) -> str | None:
    """Guess ``sd`` / ``sdxl`` from a single-file checkpoint's keys (safetensors only)."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            keys = set(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ModelLoadError(f"checkpoint {str(path)!r} is not a readable safetensors file", "re-download or re-export it") from exc
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "sdxl"
    if any(k.startswith(("model.diffusion_model.", "cond_stage_model.")) for k in keys):
        return "sd"
    if any(k.startswith(("down_blocks.", "up_blocks.")) for k in keys):
        raise ModelLoadError(
            f"{str(path)!r} holds diffusers-format UNet weights, not a full single-file checkpoint",
            "pass the whole model folder instead",
        )
    return None


def _load_single_file(path: Path, device, dtype, config: str | None, trust_pickle: bool = False) -> LoadedPipeline:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    check_pickle_trust(path, "checkpoint", trust_pickle)

    family = checkpoint_family(path)
    if family is None and config is not None:
        family = "sdxl" if "xl" in str(config).lower() else "sd"
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config is not None:
        kwargs["config"] = config
        if Path(config).is_dir():
            kwargs["local_files_only"] = True
    try:
        pipe = cls.from_single_file(str(path), **kwargs)
    except Exception as exc:  # noqa: BLE001 - single-file loading raises many types
        if config is None and _is_hub_error(exc):
            raise ModelLoadError(
                f"cannot load {str(path)!r}: single-file loading needs the model's configuration and the Hub is unreachable",
                "pass --config with a local diffusers folder of the same architecture (e.g. an SD 1.5 or SDXL folder)",
            ) from exc
        raise ModelLoadError(f"cannot load checkpoint {str(path)!r}: {short_reason(exc, 200)}",
                             "check the file and that --config matches its architecture") from exc
    return LoadedPipeline(_finish(pipe, device, dtype), str(path), f"{path.name} (single file)", _family_of(pipe), "file", {})


def _load_hub(ref: str, device, dtype, trust_pickle: bool = False) -> LoadedPipeline:
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(ref, dtype=dtype, local_files_only=hub_offline(),
                                                 use_safetensors=None if trust_pickle else True)
    except Exception as exc:  # noqa: BLE001
        if _is_hub_error(exc):
            raise _unreachable(ref) from exc
        raise ModelLoadError(f"cannot load model {ref!r}: {short_reason(exc, 200)}",
                             "check the model id or pass a local folder") from exc
    return LoadedPipeline(_finish(pipe, device, dtype), ref, f"{ref} (hub)", _family_of(pipe), "hub", {})


def load_text_to_image(
    reference: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | None = None,
    trust_pickle: bool = False,
) -> LoadedPipeline:
    """Load an SD 1.x/2.x or SDXL text-to-image pipeline from any model reference (see module doc).

    ``trust_pickle`` allows pickled checkpoints (``--trust-pickle``); without it only safetensors load.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ref = (reference or "").strip()
    if ref.lower() in EMBEDDED_ALIASES:
        return _load_embedded(dev, dt)
    path = Path(ref).expanduser()
    if path.is_dir():
        return _load_folder(path, dev, dt, trust_pickle)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{ref!r} is a {path.suffix or 'suffix-less'} file, not a model checkpoint",
                                 "pass a .safetensors/.ckpt checkpoint, a diffusers folder, or a Hub id")
        return _load_single_file(path, dev, dt, config, trust_pickle)
    if reference_looks_like_path(ref, SINGLE_FILE_SUFFIXES):
        raise ModelLoadError(f"model path {ref!r} does not exist", "check the path, or pass a Hub id or --model shapes")
    if HUB_ID_RE.match(ref):
        return _load_hub(ref, dev, dt, trust_pickle)
    raise ModelLoadError(
        f"unknown model {ref!r}: not a local folder or file, and not a Hub id of the form org/name",
        "pass --model shapes, a diffusers folder, a .safetensors file, or a Hub id such as runwayml/stable-diffusion-v1-5",
    )


def pipeline_as(cls, pipe):
    """``pipe``'s components as a pipeline of class ``cls`` (diffusers' ``from_pipe``): nothing is
    copied or re-cast (``from_pipe`` alone would cast every module to float32, in place, and warn)."""
    import logging

    if isinstance(pipe, cls):
        return pipe
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        out = cls.from_pipe(pipe, dtype=pipe.unet.dtype)
    finally:
        logger.setLevel(level)
    out.set_progress_bar_config(disable=True)
    return out
