"""RealCustom's attention hooks: masked visual cross-attention, the word-map reader, the adaptive mask.

Three pieces, used together by :mod:`attncraft.pipelines.realcustom` and usable on their own:

* :class:`RealCustomVisualAttention` (an ``edit_output`` technique on every cross-attention layer):
  for the rows of the batch given by its :class:`VisualCondition` s it adds the visual branch of the
  paper's Eq. 12 to the text attention output, before ``to_out``::

      out = softmax(Q K^T / sqrt(d)) V  +  softmax(Q K_i^T / sqrt(d)) V_i  *  M

  ``K_i``/``V_i`` are the layer's ``to_k_vision``/``to_v_vision`` of the subject's (selected,
  re-weighted) image features and ``M`` the influence mask resized bilinearly to the layer's
  resolution. The text branch keeps the fused kernel: the technique reads no map. Rows without a
  condition are untouched, and a zero mask adds exactly zero, so the layer's output is then the
  plain text-conditioned output bit for bit.
* :class:`WordMapReader` (a reader of the same layers): the cross-attention of the real word's
  tokens, on the rows it is pointed at, averaged over heads (all or chosen), summed over the word's
  tokens, averaged over layers after resizing each to the largest map (bilinear). It computes the
  maps of its rows only (not of the other rows of the batch), after the UNet call, batched across
  layers with the core's :class:`~.deferred_maps.DeferredMaps`: the maps of the text-only guidance
  branch come out of the very UNet call that also runs the other branches.
* :func:`adaptive_mask` - top-k of the aggregated map by ``gamma_scope`` and the normalisation
  (``max``: the paper's Eq. 11 ``M / max M``; ``binary``; ``minmax``).

Keys and values of the image features are projected once per image and layer and cached in
:class:`VisualTokens`: the projections are linear without bias, so the scoring module's weights
``1 + S`` and its top-``gamma_num`` selection are applied to the projected keys/values
(``W (f (1 + S)) = (1 + S) W f``), the same numbers as projecting the re-weighted features.

Host work per layer and UNet call (what an eager, launch-bound UNet pays for): without a selection
(release guidance) the keys/values come from that cache already split into heads and cast, and the
branch is one attention call, one product by the mask (resized once per resolution and condition,
the pipeline keeping its condition while the mask is reused) and one in-place addition into the
output; with the scoring module's selection, the keys and values of all the layers are gathered,
re-weighted and cast together once per call (one gather, one product on their packed copy; each
layer takes a view). Same operations on the same values as doing each
step per layer, so the same bits (``tests/realcustom/test_realcustom_host_work.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attncraft.attention_processors.backends import sdpa
from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.deferred_maps import DeferredMaps, attention_scores
from attncraft.attention_processors.selection import CROSS_ATTENTION, LayerSelector, select_layers
from attncraft.attention_processors.technique import EDIT_ORDER, OBSERVE_ORDER, AttentionTechnique
from attncraft.errors import InputError, TechniqueError

MASK_MODES = ("max", "binary", "minmax")


# ------------------------------------------------------------------------------------- the word
def word_token_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions of ``word``'s tokens in the tokenised ``prompt`` (start token = position 0).

    The first whole-word, case-insensitive occurrence; its span is the difference between the
    tokenised prefix and the tokenised prefix plus the word (as the release does). One-line errors
    for a word that is not in the prompt or that falls beyond what the text encoder reads.
    """
    word = (word or "").strip()
    if not word:
        raise InputError("the subject word is empty", 'pass --word, a word of the prompt, e.g. --word star')
    match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, flags=re.IGNORECASE)
    if match is None:
        raise InputError(f"the word {word!r} is not in the prompt {prompt!r}",
                         "pass a --word that appears in the prompt as a whole word")
    start = len(tokenizer(prompt[:match.start()], truncation=False).input_ids) - 1
    end = len(tokenizer(prompt[:match.end()], truncation=False).input_ids) - 1
    limit = int(tokenizer.model_max_length) - 1
    if end <= start:
        raise InputError(f"the word {word!r} gives no tokens", "pass another --word")
    if end > limit:
        raise InputError(f"the word {word!r} falls beyond the {limit - 1} tokens the text encoder reads",
                         "shorten the prompt before the word")
    return list(range(start, end))


def token_weights(indices: Sequence[Sequence[int]], length: int = 77, device=None) -> torch.Tensor:
    """(batch, length) 0/1 weights of each row's word tokens."""
    w = torch.zeros(len(indices), length, device=device)
    for row, idx in enumerate(indices):
        w[row, list(idx)] = 1.0
    return w


