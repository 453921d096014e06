"""The one attention processor every attncraft technique runs in.

:class:`AttncraftAttnProcessor` reproduces diffusers' ``AttnProcessor2_0`` step for step (spatial
norm, 4-D inputs, group norm, cross-norm, q/k norms, fused SDPA, ``to_out``, residual, rescale), so
on a layer with no active technique its output is the stock output. On a layer where an active
technique needs the attention map it takes the explicit path instead::

    scores = Q K^T / sqrt(d) (+ mask)      -> technique.edit_scores   (batch, heads, queries, keys)
    probs  = softmax(scores)               -> technique.edit_probs    same shape
    out    = probs V, heads merged         -> technique.edit_output   (batch, queries, heads*dim)

Numerics of the explicit path: the product ``Q K^T`` is computed in the input dtype (as diffusers'
``get_attention_scores`` does), then scores and the softmax are in float32 so that hooks see
well-conditioned values and rows sum to one, and probabilities are cast back to the value dtype for
``probs V``. The scale is ``1/sqrt(head_dim)``, the one SDPA (and therefore ``AttnProcessor2_0``)
uses, not ``attn.scale`` (they coincide for every UNet diffusers builds).

``edit_output`` hooks run on both paths, so techniques that only add to the output (extra
cross-attention branches, feature blending) keep the fused kernel. So do layers where every
map-reading technique is an observer (``edits_maps = False``, e.g. the attention store): the output
comes from the fused kernel and the maps are computed beside it; when those observers only read
the maps after the UNet call (``reads_maps_after_forward``), the maps are computed then, batched
across layers (:mod:`.deferred_maps`), except inside a ``torch.compile`` graph.

Techniques that act only in some UNet calls (a window of steps) say so through
:meth:`~.technique.AttentionTechnique.is_active`; in a call where none of a layer's techniques is
active the layer takes the stock path above, bit for bit.

One processor instance serves exactly one layer (it knows its :class:`~.layers.LayerInfo`); all
processors of a model share one :class:`~.context.AttentionContext`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attncraft.attention_processors.backends import fused_attention
from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.deferred_maps import attention_scores, run_score_and_prob_hooks
from attncraft.attention_processors.layers import LayerInfo
from attncraft.attention_processors.technique import AttentionTechnique


class AttncraftAttnProcessor:
    """``AttnProcessor2_0``-equivalent processor with technique hooks (see module docstring)."""

    def __init__(self, layer: LayerInfo, context: AttentionContext, backend: str = "sdpa"):
        self.layer = layer
        self.context = context
        self.backend = backend
        self.techniques: list[AttentionTechnique] = []
        self._needs_maps = False
        self._maps_edited = False
        self._defer_maps = False
        self._gated = False
        self._flags_cache: dict[tuple[AttentionTechnique, ...], tuple[bool, bool, bool]] = {}

    # -- technique bookkeeping (done by the manager) -------------------------------------------
    def set_techniques(self, techniques: list[AttentionTechnique]) -> None:
        """Install ``techniques`` (already in composition order) on this layer."""
        self.techniques = list(techniques)
        self._flags_cache = {}
        self._needs_maps, self._maps_edited, self._defer_maps = self._map_flags(tuple(self.techniques))
        self._gated = any(type(t).is_active is not AttentionTechnique.is_active for t in self.techniques)

    def _map_flags(self, techniques: tuple[AttentionTechnique, ...]) -> tuple[bool, bool, bool]:
        """(needs maps, some reader edits them, every reader defers) for ``techniques`` on this layer."""
        flags = self._flags_cache.get(techniques)
        if flags is None:
            readers = [t for t in techniques if t.needs_maps(self.layer)]
            defer = bool(readers) and all(not t.edits_maps and t.reads_maps_after_forward for t in readers)
            flags = (bool(readers), any(t.edits_maps for t in readers), defer)
            self._flags_cache[techniques] = flags
        return flags

    @property
    def needs_maps(self) -> bool:
        return self._needs_maps

    # -- the processor call --------------------------------------------------------------------
    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        is_cross = encoder_hidden_states is not None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        techniques = self.techniques
        needs_maps, maps_edited, defer_maps = self._needs_maps, self._maps_edited, self._defer_maps
        if self._gated:  # some technique acts only in some calls (a step window): ask each one
            active = tuple(t for t in techniques if t.is_active(self.context))
            if len(active) != len(techniques):
                techniques = list(active)
                needs_maps, maps_edited, defer_maps = self._map_flags(active)

        if not techniques:
            # the stock path, kept as lean as AttnProcessor2_0's (the eager UNet is launch-bound)
            if self.backend == "sdpa":
                out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
            else:
                out = fused_attention(self.backend, query, key, value, attention_mask)
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        else:
            call = AttentionCall(
                layer=self.layer,
                context=self.context,
                attn=attn,
                batch_size=batch_size,
                num_tokens=query.shape[2],
                hidden_states=hidden_states,
                encoder_hidden_states=encoder_hidden_states if is_cross else None,
                query=query,
                key=key,
                value=value,
            )
            if maps_edited:
                out = self._explicit_attention(call, query, key, value, attention_mask, techniques)
            else:
                out = fused_attention(self.backend, query, key, value, attention_mask)
                if needs_maps:  # observers only: maps on the side, output from the fused kernel
                    deferred = self.context.deferred
                    if defer_maps and deferred is not None and not torch.compiler.is_compiling():
                        deferred.add(call, query, key, attention_mask, techniques)
                    else:
                        self._run_map_hooks(call, query, key, attention_mask, techniques)
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            for technique in techniques:
                out = technique.edit_output(call, out)

        out = attn.to_out[0](out)
        out = attn.to_out[1](out)

        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _explicit_attention(
        self,
        call: AttentionCall,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        techniques: list[AttentionTechnique],
    ) -> torch.Tensor:
        probs = self._run_map_hooks(call, query, key, mask, techniques)
        return torch.matmul(probs.to(value.dtype), value)

    def _run_map_hooks(
        self,
        call: AttentionCall,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        techniques: list[AttentionTechnique],
    ) -> torch.Tensor:
        """Scores -> score hooks -> softmax -> probability hooks; returns the final probabilities."""
        return run_score_and_prob_hooks(call, attention_scores(query, key, mask), techniques)

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.techniques) or "none"
        return f"AttncraftAttnProcessor({self.layer.name}, techniques=[{names}])"
