"""Attention maps for observers that read them after the UNet call, computed in one batched pass.

Why this exists: an eager SD-size UNet is launch-bound (the GPU waits on the host), so what
recording maps costs is the number of tensor operations the host issues, not their size. Computed
layer by layer, a recorded map costs about fifteen operations per layer (the copies ``matmul``
makes of the strided Q and K, the product, cast, scale, softmax, then the observer's reduction and
accumulation), which on the five 16x16 cross-attention layers of SD 1.5 is about 6 % of a UNet call.

An observer that only uses the maps once the UNet call is over (``reads_maps_after_forward``, e.g.
:class:`~.store.AttentionStore`) does not need them inside the layer. On a layer where every
map-reading technique is such an observer, the processor computes its output with the fused kernel
and only *keeps* Q and K (references, no copy) here. When the UNet returns (a forward hook of the
:class:`~.manager.AttentionManager`), the pending layers are grouped by shape, dtype, device and
techniques, and each group is computed together: one stack of Q, one of K, one batched product,
one softmax. Observers receive a group through :meth:`~.technique.AttentionTechnique.observe_maps`
(by default one ``edit_probs`` per layer; the store reduces the whole group at once).

* **Same numbers** as the per-layer path: the same ``Q K^T`` in the input dtype, scaled and soft-maxed
  in float32 (``tests/core/test_deferred_maps.py`` checks the store's maps against the per-layer path).
* **Memory**: Q and K of the pending layers stay alive until the UNet returns; a group's float32
  scores are capped at :attr:`DeferredMaps.max_group_bytes` (larger groups are split, a layer larger
  than the cap is computed alone), so the transient peak stays near the per-layer path's.
* **Masks**: layers with an attention mask are computed one by one (masks differ per layer).
* **Not under torch.compile**: inside a compiled graph the processor takes the per-layer path
  (a Python-side queue would be a side effect of the graph); see ``processor.py``.
* The step, timestep and CFG halves a hook sees are those of the UNet call the maps come from: the
  flush runs before the step tracker moves on (also when a forward hook could not run).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attncraft.attention_processors.context import AttentionCall
from attncraft.attention_processors.technique import AttentionTechnique


def attention_scores(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``Q K^T / sqrt(d)`` (+ mask) in float32, for Q, K of shape ``(..., tokens, head_dim)``.

    The product is taken in the input dtype (as diffusers' explicit attention does), the scale and
    mask in float32. Shared by the per-layer and the batched path, so both give the same numbers.
    """
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query, key.transpose(-1, -2)).float().mul_(scale)
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    return scores


@dataclass
class _Pending:
    call: AttentionCall
    query: torch.Tensor
    key: torch.Tensor
    mask: torch.Tensor | None
    techniques: tuple[AttentionTechnique, ...]


def run_score_hooks(call: AttentionCall, scores: torch.Tensor, techniques: Sequence[AttentionTechnique]) -> torch.Tensor:
    for technique in techniques:
        scores = technique.edit_scores(call, scores)
    return scores


def run_prob_hooks(call: AttentionCall, probs: torch.Tensor, techniques: Sequence[AttentionTechnique]) -> torch.Tensor:
    for technique in techniques:
        probs = technique.edit_probs(call, probs)
    return probs


def run_score_and_prob_hooks(
    call: AttentionCall, scores: torch.Tensor, techniques: Sequence[AttentionTechnique]
) -> torch.Tensor:
    """Score hooks -> softmax -> probability hooks for one layer; returns the final probabilities."""
    return run_prob_hooks(call, run_score_hooks(call, scores, techniques).softmax(dim=-1), techniques)


class DeferredMaps:
    """The queue of layers whose maps are computed when the UNet call returns (see module doc)."""

    max_group_bytes: int = 256 * 2**20

    def __init__(self) -> None:
        self.pending: list[_Pending] = []

    def __len__(self) -> int:
        return len(self.pending)

    def add(
        self,
        call: AttentionCall,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        techniques: Sequence[AttentionTechnique],
    ) -> None:
        self.pending.append(_Pending(call, query, key, mask, tuple(techniques)))

    def clear(self) -> None:
        self.pending = []

    def flush(self) -> None:
        """Compute every pending layer's maps and hand them to its observers; empties the queue."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        groups: dict[tuple, list[_Pending]] = {}
        for item in pending:
            if item.mask is not None:
                self._one(item)
                continue
            q, k = item.query, item.key
            key = (tuple(q.shape), tuple(k.shape), q.dtype, q.device, tuple(id(t) for t in item.techniques))
            groups.setdefault(key, []).append(item)
        for items in groups.values():
            q = items[0].query
            per_layer = 4 * q.shape[:-1].numel() * items[0].key.shape[-2]
            size = max(1, self.max_group_bytes // max(per_layer, 1))
            for start in range(0, len(items), size):
                chunk = items[start:start + size]
                if len(chunk) == 1:
                    self._one(chunk[0])
                else:
                    self._group(chunk)

    @staticmethod
    def _one(item: _Pending) -> None:
        scores = attention_scores(item.query, item.key, item.mask)
        run_score_and_prob_hooks(item.call, scores, item.techniques)

    @staticmethod
    def _group(items: list[_Pending]) -> None:
        techniques = items[0].techniques
        calls = [item.call for item in items]
        scores = attention_scores(torch.stack([i.query for i in items]), torch.stack([i.key for i in items]))
        if all(type(t).edit_scores is AttentionTechnique.edit_scores for t in techniques):  # no score hook: no per-layer view
            probs = scores.softmax(dim=-1)
            for technique in techniques:
                technique.observe_maps(calls, probs)
            return
        slices = scores.unbind(0)
        seen = [run_score_hooks(call, s, techniques) for call, s in zip(calls, slices)]
        if any(after is not before for after, before in zip(seen, slices)):
            # an observer returned new scores (observers should not): honour it, layer by layer
            for call, s in zip(calls, seen):
                run_prob_hooks(call, s.softmax(dim=-1), techniques)
            return
        probs = scores.softmax(dim=-1)
        for technique in techniques:
            technique.observe_maps(calls, probs)
