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

Video (:func:`load_text_to_video`): a base image model from any reference above plus a *motion
adapter* reference (``--adapter``), one of

* ``shapes`` (the default with ``--model shapes``): the embedded Shapes motion adapter
  (``assets/models/shapes-motion``; a random stand-in, labelled as such, until it is trained);
* a ``MotionAdapter`` folder (``config.json`` + weights) or a Hub id of one;
* a single motion-module file as people download them (``mm_sd_v15_v2.ckpt``,
  ``v3_sd15_mm.safetensors``...): original AnimateDiff or diffusers key layout, converted and sized
  from the weights themselves (widths, layers, mid block, frame limit); the attention heads (8 in
  every published adapter) and norm groups (32) cannot be read from weights, ``adapter_config``
  overrides them. Pickled files (``.ckpt``/``.pt``/``.bin``) are refused unless ``trust_pickle``,
  like every pickle (:mod:`attncraft.checkpoints`).

The adapter must fit the base UNet (same number of blocks, channel widths and layers per block); an
SD 1.x/2.x base gives a :class:`~attncraft.pipelines.text_to_video.TextToVideoPipeline`, an SDXL base
diffusers' ``AnimateDiffSDXLPipeline``. A folder saved from an AnimateDiff pipeline loads as it is.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attncraft.checkpoints import PICKLE_SUFFIXES, check_pickle_trust
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
    """``sd`` (1.x/2.x) or ``sdxl``; video models: ``animatediff`` or ``animatediff-sdxl``."""
    source: str
    """``embedded``, ``folder``, ``file`` or ``hub``."""
    defaults: dict[str, Any]
    adapter: str | None = None
    """Video models: the motion adapter reference (normalised like ``reference``)."""
    adapter_label: str | None = None

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


# --------------------------------------------------------------------------------------------------
# Video: motion adapters on image models
# --------------------------------------------------------------------------------------------------

ADAPTER_FILE_SUFFIXES = {".safetensors", *PICKLE_SUFFIXES}
VIDEO_PIPELINES = {"AnimateDiffPipeline": "animatediff", "TextToVideoPipeline": "animatediff",
                   "AnimateDiffSDXLPipeline": "animatediff-sdxl"}
ADAPTER_HEADS_DEFAULT = 8
"""Attention heads of every published AnimateDiff motion module (not recorded in the weights)."""
ADAPTER_GROUPS_DEFAULT = 32


@dataclass
class LoadedAdapter:
    adapter: Any
    reference: str
    label: str
    source: str
    folder: Path | None = None  # the adapter's own folder (where a motion text path file would sit)


def _embedded_adapter(dtype: torch.dtype) -> LoadedAdapter:
    from diffusers import MotionAdapter

    from attncraft.shapes import models as shapes_models

    folder = shapes_models.SHAPES_MOTION_DIR
    if shapes_models.trained_shapes_motion_available(folder):
        adapter = MotionAdapter.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
        return LoadedAdapter(adapter, "shapes", "shapes motion (embedded)", "embedded", folder=Path(folder))
    adapter = shapes_models.build_shapes_motion_adapter().to(dtype)
    label = "shapes motion (random stand-in, untrained: frames are independent images)"
    return LoadedAdapter(adapter, "shapes", label, "embedded")


def _json_class(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _not_an_adapter(ref: str, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{ref!r} is {what}, not a motion adapter",
        "pass the image model as --model and an AnimateDiff MotionAdapter (folder, Hub id or motion-module file) as --adapter",
    )


def _adapter_folder(folder: Path, dtype: torch.dtype, trust_pickle: bool) -> LoadedAdapter:
    from diffusers import MotionAdapter

    ref = str(folder)
    if (folder / "model_index.json").is_file():
        cls = _json_class(folder / "model_index.json") or "pipeline"
        if (folder / "motion_adapter" / "config.json").is_file():
            folder = folder / "motion_adapter"
        else:
            kind = "an image model" if cls in SUPPORTED_TEXT_TO_IMAGE else "a pipeline"
            raise _not_an_adapter(ref, f"{kind} folder ({cls})")
    cls = _json_class(folder / "config.json") if (folder / "config.json").is_file() else None
    if cls is None:
        raise ModelLoadError(f"folder {ref!r} holds no config.json of a MotionAdapter",
                             "pass a folder saved with MotionAdapter.save_pretrained, a motion-module file, or a Hub id")
    if cls != "MotionAdapter":
        raise _not_an_adapter(ref, f"a {cls} folder")
    check_pickle_trust(folder, "motion adapter folder", trust_pickle)
    try:
        adapter = MotionAdapter.from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                                use_safetensors=None if trust_pickle else True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load motion adapter folder {ref!r}: {short_reason(exc, 200)}",
                             "check that the folder is complete (config.json and its weights)") from exc
    return LoadedAdapter(adapter, ref, f"{Path(ref).name} (adapter folder)", "folder", folder=folder)


