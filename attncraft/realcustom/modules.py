"""The trainable parts of RealCustom and their checkpoint format.

* :class:`VisualProjector` - image-encoder hidden states ``(B, n_i, c_enc)`` -> image features
  ``f_ci`` of the UNet's cross-attention width ``(B, n_i, width)`` (LayerNorm, two-layer GELU MLP,
  LayerNorm). The paper feeds CLIP features straight into its visual projections; a projector lets
  any encoder (CLIP, SigLIP, DINOv2) serve any UNet, as the official release does with its own
  (SigLIP+DINOv2-specific) ``ProjectorHighResMinAttn``.
* :class:`AdaptiveScoringModule` - the paper's Eqs. 5-10: attention pooling of the text states
  (``A_t = softmax(f_ct W_at)``, ``C_t = A_t^T f_ct``) and of the (masked) latent
  (``A_v = softmax(z_t W_av)``, ``C_v = A_v^T z_t``), two two-layer score networks on each image
  feature concatenated with a context, the timestep-aware fusion
  ``S = (1 - alpha_bar_t) S_t + alpha_bar_t S_v``, a softmax over the ``n_i`` features;
  :func:`reweight_and_select` then applies ``f <- f * (1 + S)`` and keeps the top
  ``floor(gamma_num * n_i)`` features by ``S``.
* :class:`VisualKV` - per cross-attention layer, ``to_k_vision`` / ``to_v_vision``:
  ``Linear(width -> inner_dim)`` without bias, as in the release.
* :class:`RealCustomAdapter` holds them, keyed by the UNet's layer names, with its
  :class:`RealCustomConfig`.

Checkpoints (:func:`save_adapter`, :func:`load_adapter`) are one safetensors file whose metadata
holds the config as JSON, so a checkpoint describes itself (widths, layers, image encoder and its
hidden-state index, recommended sampling settings). Loading is strict: missing and unexpected keys
are reported by name and a tensor of the wrong shape names its key (the release loads its weights
with ``strict=False``, which hides both); :meth:`RealCustomAdapter.check_unet` refuses a checkpoint
made for a UNet of another width or with other cross-attention layers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attncraft.assets import models_dir
from attncraft.errors import ModelLoadError, TechniqueError

CHECKPOINT_NAME = "realcustom.safetensors"
METADATA_KEY = "attncraft.realcustom"
FORMAT_VERSION = 1
SHAPES_ADAPTER_DIR: Path = models_dir() / "shapes-realcustom"
"""Where the RealCustom parts trained for Shapes SD are shipped."""


def layer_key(name: str) -> str:
    """A UNet layer path as a ``ModuleDict`` key (dots are not allowed there)."""
    return name.replace(".", "-")


@dataclass
class RealCustomConfig:
    """Everything that fixes the shapes of the trainable parts, plus how they were meant to be used."""

    feature_dim: int
    """Hidden size of the image encoder's states."""
    width: int
    """The UNet's ``cross_attention_dim`` (= the width of its text states)."""
    layers: dict[str, int]
    """Cross-attention layer path -> inner dim (heads x head dim) of its visual projections."""
    latent_channels: int = 4
    scoring: bool = True
    scoring_hidden: int = 256
    projector_hidden: int | None = None
    encoder: str = "shapes"
    """Image encoder reference: ``shapes`` (the Shapes CLIP vision tower), a folder or a Hub id."""
    encoder_layer: int = -2
    """Index into the encoder's ``hidden_states`` (-2: the penultimate layer)."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Recommended sampling settings (``image_guidance_scale``, ``gamma_scope``, ...)."""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # key order kept: the layers in the UNet's order

    @classmethod
    def from_json(cls, text: str) -> RealCustomConfig:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class VisualProjector(nn.Module):
    """Encoder hidden states -> image features of the UNet's cross-attention width."""

    def __init__(self, feature_dim: int, width: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or width
        self.norm_in = nn.LayerNorm(feature_dim)
        self.fc1 = nn.Linear(feature_dim, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.norm_out = nn.LayerNorm(width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.fc2(F.gelu(self.fc1(self.norm_in(hidden_states)))))


def _score_net(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))


@dataclass
class Scores:
    """Output of the scoring module: fused scores (softmax over features) and the two raw scores."""

    scores: torch.Tensor
    """(B, n_i), each row sums to 1."""
    textual: torch.Tensor
    visual: torch.Tensor


class AdaptiveScoringModule(nn.Module):
    """The paper's adaptive scoring module (Eqs. 5-9), on projected image features."""

    def __init__(self, feature_dim: int, text_dim: int, latent_channels: int = 4, hidden: int = 256):
        super().__init__()
        self.text_pool = nn.Linear(text_dim, 1)  # W_at
        self.latent_pool = nn.Linear(latent_channels, 1)  # W_av
        self.text_score = _score_net(feature_dim + text_dim, hidden)
        self.visual_score = _score_net(feature_dim + latent_channels, hidden)

    def contexts(self, text: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """C_textual (B, c_t) and C_visual (B, c_z): attention pooling over tokens / latent positions."""
        a_t = self.text_pool(text).softmax(dim=1)  # (B, n_t, 1)
        z = latents.flatten(2).transpose(1, 2)  # (B, n_z, c_z)
        a_v = self.latent_pool(z).softmax(dim=1)
        return (a_t * text).sum(dim=1), (a_v * z).sum(dim=1)

    def forward(self, features: torch.Tensor, text: torch.Tensor, latents: torch.Tensor,
                alpha_bar: torch.Tensor) -> Scores:
        """``features`` (B, n_i, D), ``text`` (B, n_t, c_t), ``latents`` (B, c_z, h, w) (already
        multiplied by the mask), ``alpha_bar`` (B,) or a number: the cumulative alpha of the step."""
        c_t, c_v = self.contexts(text.to(features.dtype), latents.to(features.dtype))
        n = features.shape[1]
        s_t = self.text_score(torch.cat([features, c_t[:, None].expand(-1, n, -1)], dim=-1)).squeeze(-1)
        s_v = self.visual_score(torch.cat([features, c_v[:, None].expand(-1, n, -1)], dim=-1)).squeeze(-1)
        a = torch.as_tensor(alpha_bar, dtype=features.dtype, device=features.device).reshape(-1, 1)
        fused = (1.0 - a) * s_t + a * s_v
        return Scores(fused.softmax(dim=-1), s_t, s_v)


def kept_count(num_features: int, gamma_num: float) -> int:
    """``floor(gamma_num * n_i)`` features, at least one."""
    return max(1, min(num_features, math.floor(gamma_num * num_features + 1e-9)))


def reweight_and_select(scores: torch.Tensor, gamma_num: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``1 + S`` of the kept features and their indices (both (B, k), indices ascending).

    The features themselves are not gathered here: the visual projections are linear without bias,
    so ``W (f_j (1 + S_j)) = (1 + S_j) W f_j`` and the hooks apply the weights to keys and values
    projected once per image (:class:`~attncraft.attention_processors.realcustom.VisualTokens`).
    """
    k = kept_count(scores.shape[-1], gamma_num)
    index = scores.topk(k, dim=-1).indices.sort(dim=-1).values
    return 1.0 + scores.gather(-1, index), index


class VisualKV(nn.Module):
    """The visual key/value projections of one cross-attention layer (no bias, as in the release)."""

    def __init__(self, width: int, inner_dim: int):
        super().__init__()
        self.to_k_vision = nn.Linear(width, inner_dim, bias=False)
        self.to_v_vision = nn.Linear(width, inner_dim, bias=False)


def cross_attention_layers(unet: nn.Module) -> dict[str, int]:
    """Cross-attention layer path -> inner dim of its keys, for every cross-attention layer."""
    from attncraft.attention_processors.layers import attention_modules, discover_layers

    modules = attention_modules(unet)
    return {name: int(modules[name].to_k.out_features) for name, info in discover_layers(unet).items() if info.is_cross}


class RealCustomAdapter(nn.Module):
    """Projector, optional scoring module and per-layer visual K/V (see the module docstring)."""

    def __init__(self, config: RealCustomConfig):
        super().__init__()
        self.config = config
        self.projector = VisualProjector(config.feature_dim, config.width, config.projector_hidden)
        self.scoring = (AdaptiveScoringModule(config.width, config.width, config.latent_channels, config.scoring_hidden)
                        if config.scoring else None)
        self.visual = nn.ModuleDict({layer_key(n): VisualKV(config.width, d) for n, d in config.layers.items()})

    @classmethod
    def from_unet(cls, unet: nn.Module, feature_dim: int, *, encoder: str = "shapes", encoder_layer: int = -2,
                  scoring: bool = True, scoring_hidden: int = 256, init: str = "text", seed: int = 0) -> RealCustomAdapter:
        """A fresh adapter for ``unet``'s cross-attention layers.

        ``init="text"`` copies each layer's text ``to_k``/``to_v`` into its visual projections (as
        IP-Adapter does), ``init="zero_value"`` copies ``to_k`` and zeroes ``to_v_vision`` so that the
        untrained branch adds exactly nothing, ``init="random"`` leaves PyTorch's initialisation.
        """
        if init not in ("text", "zero_value", "random"):
            raise ValueError(f"unknown init {init!r}: text, zero_value or random")
        config = RealCustomConfig(
            feature_dim=int(feature_dim), width=int(unet.config.cross_attention_dim), layers=cross_attention_layers(unet),
            scoring=scoring, scoring_hidden=scoring_hidden, encoder=encoder, encoder_layer=encoder_layer,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapter = cls(config)
        if init != "random":
            from attncraft.attention_processors.layers import attention_modules

            modules = attention_modules(unet)
            with torch.no_grad():
                for name in config.layers:
                    kv = adapter.kv(name)
                    kv.to_k_vision.weight.copy_(modules[name].to_k.weight.float())
                    if init == "text":
                        kv.to_v_vision.weight.copy_(modules[name].to_v.weight.float())
                    else:
                        kv.to_v_vision.weight.zero_()
        return adapter

    @property
    def layer_names(self) -> list[str]:
        return list(self.config.layers)

    def kv(self, layer_name: str) -> VisualKV:
        return self.visual[layer_key(layer_name)]

    def project(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projector(hidden_states.to(self.projector.fc1.weight.dtype))

    def check_unet(self, unet: nn.Module, what: str = "the RealCustom checkpoint") -> None:
        """Refuse a UNet this adapter was not made for (another width or other layers), in one line."""
        width = int(unet.config.cross_attention_dim) if not isinstance(unet.config.cross_attention_dim, (list, tuple)) else None
        if width != self.config.width:
            raise TechniqueError(
                f"{what} was made for a UNet with cross-attention width {self.config.width}; this UNet has "
                f"{unet.config.cross_attention_dim}",
                "pass a RealCustom checkpoint trained for this model (or train one: python -m attncraft.realcustom.training)",
            )
        have = cross_attention_layers(unet)
        missing = [n for n in self.config.layers if n not in have]
        wrong = [f"{n} ({self.config.layers[n]} vs {have[n]})" for n in self.config.layers if n in have and have[n] != self.config.layers[n]]
        extra = [n for n in have if n not in self.config.layers]
        if missing or wrong or extra:
            found = _listing(("of its layers are not in this UNet", missing),
                             ("cross-attention layers of this UNet are not in it", extra), ("inner widths differ", wrong))
            raise TechniqueError(f"{what} does not fit this UNet: {found}", "pass a RealCustom checkpoint trained for this model")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _first(names: list[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _listing(*groups: tuple[str, list[str]]) -> str:
    """``"2 missing keys (a, b); 1 unexpected keys (c)"`` for the non-empty groups."""
    return "; ".join(f"{len(names)} {label} ({_first(names)})" for label, names in groups if names)


# ------------------------------------------------------------------------------------------- files
def checkpoint_file(path: str | Path) -> Path:
    """The safetensors file of a checkpoint given as the file itself or its folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    return path


def save_adapter(adapter: RealCustomAdapter, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``adapter`` as one safetensors file (``path`` or ``path/realcustom.safetensors`` for a
    folder), with its config in the metadata; atomic (temporary name, then rename)."""
    from safetensors.torch import save_file

    from attncraft.outputs import atomic_path

    path = Path(path)
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        path = path / CHECKPOINT_NAME
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in adapter.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: adapter.config.to_json(), "format": "pt"})
    return path


def read_config(path: str | Path) -> RealCustomConfig:
    """The config stored in a checkpoint's metadata (one line errors for non-checkpoints)."""
    from safetensors import safe_open

    file = checkpoint_file(path)
    if not file.is_file():
        raise ModelLoadError(f"RealCustom checkpoint {str(file)!r} does not exist",
                             "pass the realcustom.safetensors file or its folder (--adapter)")
    try:
        with safe_open(str(file), "pt") as handle:
            meta = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise ModelLoadError(f"{str(file)!r} is not a readable safetensors file", "re-download or re-train it") from exc
    if METADATA_KEY not in meta:
        raise ModelLoadError(f"{str(file)!r} is not a RealCustom checkpoint (no {METADATA_KEY} metadata)",
                             "pass a checkpoint written by attncraft's RealCustom training")
    try:
        return RealCustomConfig.from_json(meta[METADATA_KEY])
    except (ValueError, TypeError) as exc:
        raise ModelLoadError(f"the config in {str(file)!r} is unreadable ({exc})", "re-train or re-save it") from exc


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` that names missing/unexpected keys and wrong shapes."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ModelLoadError(f"{what} does not match its config: {_listing(('missing keys', missing), ('unexpected keys', unexpected))}",
                             "the file is damaged or was written by another version; re-train or re-save it")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise ModelLoadError(f"{what} has tensors of the wrong shape: {_first(wrong)}", "re-train or re-save it")
    module.load_state_dict(state, strict=True)


def load_adapter(path: str | Path, unet: nn.Module | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> RealCustomAdapter:
    """Load a checkpoint strictly; with ``unet``, also check that it fits that UNet."""
    from safetensors.torch import load_file

    file = checkpoint_file(path)
    config = read_config(file)
    if config.format_version > FORMAT_VERSION:
        raise ModelLoadError(f"{str(file)!r} has format version {config.format_version}; this attncraft reads {FORMAT_VERSION}",
                             "update attncraft")
    adapter = RealCustomAdapter(config)
    load_state_strict(adapter, load_file(str(file)), f"RealCustom checkpoint {str(file)!r}")
    if unet is not None:
        adapter.check_unet(unet, what=f"RealCustom checkpoint {str(file)!r}")
    return adapter.to(device=device, dtype=dtype).eval().requires_grad_(False)
