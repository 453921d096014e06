"""CLIP guidance for X-Mesh: loading a CLIP, the reference augmentations, and the batched loss.

Loading (:func:`load_clip`) accepts any transformers ``CLIPModel``: a local folder, a Hub id (only
when the Hub is reachable; ``HF_HUB_OFFLINE`` is honoured and the local cache is tried first), the
project's default "shapes CLIP" (``assets/models/shapes-clip/``), or a randomly initialised model
built from a config in code (``random:tiny``, ``random:test``, ``random:vit-b-32``). When no trained
default exists yet, the default is a tiny *random stand-in* and the returned label says so. Every
failure becomes a :class:`~attncraft.errors.ModelLoadError` with a fix.

Augmentations (spec §4.2), re-implemented on tensors (no torchvision dependency):

* ``RandomResizedCrop(S, scale=(s, s), ratio=(3/4, 4/3))`` with torchvision's sampling (10 tries,
  then the centre-crop fallback; with s = 1 that always gives the full image),
* then ``RandomPerspective(distortion_scale=0.5, p=0.8, fill=1)`` with torchvision's corner sampling
  and homography,
* then CLIP normalisation (OpenAI mean/std unless the model folder's preprocessor says otherwise).

Crop-resize and perspective are composed into **one** ``grid_sample`` per image (the reference
resamples twice; composing avoids a second bilinear blur and is otherwise the same warp), and pixels
that the perspective maps outside the crop get the fill colour. The reference fills with 1 (white),
its background; here the fill is the render's background colour (deviation: on a gray background a
white fill would put white wedges around every warped view, which the CLIP scores as content), so
the white default is unchanged bit for bit.
As in the reference, all views of one augmentation share the same random parameters (decision 4).

Loss (spec §4.3): ``L = -cos(mean_v E(aug_1(I)), t) - sum_{k<=4} cos(mean_v E(naug_k(I)), t)
- sum_{k<=4} cos(mean_v E(daug_k(I_geo)), t)`` with raw (unnormalised) embeddings averaged over views
(``--clipavg view``). The reference runs three backward passes that accumulate gradients; here all
9 x V images go through **one batched CLIP call** and one backward of the summed loss, which gives
the same gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from attncraft.checkpoints import check_pickle_trust
from attncraft.errors import InputError, ModelLoadError, short_reason
from attncraft.loading import hub_offline
from attncraft.validation import check_text, check_token_count

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

RANDOM_SIZES: dict[str, dict[str, Any]] = {
    # A ViT-B/32-shaped CLIP (text 512x12, vision 768x12, patch 32 at 224^2, projection 512).
    "vit-b-32": dict(text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
                     vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, image_size=224, patch_size=32), projection_dim=512),
    # The default stand-in: tiny towers, but 224^2 input and a 512-d embedding like ViT-B/32, so the
    # X-Mesh field (TDAM conditioned on 512 dims) has its MIT-30 architecture.
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
                 vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                             image_size=224, patch_size=32), projection_dim=512),
    # For unit tests: 32^2 input, 16 patches.
    "test": dict(text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
                 vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=32, patch_size=8), projection_dim=32),
}


def random_clip_config(size: str = "tiny"):
    """A ``CLIPConfig`` for a randomly initialised CLIP that uses the project's real tokenizer."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    if size not in RANDOM_SIZES:
        raise ModelLoadError(f"unknown random CLIP size {size!r}", f"pass random:{' or random:'.join(RANDOM_SIZES)}")
    spec = RANDOM_SIZES[size]
    text = CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                          max_position_embeddings=77, projection_dim=spec["projection_dim"], **spec["text"])
    vision = CLIPVisionConfig(projection_dim=spec["projection_dim"], **spec["vision"])
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=spec["projection_dim"])


def build_random_clip(size: str = "tiny", seed: int = 0):
    """A randomly initialised ``CLIPModel`` (deterministic for a given seed)."""
    from transformers import CLIPModel

    config = random_clip_config(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) == 2 and all(parts) and not ref.startswith((".", "~", "/")) and "\\" not in ref