def read_state_dict(path: Path, trust_pickle: bool, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a pickled checkpoint when ``trust_pickle``."""
    check_pickle_trust(path, what, trust_pickle)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - trusted: objects beyond plain tensors are allowed
            data = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise ModelLoadError(f"the {what} {str(path)!r} is not a readable {path.suffix} checkpoint: {short_reason(exc, 120)}",
                             "re-download it, or pass a .safetensors file") from exc
    while isinstance(data, dict) and len(data) < 8 and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelLoadError(f"the {what} {str(path)!r} holds a {type(data).__name__}, not a state dict of tensors",
                             "pass a motion-module checkpoint (a dict of tensors)")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


_ORIGINAL_MARKERS = (".temporal_transformer.", ".attention_blocks.")


def motion_state_dict_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A motion-module state dict in diffusers' ``MotionAdapter`` key layout.

    Original AnimateDiff files (``...motion_modules.0.temporal_transformer.transformer_blocks.0.
    attention_blocks.0.to_q.weight``, ``norms.0``, ``ff_norm``, ``pos_encoder.pe``) are converted with
    diffusers' own single-file converter (their fixed sinusoidal tables are dropped: the adapter
    rebuilds them from ``motion_max_seq_length``); a ``module.`` prefix is removed.
    """
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(m in k for k in state for m in _ORIGINAL_MARKERS):
        return convert_animatediff_checkpoint_to_diffusers(state)
    return dict(state)


_MODULE_KEY = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.motion_modules\.(\d+)\.(.*)$")
_MID_KEY = re.compile(r"^mid_block\.motion_modules\.(\d+)\.(.*)$")
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.")


def _frame_limit(original: dict[str, torch.Tensor], converted: dict[str, torch.Tensor]) -> int | None:
    for state in (converted, original):
        for key, value in state.items():
            if key.endswith(("pos_embed.pe", "pos_encoder.pe")) and value.ndim == 3:
                return int(value.shape[1])
    return None


def infer_motion_adapter_config(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """``MotionAdapter`` kwargs read off a diffusers-layout motion state dict: widths (from each
    block's first ``proj_in``), motion layers per block, transformer layers per motion module, the
    mid block, the frame limit (from a stored sinusoidal table, else 32), a PIA ``conv_in``. Heads
    and norm groups are not in the weights: the published adapters' 8 and 32 are assumed."""
    down: dict[int, dict[int, set[int]]] = {}
    up: dict[int, set[int]] = {}
    mid: dict[int, set[int]] = {}
    widths: dict[int, int] = {}
    for key, value in state.items():
        if m := _MODULE_KEY.match(key):
            part, block, layer, rest = m[1], int(m[2]), int(m[3]), m[4]
            tb = _BLOCK_KEY.match(rest)
            if part == "down_blocks":
                down.setdefault(block, {}).setdefault(layer, set()).update({int(tb[1])} if tb else set())
                if layer == 0 and rest == "proj_in.weight":
                    widths[block] = int(value.shape[1])
            else:
                up.setdefault(block, set()).add(layer)
        elif m := _MID_KEY.match(key):
            tb = _BLOCK_KEY.match(m[2])
            mid.setdefault(int(m[1]), set()).update({int(tb[1])} if tb else set())
    if not down or sorted(down) != list(range(len(down))) or sorted(widths) != sorted(down):
        raise ValueError("no complete set of down-block motion modules")
    n = len(down)
    layers = [len(down[i]) for i in range(n)]
    if up and (sorted(up) != list(range(n)) or [len(up[n - 1 - i]) for i in range(n)] != [x + 1 for x in layers]):
        raise ValueError("the up-block motion modules do not mirror the down blocks")
    transformer_layers = [max(len(down[i][j]), 1) for i in range(n) for j in down[i]]
    cfg: dict[str, Any] = {
        "block_out_channels": tuple(widths[i] for i in range(n)),
        "motion_layers_per_block": layers[0] if len(set(layers)) == 1 else tuple(layers),
        "motion_transformer_layers_per_block": transformer_layers[0] if len(set(transformer_layers)) == 1 else 1,
        "use_motion_mid_block": bool(mid),
        "motion_mid_block_layers_per_block": max(len(mid), 1),
        "motion_transformer_layers_per_mid_block": max((len(v) for v in mid.values()), default=1),
        "motion_num_attention_heads": ADAPTER_HEADS_DEFAULT,
        "motion_norm_num_groups": ADAPTER_GROUPS_DEFAULT,
        "motion_max_seq_length": _frame_limit(original or {}, state) or 32,
    }
    if "conv_in.weight" in state:
        cfg["conv_in_channels"] = int(state["conv_in.weight"].shape[1])
    return cfg


def _config_override(config: str | os.PathLike | None) -> dict[str, Any]:
    if config is None:
        return {}
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"--adapter-config {str(config)!r} is not a readable MotionAdapter config.json",
                             "pass a MotionAdapter folder or its config.json") from exc
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if not k.startswith("_")}