# ------------------------------------------------------------------------------------- the mask
def adaptive_mask(word_map: torch.Tensor, gamma_scope: float = 0.25, mode: str = "max") -> torch.Tensor:
    """(b, H, W) aggregated word map -> (b, 1, H, W) influence mask.

    Keeps the ``floor(gamma_scope * H * W)`` largest values of each map and zeroes the rest; then
    ``max`` divides by the largest kept value (Eq. 11, values in (0, 1], maximum exactly 1),
    ``binary`` sets the kept values to 1, ``minmax`` min-max normalises the map first (release
    option). ``gamma_scope = 0`` gives a zero mask.
    """
    if mode not in MASK_MODES:
        raise InputError(f"unknown mask mode {mode!r}", f"pass one of {', '.join(MASK_MODES)}")
    if not 0.0 <= float(gamma_scope) <= 1.0:
        raise InputError(f"gamma_scope must be between 0 and 1, got {gamma_scope}", "pass e.g. 0.25")
    b, h, w = word_map.shape
    flat = word_map.reshape(b, h * w).float()
    k = math.floor(float(gamma_scope) * h * w + 1e-9)
    out = torch.zeros_like(flat)
    if k > 0:
        if mode == "minmax":
            lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
            flat = (flat - lo) / (hi - lo).clamp_min(1e-12)
        index = flat.topk(k, dim=1).indices
        if mode == "binary":
            out.scatter_(1, index, 1.0)
        else:
            kept = flat.gather(1, index)
            if mode == "max":
                kept = kept / kept.amax(1, keepdim=True).clamp_min(torch.finfo(kept.dtype).tiny)
            out.scatter_(1, index, kept)
    return out.view(b, 1, h, w)


def resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(b, 1, H, W) -> (b, h*w, 1) at a layer's resolution (bilinear, as the release)."""
    if tuple(mask.shape[-2:]) != tuple(hw):
        mask = F.interpolate(mask, size=tuple(hw), mode="bilinear", align_corners=False)
    return mask.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- visual cross-attention