def _folder_tokenizer(folder: Path):
    from attncraft.tokenizer import load_clip_tokenizer

    if (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if getattr(tok, "model_max_length", 0) > 10_000:
                tok.model_max_length = 77
            return tok
        except Exception:  # noqa: BLE001 - fall back to the shipped tokenizer
            pass
    return load_clip_tokenizer()


def _finish(model, device, dtype):
    model.eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype or torch.float32)


def _check_clip(model, ref: str):
    from transformers import CLIPModel

    if not isinstance(model, CLIPModel):
        raise ModelLoadError(f"{ref!r} is a {type(model).__name__}, not a CLIPModel",
                             "pass a transformers CLIP checkpoint (model_type 'clip')")


def default_clip_folder() -> Path | None:
    """The shipped shapes CLIP folder (``attncraft.shapes.models.SHAPES_CLIP_DIR``), if present."""
    try:
        from attncraft.shapes.models import SHAPES_CLIP_DIR
    except FileNotFoundError:  # no assets folder at all
        return None
    return SHAPES_CLIP_DIR if (SHAPES_CLIP_DIR / "config.json").is_file() else None


def load_clip(ref: str | None = None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
              trust_pickle: bool = False):
    """Load a CLIP; returns ``(CLIPModel, tokenizer, label)``. The model is frozen and in eval mode.

    ``ref``: ``None``/``"default"`` (the shapes CLIP in ``assets/models/shapes-clip``, else a tiny
    random stand-in), ``"random[:SIZE]"`` (``tiny``/``test``/``vit-b-32``), a local folder, or a Hub id.
    ``dtype`` is the weight dtype (default fp32; use autocast for mixed precision). Weights are read
    from safetensors; a folder that holds only a pickled checkpoint (``pytorch_model.bin``) is refused
    unless ``trust_pickle`` (:mod:`attncraft.checkpoints`).
    """
    from attncraft.tokenizer import load_clip_tokenizer

    ref_s = "default" if ref is None else str(ref).strip()
    if ref_s.lower() == "default":
        folder = default_clip_folder()
        if folder is None:
            model = build_random_clip("tiny")
            label = ("random stand-in (tiny CLIP with random weights; the shapes CLIP is not in "
                     "assets/models/shapes-clip yet, so scores are not meaningful)")
            return _finish(model, device, dtype), load_clip_tokenizer(), label
        from attncraft.shapes.models import shapes_clip_reads_meshes

        model, tok, _ = load_clip(str(folder), device, dtype, trust_pickle)
        note = "" if shapes_clip_reads_meshes(folder) else (
            "; not trained on mesh renders, so it cannot guide colour: install the weights of "
            "tools/gpu/train_shapes_clip_mesh.sh")
        return model, tok, f"shapes CLIP ({folder}{note})"
    if ref_s.lower().startswith("random"):
        size = ref_s.split(":", 1)[1] if ":" in ref_s else "tiny"
        model = build_random_clip(size)
        return _finish(model, device, dtype), load_clip_tokenizer(), f"random weights ({size} CLIP config; not a trained model)"
    from transformers import CLIPModel

    path = Path(ref_s).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a transformers model folder (no config.json)",
                                 "pass a folder written by CLIPModel.save_pretrained")
        check_pickle_trust(path, "CLIP folder", trust_pickle)
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True, use_safetensors=None if trust_pickle else True)
        except Exception as exc:  # noqa: BLE001
            msg = short_reason(exc)
            raise ModelLoadError(f"could not load a CLIPModel from {path} ({type(exc).__name__}: {msg})",
                                 "check that the folder holds a complete CLIP checkpoint (config + weights)") from exc
        _check_clip(model, ref_s)
        return _finish(model, device, dtype), _folder_tokenizer(path), f"{path}"
    if not _looks_like_hub_id(ref_s):
        raise ModelLoadError(f"CLIP folder not found: {ref_s}", "pass an existing folder, a Hub id like org/name, or 'default'")
    # A Hub id: the local cache first, then the network unless HF_HUB_OFFLINE is set.
    safe_only = None if trust_pickle else True
    try:
        model = CLIPModel.from_pretrained(ref_s, local_files_only=True, use_safetensors=safe_only)
    except Exception:  # noqa: BLE001 - not cached
        model = None
    if model is None:
        if hub_offline():
            raise ModelLoadError(f"CLIP {ref_s!r} is neither a local folder nor in the Hugging Face cache, and HF_HUB_OFFLINE is set",
                                 "pass an existing CLIPModel folder with --clip (download it where the Hub is reachable)")
        try:
            model = CLIPModel.from_pretrained(ref_s, use_safetensors=safe_only)
        except Exception as exc:  # noqa: BLE001
            msg = short_reason(exc)
            raise ModelLoadError(f"could not load CLIP {ref_s!r} from the Hugging Face Hub ({type(exc).__name__}: {msg})",
                                 "check the id and the network, or pass a local folder with --clip") from exc
    _check_clip(model, ref_s)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(ref_s, local_files_only=hub_offline())
        if getattr(tok, "model_max_length", 0) > 10_000:
            tok.model_max_length = 77
    except Exception:  # noqa: BLE001
        tok = load_clip_tokenizer()
    return _finish(model, device, dtype), tok, ref_s