def _image_checkpoint(keys: set[str]) -> bool:
    return any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
               for k in keys)


def _adapter_file(path: Path, dtype: torch.dtype, config: str | None, trust_pickle: bool) -> LoadedAdapter:
    from diffusers import MotionAdapter

    ref = str(path)
    if path.suffix.lower() not in ADAPTER_FILE_SUFFIXES:
        raise ModelLoadError(f"{ref!r} is a {path.suffix or 'suffix-less'} file, not a motion-module checkpoint",
                             "pass a .safetensors or .ckpt motion module, a MotionAdapter folder, or a Hub id")
    original = read_state_dict(path, trust_pickle, "motion adapter")
    keys = set(original)
    if not any("motion_modules." in k for k in keys):
        if _image_checkpoint(keys) or any(k.startswith(("down_blocks.", "conv_in.", "text_model.")) for k in keys):
            raise _not_an_adapter(ref, "an image-model checkpoint (it holds no motion modules)")
        raise ModelLoadError(f"{ref!r} holds no AnimateDiff motion modules", "pass a motion-module checkpoint")
    state = motion_state_dict_to_diffusers(original)
    try:
        cfg = infer_motion_adapter_config(state, original) | _config_override(config)
        adapter = MotionAdapter(**cfg)
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"cannot read the layout of the motion modules in {ref!r}: {short_reason(exc, 200)}",
                             "pass --adapter-config with the adapter's config.json") from exc
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("pos_embed.pe")]  # rebuilt from the frame limit
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ModelLoadError(
            f"the motion modules in {ref!r} do not match the adapter layout read from them "
            f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. {first})",
            "pass --adapter-config with the adapter's config.json",
        )
    return LoadedAdapter(adapter.to(dtype).eval(), ref, f"{path.name} (motion-module file)", "file")


def _adapter_hub(ref: str, dtype: torch.dtype, trust_pickle: bool) -> LoadedAdapter:
    from diffusers import MotionAdapter

    try:
        adapter = MotionAdapter.from_pretrained(ref, dtype=dtype, local_files_only=hub_offline(),
                                                use_safetensors=None if trust_pickle else True)
    except Exception as exc:  # noqa: BLE001
        if _is_hub_error(exc) or (hub_offline() and isinstance(exc, OSError)):  # offline: "no such file" = not cached
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub is unreachable"
            raise ModelLoadError(
                f"cannot load motion adapter {ref!r}: it is not in the local cache and {why}",
                "download it on a connected machine and pass its folder or motion-module file as --adapter",
            ) from exc
        raise ModelLoadError(f"cannot load motion adapter {ref!r}: {short_reason(exc, 200)}",
                             "check the adapter id, or pass a local folder or motion-module file") from exc
    return LoadedAdapter(adapter, ref, f"{ref} (hub)", "hub")