class VisualTokens:
    """The (projected) image features of a batch of rows, with their per-layer keys/values cached.

    :meth:`keys_values` gives a layer's ``(rows, tokens, inner)`` keys and values;
    :meth:`head_keys_values` the same already split into heads ``(rows, heads, tokens, head_dim)``
    and cast to the attention's dtype (views of the cached projections, made once per layer and
    run instead of once per UNet call); :meth:`packed_keys_values` the keys and values of all the
    adapter's layers side by side, so that a per-call selection is one gather and one product.
    """

    def __init__(self, features: torch.Tensor, cache: bool = True):
        self.features = features
        self.cache = cache
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._heads: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._packed: dict[int, tuple] = {}

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def keys_values(self, name: str, kv) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._kv.get(name)
        if found is None:
            f = self.features.to(kv.to_k_vision.weight.dtype)
            found = (kv.to_k_vision(f), kv.to_v_vision(f))
            if self.cache:
                self._kv[name] = found
        return found

    def head_keys_values(self, name: str, adapter, heads: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of layer ``name`` as ``(rows, heads, tokens, head_dim)`` in ``dtype``."""
        key = (name, heads, dtype)
        found = self._heads.get(key)
        if found is None:
            k, v = self.keys_values(name, adapter.kv(name))
            b, n = k.shape[0], k.shape[1]
            found = (k.to(dtype).view(b, n, heads, -1).transpose(1, 2), v.to(dtype).view(b, n, heads, -1).transpose(1, 2))
            if self.cache:
                self._heads[key] = found
        return found

    def packed_keys_values(self, adapter) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """Keys and values of every layer of ``adapter`` side by side, ``(rows, tokens, channels)``,
        and each layer's ``(first channel, 2 inner)`` there (its keys, then its values), so that a
        selection of tokens is one gather and one product for all the layers of a call."""
        found = self._packed.get(id(adapter))
        if found is None or found[0] is not adapter:
            offsets, pieces, start = {}, [], 0
            f = None
            for name in adapter.layer_names:
                kv = adapter.kv(name)
                if f is None or f.dtype != kv.to_k_vision.weight.dtype:
                    f = self.features.to(kv.to_k_vision.weight.dtype)
                pieces += [kv.to_k_vision(f), kv.to_v_vision(f)]
                width = pieces[-2].shape[-1] + pieces[-1].shape[-1]
                offsets[name] = (start, width)
                start += width
            found = (adapter, torch.cat(pieces, dim=-1), offsets)
            if self.cache:
                self._packed[id(adapter)] = found
        return found[1], found[2]


@dataclass
class VisualCondition:
    """The visual branch for a block of rows of the UNet batch.

    ``tokens`` holds one feature set per row; ``index``/``weights`` (b, k) select and re-weight them
    (the scoring module's output; None = all features, weight 1); ``mask`` (b, 1, H, W) is the
    influence mask (None = no mask, i.e. 1 everywhere, as in training without masks).
    """

    rows: slice
    tokens: VisualTokens
    index: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    _masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)
    _selections: dict[torch.dtype, tuple] = field(default_factory=dict, repr=False)

    def mask_at(self, hw: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
        if self.mask is None:
            return None
        key = (int(hw[0]), int(hw[1]))
        found = self._masks.get(key)
        if found is None or found.dtype != dtype:
            found = resize_mask(self.mask.float(), key).to(dtype)
            self._masks[key] = found
        return found

    def selected(self, adapter, dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """The packed keys/values of every layer (:meth:`VisualTokens.packed_keys_values`) with
        ``index`` and ``weights`` applied and cast to ``dtype``: one gather, one product and one cast
        per condition (i.e. per UNet call) for all the layers, instead of per layer."""
        found = self._selections.get(dtype)
        if found is None:
            kv, offsets = self.tokens.packed_keys_values(adapter)
            if self.index is not None:
                kv = kv.gather(1, self.index[..., None].expand(-1, -1, kv.shape[-1]))
            if self.weights is not None:
                kv = kv * self.weights[..., None].to(kv.dtype)
            if kv.dtype != dtype:
                kv = kv.to(dtype)
            found = self._selections[dtype] = (kv, offsets)
        return found


class RealCustomVisualAttention(AttentionTechnique):
    """Masked visual cross-attention on the adapter's layers (see the module docstring).

    Set :attr:`conditions` before a UNet call (the pipeline does it for every call); with no
    conditions the technique leaves every layer as it is.
    """

    name = "realcustom-visual"
    order = EDIT_ORDER
    edits_maps = False

    def __init__(self, adapter, selector: LayerSelector | None = None):
        self.adapter = adapter
        names = set(adapter.layer_names)
        super().__init__(selector or select_layers(kinds="cross", predicate=lambda layer: layer.name in names))
        self.conditions: list[VisualCondition] = []

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        conditions = self.conditions
        if not conditions:
            return output
        hw = call.resolution
        if hw is None:
            raise TechniqueError(f"RealCustom cannot place its mask on layer {call.layer.name}: its resolution is unknown",
                                 "call the UNet through attncraft's step tracker (install the technique with get_manager)")
        if len(conditions) > 1:
            conditions = sorted(conditions, key=lambda c: c.rows.start)
        name, heads, query = call.layer.name, call.attn.heads, call.query
        if torch.is_grad_enabled():  # in training, autograd may hold the output: a new tensor, no in-place op
            pieces, pos = [], 0
            for cond in conditions:
                vis, mask = self._branch(cond, name, heads, query, hw)
                if mask is not None:
                    vis = vis * mask
                pieces += [output[pos:cond.rows.start], output[cond.rows] + vis.to(output.dtype)]
                pos = cond.rows.stop
            pieces.append(output[pos:])
            return torch.cat(pieces)
        for cond in conditions:
            vis, mask = self._branch(cond, name, heads, query, hw)
            if mask is not None:
                vis.mul_(mask)  # vis is this branch's own new tensor
            rows = cond.rows
            target = output if rows.start == 0 and rows.stop == output.shape[0] else output[rows]
            target.add_(vis if vis.dtype == output.dtype else vis.to(output.dtype))
        return output

    def _branch(self, cond: VisualCondition, name: str, heads: int, query: torch.Tensor,
                hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The visual branch ``softmax(Q K_i^T / sqrt(d)) V_i`` of ``cond``'s rows, ``(rows, Q, heads * d)``,
        and the mask to multiply it by, at the layer's resolution (None: no mask).

        Host work per layer and call, the eager UNet being launch-bound: without a selection the
        keys/values come from the tokens' cache already split into heads and cast (no op at all);
        with one (the scoring module's, new at every call), the keys and values of all the layers
        are selected, re-weighted and cast together at the call's first layer (one gather, one
        product, one cast), each layer taking a view of its part.
        """
        rows = cond.rows
        q = query if rows.start == 0 and rows.stop == query.shape[0] else query[rows]
        if cond.index is None and cond.weights is None:
            k, v = cond.tokens.head_keys_values(name, self.adapter, heads, q.dtype)
        else:
            packed, offsets = cond.selected(self.adapter, q.dtype)
            start, width = offsets[name]
            kv = packed[..., start:start + width]
            k, v = kv.view(kv.shape[0], kv.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        vis = sdpa(q, k, v).transpose(1, 2).reshape(q.shape[0], -1, heads * q.shape[-1])
        return vis, cond.mask_at(hw, vis.dtype)


# ------------------------------------------------------------------------------------ the reader
class _WordMapSink(AttentionTechnique):
    """Receives the maps :class:`WordMapReader` queued (only those: it is installed on no layer)."""

    edits_maps = False

    def __init__(self, reader: WordMapReader):
        super().__init__()
        self.reader = reader

    def observe_maps(self, calls: list[AttentionCall], probs: torch.Tensor) -> None:
        self.reader._add(calls[0], probs)

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        self.reader._add(call, probs[None])
        return probs


class WordMapReader(AttentionTechnique):
    """Reader: the real word's cross-attention on chosen rows, aggregated over layers and heads.

    :meth:`arm` points it at a block of rows and the word's token weights (it records nothing
    while disarmed); :meth:`word_map` returns the aggregate ``(rows, H, W)`` at the largest
    resolution of the layers it read, then :meth:`reset` (or the next :meth:`arm`) clears it.
    ``heads`` restricts the head average to those heads.

    Cost: the layers keep the fused kernel (the reader asks the core for no map). In each layer
    the reader keeps Q and K of *its rows and heads only* (views, no copy) and computes their maps
    after the UNet call, batched across layers with the core's :class:`~.deferred_maps.DeferredMaps`
    (same product, fp32 scale and softmax as the core's map path). The guidance rows of the same
    call (two of three in RealCustom's batch) get no map. Inside a ``torch.compile`` graph the maps
    are computed layer by layer. The encoder attention mask is not applied (diffusers' SD and SDXL
    pipelines pass none).
    """

    name = "realcustom-word-map"
    order = OBSERVE_ORDER
    edits_maps = False

    def __init__(self, selector: LayerSelector = CROSS_ATTENTION, heads: Sequence[int] | None = None):
        super().__init__(selector)
        self.heads = list(heads) if heads is not None else None
        self.rows: slice | None = None
        self.weights: torch.Tensor | None = None
        self._cast_weights: torch.Tensor | None = None
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._layers = 0
        self._queue = DeferredMaps()
        self._sink = _WordMapSink(self)
        self._queued_call = -1
        self.maps_computed = 0
        """(row, layer) word maps computed since construction (a cost counter for benchmarks)."""

    def needs_maps(self, layer) -> bool:
        return False  # the core computes no map: the reader takes its own rows' Q and K in edit_output

    def arm(self, rows: slice, weights: torch.Tensor) -> None:
        if weights is not self.weights:
            self._cast_weights = None
        self.rows, self.weights = rows, weights
        self.reset()

    def disarm(self) -> None:
        self._queue.flush()
        self.rows = None

    def reset(self) -> None:
        self._queue.clear()
        self._sums = {}
        self._layers = 0

    def on_run_start(self, context: AttentionContext) -> None:
        self.reset()

    def edit_output(self, call: AttentionCall, output: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return output
        if call.resolution is None:
            raise TechniqueError(f"RealCustom cannot read the map of layer {call.layer.name}: its resolution is unknown",
                                 "call the UNet through attncraft's step tracker")
        q, k = call.query[self.rows], call.key[self.rows]
        if self.heads is not None:
            q, k = q[:, self.heads], k[:, self.heads]
        if torch.compiler.is_compiling():
            self._add(call, attention_scores(q, k).softmax(dim=-1)[None])
            return output
        if self._queued_call != call.context.unet_calls:  # maps of an earlier UNet call: compute them first
            self._queue.flush()
            self._queued_call = call.context.unet_calls
        self._queue.add(call, q, k, None, (self._sink,))
        return output

    def _add(self, call: AttentionCall, probs: torch.Tensor) -> None:
        """``probs`` (L, rows, heads, Q, K): this reader's rows and heads of layers of one resolution."""
        hw = call.resolution
        w = self._weights_for(probs.device)
        maps = torch.einsum("lbhqk,bk->lbq", probs if probs.dtype == torch.float32 else probs.float(), w) / probs.shape[2]
        total = maps.sum(0).view(-1, *hw)
        key = (int(hw[0]), int(hw[1]))
        self._sums[key] = self._sums[key] + total if key in self._sums else total
        self._layers += probs.shape[0]
        self.maps_computed += probs.shape[0] * probs.shape[1]

    def _weights_for(self, device: torch.device) -> torch.Tensor:
        """The token weights in float32 on ``device``, cast once per :meth:`arm`."""
        w = self._cast_weights
        if w is None or w.device != device:
            w = self._cast_weights = self.weights.to(device=device, dtype=torch.float32)
        return w

    @property
    def layers_read(self) -> int:
        self._queue.flush()
        return self._layers

    def word_map(self) -> torch.Tensor:
        """The mean over the layers read of each layer's word map, resized to the largest one."""
        self._queue.flush()
        if not self._sums:
            raise TechniqueError("no word map was recorded", "arm the reader and run the UNet before asking for the mask")
        target = max(self._sums, key=lambda hw: hw[0] * hw[1])
        total = None
        for hw, s in self._sums.items():
            up = s if hw == target else F.interpolate(s[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]
            total = up if total is None else total + up
        return total / self._layers