def clip_normalization(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std: from the model folder's ``preprocessor_config.json`` if any, else OpenAI's."""
    folder = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    cfg = Path(folder) / "preprocessor_config.json" if folder else None
    if cfg is not None and cfg.is_file():
        import json

        try:
            data = json.loads(cfg.read_text())
            return tuple(data["image_mean"]), tuple(data["image_std"])
        except Exception:  # noqa: BLE001
            pass
    return OPENAI_MEAN, OPENAI_STD


# ----------------------------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------------------------


def sample_resized_crop(height: int, width: int, scale: tuple[float, float], generator: torch.Generator | None,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: returns (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_perspective(size: int, distortion: float, generator: torch.Generator | None):
    """torchvision ``RandomPerspective.get_params`` for a square image: (startpoints, endpoints)."""
    half = size // 2
    bound = int(distortion * half) + 1

    def r(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=generator))

    top_left = [r(0, bound), r(0, bound)]
    top_right = [r(size - bound, size), r(0, bound)]
    bot_right = [r(size - bound, size), r(size - bound, size)]
    bot_left = [r(0, bound), r(size - bound, size)]
    start = [[0, 0], [size - 1, 0], [size - 1, size - 1], [0, size - 1]]
    return start, [top_left, top_right, bot_right, bot_left]


def perspective_coeffs(src: list[list[int]], dst: list[list[int]]) -> torch.Tensor:
    """Homography coefficients (a..h) mapping ``src`` points to ``dst`` points (torchvision's solver)."""
    a = torch.zeros(8, 8, dtype=torch.float64)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = torch.tensor([x, y, 1, 0, 0, 0, -u * x, -u * y], dtype=torch.float64)
        a[2 * i + 1] = torch.tensor([0, 0, 0, x, y, 1, -v * x, -v * y], dtype=torch.float64)
    b = torch.tensor(dst, dtype=torch.float64).reshape(8)
    return torch.linalg.solve(a, b)


@dataclass
class AugmentSpec:
    """One augmentation: crop area fraction (1.0 = full image) and the source group it reads."""

    scale: float
    source: int  # index of the view group (0 = coloured renders, 1 = geometry renders)


@dataclass
class AugmentPlan:
    specs: list[AugmentSpec] = field(default_factory=list)

    @classmethod
    def xmesh(cls, n_augs: int = 1, n_normaugs: int = 4, n_geoaugs: int = 4, full_scale: float = 1.0,
              norm_scale: float = 0.4, geo_scale: float = 0.1, geoloss: bool = True) -> "AugmentPlan":
        specs = [AugmentSpec(full_scale, 0) for _ in range(n_augs)]
        specs += [AugmentSpec(norm_scale, 0) for _ in range(n_normaugs)]
        if geoloss:
            specs += [AugmentSpec(geo_scale, 1) for _ in range(n_geoaugs)]
        return cls(specs)

    @property
    def num_groups(self) -> int:
        return 1 + max((s.source for s in self.specs), default=0)


def augmentation_grids(plan: AugmentPlan, in_size: tuple[int, int], out_size: int, generator: torch.Generator | None,
                       perspective_p: float = 0.8, distortion: float = 0.5,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grids (A, S, S, 2) in ``grid_sample`` coordinates and validity masks (A, S, S).

    Composes crop-resize (to S) and perspective (in the S x S frame): for each output pixel centre the
    perspective homography gives a point in the resized crop, which maps linearly into the render.
    The random parameters are drawn on the CPU (a few scalars per augmentation); the grids are built
    on ``device`` in one vectorised pass.
    """
    height, width = in_size
    homographies, crops = [], []
    eye = torch.eye(3, dtype=torch.float64)
    for spec in plan.specs:
        top, left, h, w = sample_resized_crop(height, width, (spec.scale, spec.scale), generator)
        if float(torch.rand(1, generator=generator)) < perspective_p:
            start, end = sample_perspective(out_size, distortion, generator)
            # torchvision computes the output->input map from (endpoints -> startpoints).
            c = perspective_coeffs(end, start)
            homographies.append(torch.cat([c, c.new_ones(1)]).view(3, 3))
        else:
            homographies.append(eye)
        crops.append(torch.tensor([left, top, w / out_size, h / out_size], dtype=torch.float64))
    hom = torch.stack(homographies).to(device=device, dtype=torch.float32)  # (A, 3, 3)
    crop = torch.stack(crops).to(device=device, dtype=torch.float32)  # (A, 4)
    centres = torch.arange(out_size, device=device, dtype=torch.float32) + 0.5
    xx = centres.view(1, 1, -1)
    yy = centres.view(1, -1, 1)
    h_ = hom.view(-1, 9, 1, 1)
    den = h_[:, 6] * xx + h_[:, 7] * yy + h_[:, 8]
    xr = (h_[:, 0] * xx + h_[:, 1] * yy + h_[:, 2]) / den
    yr = (h_[:, 3] * xx + h_[:, 4] * yy + h_[:, 5]) / den
    valid = (xr >= 0) & (xr <= out_size) & (yr >= 0) & (yr <= out_size)
    c_ = crop.view(-1, 4, 1, 1)
    x_img = c_[:, 0] + xr * c_[:, 2]  # edge-aligned coordinates in the render
    y_img = c_[:, 1] + yr * c_[:, 3]
    grids = torch.stack([2.0 * x_img / width - 1.0, 2.0 * y_img / height - 1.0], dim=-1)
    return grids, valid


def fill_value(fill) -> float | torch.Tensor:
    """A fill colour as used by :func:`apply_augmentations`: a float when all channels are equal
    (white, grays: the arithmetic is then exactly the scalar one), else a (3, 1, 1) tensor."""
    if isinstance(fill, (int, float)):
        return float(fill)
    values = [float(v) for v in fill]
    if len(values) != 3:
        raise ValueError(f"a fill colour has 3 channels, got {len(values)}")
    if values[0] == values[1] == values[2]:
        return values[0]
    return torch.tensor(values).view(3, 1, 1)


def apply_augmentations(groups: torch.Tensor, plan: AugmentPlan, out_size: int, generator: torch.Generator | None,
                        fill=1.0, perspective_p: float = 0.8, distortion: float = 0.5,
                        offset: float | None = None) -> torch.Tensor:
    """``groups`` (G, V, 3, H, W) in [0, 1] -> (A * V, 3, S, S) augmented images, grouped by augmentation.

    Views are folded into channels, so one ``grid_sample`` per source group warps all views of all its
    augmentations with their shared grid. Invalid samples (outside the crop after the perspective)
    are sent far outside the image, where zero padding of ``image - fill`` gives exactly ``fill``.
    ``fill`` is a value or an RGB colour (the render's background). ``offset`` (internal) returns
    ``image - fill`` without adding ``fill`` back, for fused normalisation.
    """
    num_groups, views, channels, height, width = groups.shape
    grids, masks = augmentation_grids(plan, (height, width), out_size, generator, perspective_p, distortion,
                                      device=groups.device)
    grids = torch.where(masks[..., None], grids, torch.full_like(grids, 4.0)).to(groups.dtype)
    fill = fill_value(fill)
    if isinstance(fill, torch.Tensor):
        fill = fill.to(device=groups.device, dtype=groups.dtype)
    shifted = (groups - fill).flatten(1, 2)  # (G, V * 3, H, W)
    source = torch.tensor([s.source for s in plan.specs])
    parts = []
    for g in range(num_groups):
        idx = (source == g).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        inp = shifted[g : g + 1].expand(idx.numel(), -1, -1, -1)
        if inp.device.type != "cpu":  # a cheap copy on GPUs; avoids relying on stride-0 batches in the kernels
            inp = inp.contiguous()
        parts.append((idx, F.grid_sample(inp, grids[idx.to(grids.device)], mode="bilinear", padding_mode="zeros",
                                         align_corners=False)))
    order = torch.cat([i for i, _ in parts])
    out = parts[0][1] if len(parts) == 1 else torch.cat([p for _, p in parts])
    if not torch.equal(order, torch.arange(len(order))):  # specs not grouped by source: restore their order
        out = out[torch.argsort(order).to(groups.device)]
    out = out.reshape(len(plan.specs) * views, channels, out_size, out_size)
    return out if offset is not None else out + fill


# ----------------------------------------------------------------------------------------------
# Encoding and the loss
# ----------------------------------------------------------------------------------------------


def _patchify_forward(conv: torch.nn.Conv2d):
    """A ``forward`` for a stride == kernel, unpadded patch-embedding conv, as one matmul.

    Mathematically identical to the convolution; on CPU its backward is several times faster than
    oneDNN's convolution backward (which dominated a CPU iteration). Installed as an instance
    attribute, so the module, its parameters and its state-dict keys are unchanged.
    """
    p = conv.kernel_size[0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        gh, gw = h // p, w // p
        x = x[:, :, : gh * p, : gw * p]
        patches = x.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c * p * p)
        out = patches @ conv.weight.reshape(conv.out_channels, -1).t()
        if conv.bias is not None:
            out = out + conv.bias
        return out.transpose(1, 2).reshape(n, conv.out_channels, gh, gw)

    return forward


def _speed_up_patch_embedding(model) -> None:
    conv = getattr(getattr(getattr(model, "vision_model", None), "embeddings", None), "patch_embedding", None)
    if (isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == conv.stride and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.padding in ((0, 0), 0, "valid") and conv.groups == 1 and conv.dilation == (1, 1)):
        conv.forward = _patchify_forward(conv)


class ClipGuide:
    """A frozen CLIP with the helpers the optimisation and the metrics need."""

    def __init__(self, model, tokenizer, label: str = "", autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.label = label
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype if autocast_dtype not in (None, torch.float32) else None
        self.image_size = int(model.config.vision_config.image_size)
        self.embed_dim = int(model.config.projection_dim)
        mean, std = clip_normalization(model)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}
        if self.device.type == "cpu":
            _speed_up_patch_embedding(model)

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def tokenize(self, prompt: str) -> dict[str, torch.Tensor]:
        text = " ".join(check_text("prompt", prompt, allow_empty=True).split())
        if not text:
            raise InputError("the prompt is empty", 'pass a text prompt, e.g. "a wooden chair"')
        max_len = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77), 77,
                      int(self.model.config.text_config.max_position_embeddings))
        check_token_count(self.tokenizer, text, "prompt", max_length=max_len)  # counted as everywhere else
        enc = self.tokenizer([text], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"].to(self.device), "attention_mask": enc["attention_mask"].to(self.device)}

    @torch.no_grad()
    def encode_text(self, prompt: str) -> torch.Tensor:
        """Raw (unnormalised) projected text embedding (1, D) in fp32, like ``encode_text``."""
        key = " ".join(str(prompt).split())
        if key not in self._text_cache:
            tokens = self.tokenize(prompt)
            with self._autocast():
                pooled = self.model.text_model(**tokens).pooler_output
                emb = self.model.text_projection(pooled)
            self._text_cache[key] = emb.float()
        return self._text_cache[key]

    def encode_images(self, images: torch.Tensor, offset=0.0) -> torch.Tensor:
        """(N, 3, S, S) images in [0, 1] -> raw projected embeddings (N, D) in fp32 (differentiable).

        ``offset``: the images are given as ``image - offset`` (saves one full pass in the loss); a
        value or a (3, 1, 1) per-channel tensor.
        """
        inv_std = (1.0 / self.std).to(images.dtype)
        if isinstance(offset, torch.Tensor):
            offset = offset.to(device=self.mean.device, dtype=self.mean.dtype).view(1, 3, 1, 1)
        x = torch.addcmul(((offset - self.mean) / self.std).to(images.dtype), images, inv_std)
        with self._autocast():
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            emb = self.model.visual_projection(pooled)
        return emb.float()

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == self.image_size and images.shape[-2] == self.image_size:
            return images
        return F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False, antialias=True)

    @torch.no_grad()
    def view_scores(self, images: torch.Tensor, text: torch.Tensor, normalize_images: bool = True,
                    batch_size: int = 64) -> torch.Tensor:
        """Cosine similarity (N,) of each image (N, 3, H, W) in [0, 1] with ``text`` (both L2-normalised).

        ``normalize_images=False`` skips the mean/std normalisation (the reference ITS quirk, spec bug 5).
        """
        out = []
        t = F.normalize(text.float(), dim=-1)
        for chunk in images.split(batch_size):
            chunk = self.resize(chunk.to(self.device, torch.float32))
            if not normalize_images:
                with self._autocast():
                    emb = self.model.visual_projection(self.model.vision_model(pixel_values=chunk).pooler_output).float()
            else:
                emb = self.encode_images(chunk)
            out.append((F.normalize(emb, dim=-1) @ t.T).squeeze(-1))
        return torch.cat(out)


@dataclass
class GuidanceLoss:
    loss: torch.Tensor  # the summed loss to minimise
    similarities: torch.Tensor  # (A,) cosine per augmentation (detached)

    @property
    def score(self) -> float:
        """The logged training score: cos of the first (full-view) augmentation, i.e. -L1."""
        return float(self.similarities[0])


def guidance_loss(guide: ClipGuide, groups: torch.Tensor, text: torch.Tensor, plan: AugmentPlan,
                  generator: torch.Generator | None, perspective_p: float = 0.8, fill=1.0) -> GuidanceLoss:
    """The X-Mesh loss for ``groups`` (G, V, 3, H, W) of renders: ONE batched CLIP call for all A x V images.

    ``fill``: the perspective fill, the renders' background colour (white in the reference).
    """
    views = groups.shape[1]
    fill = fill_value(fill)
    shifted = apply_augmentations(groups, plan, guide.image_size, generator, fill=fill, perspective_p=perspective_p,
                                  offset=1.0)
    emb = guide.encode_images(shifted, offset=fill).view(len(plan.specs), views, -1).mean(dim=1)  # view-averaged
    cos = F.cosine_similarity(emb, text.to(emb.dtype).expand_as(emb), dim=-1)
    return GuidanceLoss(-cos.sum(), cos.detach())