def load_motion_adapter(
    reference: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | None = None,
    trust_pickle: bool = False,
) -> LoadedAdapter:
    """Load a diffusers ``MotionAdapter`` from any adapter reference (see module doc)."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ref = (reference or "").strip()
    if ref.lower() in EMBEDDED_ALIASES:
        loaded = _embedded_adapter(dt)
    else:
        path = Path(ref).expanduser()
        if path.is_dir():
            loaded = _adapter_folder(path, dt, trust_pickle)
        elif path.is_file():
            loaded = _adapter_file(path, dt, config, trust_pickle)
        elif ref.startswith((".", "/", "~")) or path.suffix.lower() in ADAPTER_FILE_SUFFIXES or ref.count("/") > 1:
            raise ModelLoadError(f"motion adapter path {ref!r} does not exist", "check the path, or pass a Hub id or --adapter shapes")
        elif HUB_ID_RE.match(ref):
            loaded = _adapter_hub(ref, dt, trust_pickle)
        else:
            raise ModelLoadError(
                f"unknown motion adapter {ref!r}: not a local folder or file, and not a Hub id of the form org/name",
                "pass --adapter shapes, a MotionAdapter folder, a motion-module .safetensors file, or a Hub id "
                "such as guoyww/animatediff-motion-adapter-v1-5-2",
            )
    loaded.adapter.to(dev)
    return loaded


def check_adapter_fits(adapter, unet, adapter_label: str, model_label: str) -> None:
    """One line if the adapter's motion modules cannot sit in this UNet (blocks, widths, layers)."""
    a, u = adapter.config, unet.config
    widths_a, widths_u = tuple(a.block_out_channels), tuple(u.block_out_channels)
    layers_u = u.layers_per_block if isinstance(u.layers_per_block, int) else tuple(u.layers_per_block)
    layers_a = a.motion_layers_per_block if isinstance(a.motion_layers_per_block, int) else tuple(a.motion_layers_per_block)
    expand = (lambda v: (v,) * len(widths_u) if isinstance(v, int) else tuple(v))  # noqa: E731
    if widths_a != widths_u:
        raise ModelLoadError(
            f"motion adapter {adapter_label} has channel widths {widths_a}, but the UNet of {model_label} has {widths_u}",
            "pass an adapter made for this base (SD 1.5 adapters fit SD 1.x models, SDXL adapters SDXL, "
            "the shapes adapter the shapes model)",
        )
    if expand(layers_a) != expand(layers_u):
        raise ModelLoadError(
            f"motion adapter {adapter_label} has {layers_a} motion layers per block, but the UNet of {model_label} "
            f"has {layers_u} layers per block",
            "pass an adapter made for this base",
        )


def _video_pipeline_class(family: str):
    if family == "sdxl":
        from diffusers import AnimateDiffSDXLPipeline

        return AnimateDiffSDXLPipeline
    from attncraft.pipelines.text_to_video import TextToVideoPipeline

    return TextToVideoPipeline


def _load_video_folder(folder: Path, class_name: str, device, dtype, trust_pickle: bool) -> LoadedPipeline:
    family = "sdxl" if VIDEO_PIPELINES[class_name] == "animatediff-sdxl" else "sd"
    cls = _video_pipeline_class(family)
    check_pickle_trust(folder, "video model folder", trust_pickle, components=True)
    try:
        pipe = cls.from_pretrained(folder, local_files_only=True, dtype=dtype, use_safetensors=None if trust_pickle else True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot load video model folder {str(folder)!r}: {short_reason(exc, 200)}",
                             "check that the folder is complete (all component subfolders and weights)") from exc
    pipe = _finish(pipe, device, dtype)
    return LoadedPipeline(pipe, str(folder), f"{folder.name} (video folder)", VIDEO_PIPELINES[class_name], "folder",
                          read_defaults(folder), adapter=str(folder), adapter_label="(in the folder)")


def load_text_to_video(
    reference: str | None = None,
    adapter: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | None = None,
    adapter_config: str | None = None,
    trust_pickle: bool = False,
) -> LoadedPipeline:
    """Load a text-to-video pipeline: a base image model plus a motion adapter (see module doc).

    ``adapter`` defaults to the embedded Shapes motion adapter with the embedded base; any other
    base needs an adapter. Returns a :class:`LoadedPipeline` whose ``family`` is ``animatediff``
    (a :class:`~attncraft.pipelines.text_to_video.TextToVideoPipeline`) or ``animatediff-sdxl``.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    ref = (reference or "").strip()
    aref = (adapter or "").strip() or None
    path = Path(ref).expanduser() if ref else None
    if path is not None and path.is_dir() and (path / "model_index.json").is_file():
        class_name = _json_class(path / "model_index.json")
        if class_name in VIDEO_PIPELINES:
            if aref is not None:
                raise ModelLoadError(f"model folder {ref!r} is already a video model ({class_name}) with its own motion modules",
                                     "drop --adapter, or pass the base image model as --model")
            return _load_video_folder(path, class_name, dev, dt, trust_pickle)
    embedded_base = ref.lower() in EMBEDDED_ALIASES
    if aref is None and not embedded_base:
        raise ModelLoadError(
            f"model {ref!r} is an image model and no motion adapter was given",
            "pass --adapter with an AnimateDiff MotionAdapter, e.g. --adapter guoyww/animatediff-motion-adapter-v1-5-2 "
            "for SD 1.5, or a downloaded motion-module .safetensors file",
        )
    # the adapter first: a wrong adapter fails before the (larger) base model is read
    motion = load_motion_adapter(aref or "shapes", dev, dt, config=adapter_config, trust_pickle=trust_pickle)
    base = load_text_to_image(ref, device=dev, dtype=dt, config=config, trust_pickle=trust_pickle)
    image = base.pipeline
    check_adapter_fits(motion.adapter, image.unet, motion.label, base.label)
    cls = _video_pipeline_class(base.family)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    components = {k: v for k, v in image.components.items() if k in accepted}
    components.update(motion_adapter=motion.adapter, feature_extractor=None, image_encoder=None)
    try:
        pipe = cls(**components)
    except (ValueError, RuntimeError) as exc:  # widths agree but the modules still do not load
        raise ModelLoadError(f"motion adapter {motion.label} does not fit {base.label}: {short_reason(exc, 200)}",
                             "pass an adapter made for this base") from exc
    label = f"{base.label} + {motion.label}"
    adapter_label = motion.label
    from attncraft.video.motion_text_path import apply_text_path, has_text_path

    if has_text_path(motion.folder):
        # the adapter's trained cross-attention changes, on the motion UNet that from_unet2d copied from the
        # image UNet (the image pipeline is untouched)
        apply_text_path(pipe.unet, motion.folder)
        label, adapter_label = f"{label} + motion text path", f"{adapter_label} + motion text path"
    # UNetMotionModel.from_unet2d builds the motion UNet on the CPU while the other components sit on
    # the device, and a pipeline reports the device of its first accelerator component: move explicitly
    pipe = _finish(pipe.to(dev), dev, dt)
    defaults = dict(base.defaults)
    if motion.source == "embedded":
        from attncraft.shapes.models import SHAPES_MOTION_DIR

        defaults.update(read_defaults(SHAPES_MOTION_DIR))
    elif motion.source == "folder":
        defaults.update(read_defaults(motion.reference))
    family = "animatediff-sdxl" if base.family == "sdxl" else "animatediff"
    return LoadedPipeline(pipe, base.reference, label, family, base.source, defaults,
                          adapter=motion.reference, adapter_label=adapter_label)


def pipeline_as(cls, pipe, **components):
    """``pipe``'s components as a pipeline of class ``cls`` (diffusers' ``from_pipe``), with any of them
    replaced by ``components`` (e.g. ``unet=``): nothing is copied or re-cast (``from_pipe`` alone would
    cast every module, the ones shared with ``pipe`` too, to float32 in place, and warn)."""
    import logging

    if isinstance(pipe, cls) and not components:
        return pipe
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        out = cls.from_pipe(pipe, dtype=pipe.unet.dtype, **components)
    finally:
        logger.setLevel(level)
    out.set_progress_bar_config(disable=True)
    return out
