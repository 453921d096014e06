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

Living with diffusers' own features
-----------------------------------

* **No-argument construction.** diffusers rebuilds processors by calling their class with no
  arguments (the IP-Adapter loader does it for every layer it does not give an image branch,
  ``unload_ip_adapter`` and ``UNetMotionModel.from_unet2d`` too). ``AttncraftAttnProcessor()`` is an
  *unbound* processor: no layer, no context, no technique, so it computes exactly what
  ``AttnProcessor2_0`` computes. The :class:`~.manager.AttentionManager` replaces it by a bound one on
  the layers it manages at its next synchronisation (each run start, install, remove).
* **IP-Adapter.** :class:`AttncraftIPAdapterAttnProcessor` is the core processor with IP-Adapter's
  image-attention branch. The manager builds it on a layer whose processor underneath is an
  IP-Adapter processor (``IPAdapterAttnProcessor2_0``, ``IPAdapterAttnProcessor`` or the xformers one),
  sharing that processor's ``to_k_ip`` / ``to_v_ip`` weights and its ``scale`` list, so
  ``pipe.set_ip_adapter_scale`` (floats, per-block dicts, one entry per adapter) acts on both. It is an
  ``IPAdapterAttnProcessor2_0`` for ``isinstance``, so diffusers' scale setting, ``unload_ip_adapter``
  and ``from_unet2d`` treat it as one. The branch is the one of ``IPAdapterAttnProcessor2_0``: for each
  adapter, ``scale * SDPA(Q, K_ip, V_ip)`` (masked per image with ``ip_adapter_masks``, downsampled
  with diffusers' ``IPAdapterMaskProcessor.downsample``) is added to the text-attention output. It is
  added on both paths, after the text attention and *before* ``edit_output``: score and probability
  hooks see the text maps only (keys are the text tokens, as techniques expect), ``edit_output``
  sees the whole attention output that goes into ``to_out``. With no technique the output is
  bit-identical to ``IPAdapterAttnProcessor2_0``'s (same operations in the same order); with a
  map-editing technique the text part takes the explicit path (fp32 tolerance, as without IP-Adapter).
* **Fused QKV** (``fuse_qkv_projections()``). On a layer whose processor underneath is
  ``FusedAttnProcessor2_0`` the manager sets :attr:`AttncraftAttnProcessor.fused_projections`, and the
  projections come from the fused ``to_qkv`` / ``to_kv`` like ``FusedAttnProcessor2_0``'s (bit-identical
  with no technique).
* **Resets.** ``set_default_attn_processor()`` accepts only processor classes it knows
  (``CROSS_ATTENTION_PROCESSORS``); both classes here are registered there when this module is
  imported, so a reset works while they are installed. What the manager does afterwards is
  described in :mod:`.manager`.
"""

from __future__ import annotations

import sys

import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models import attention_processor as diffusers_processors
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from attncraft.attention_processors.backends import fused_attention
from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.deferred_maps import attention_scores, run_score_and_prob_hooks
from attncraft.attention_processors.layers import LayerInfo
from attncraft.attention_processors.technique import AttentionTechnique
from attncraft.errors import InputError


class AttncraftAttnProcessor:
    """``AttnProcessor2_0``-equivalent processor with technique hooks (see module docstring).

    ``AttncraftAttnProcessor()`` with no argument is unbound (stock output, no technique).
    """

    def __init__(self, layer: LayerInfo | None = None, context: AttentionContext | None = None, backend: str = "sdpa"):
        self.layer = layer
        self.context = context
        self.backend = backend
        self.techniques: list[AttentionTechnique] = []
        self.fused_projections = False
        """Project with the fused ``to_qkv`` / ``to_kv`` (set by the manager over ``FusedAttnProcessor2_0``)."""
        self._replaced: tuple = (None,)  # a tuple, so nn.Module subclasses do not adopt it as a submodule
        self._splits_image_states = False
        self._needs_maps = False
        self._maps_edited = False
        self._defer_maps = False
        self._gated = False
        self._flags_cache: dict[tuple[AttentionTechnique, ...], tuple[bool, bool, bool]] = {}

    @property
    def bound(self) -> bool:
        """True once the processor knows its layer and context (the manager binds it)."""
        return self.layer is not None and self.context is not None

    @property
    def replaced(self):
        """The processor this one was installed over (put back when its techniques are removed)."""
        return self._replaced[0]

    def set_replaced(self, processor) -> None:
        self._replaced = (processor,)

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
        # the parameter list is the one of AttnProcessor2_0: diffusers inspects it at every call
        image_states = None
        if self._splits_image_states and encoder_hidden_states is not None:
            encoder_hidden_states, image_states = self._split_image_states(encoder_hidden_states)
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

        is_cross = encoder_hidden_states is not None
        if self.fused_projections:
            query, key, value, encoder_hidden_states = _fused_projections(attn, hidden_states, encoder_hidden_states)
        else:
            query = attn.to_q(hidden_states)
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
            out = fused_attention(self.backend, query, key, value, attention_mask)
            out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
            if image_states is not None:
                out = self._add_image_attention(attn, query, out, image_states, kwargs.get("ip_adapter_masks"))
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
                ip_hidden_states=image_states,
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
            if image_states is not None:
                out = self._add_image_attention(attn, query, out, image_states, kwargs.get("ip_adapter_masks"))
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

    def _split_image_states(self, encoder_hidden_states):
        raise NotImplementedError  # only processors that carry an image branch split their states

    def _add_image_attention(self, attn, query, out, image_states, masks):
        raise NotImplementedError

    def __repr__(self) -> str:
        names = ", ".join(t.name for t in self.techniques) or "none"
        where = self.layer.name if self.layer is not None else "unbound"
        return f"{type(self).__name__}({where}, techniques=[{names}])"


def _fused_projections(attn, hidden_states, encoder_hidden_states):
    """Q, K, V (and the normalised key/value states) from ``attn.to_qkv`` / ``to_kv``, as
    ``FusedAttnProcessor2_0`` computes them."""
    if encoder_hidden_states is None:
        qkv = attn.to_qkv(hidden_states)
        query, key, value = torch.split(qkv, qkv.shape[-1] // 3, dim=-1)
        return query, key, value, hidden_states
    if attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    query = attn.to_q(hidden_states)
    kv = attn.to_kv(encoder_hidden_states)
    key, value = torch.split(kv, kv.shape[-1] // 2, dim=-1)
    return query, key, value, encoder_hidden_states


def is_ip_adapter_processor(processor) -> bool:
    """True for diffusers' IP-Adapter processors (and this module's, which are instances of them)."""
    return isinstance(processor, _IP_ADAPTER_CLASSES)


class AttncraftIPAdapterAttnProcessor(AttncraftAttnProcessor, IPAdapterAttnProcessor2_0):
    """The core processor with IP-Adapter's image-attention branch (see the module docstring).

    Built over an IP-Adapter processor ``ip_adapter``: its ``to_k_ip`` / ``to_v_ip`` (one per adapter)
    become this module's submodules (same objects, so state dicts keep diffusers' keys and ``.to()``
    moves them once), and its ``scale`` list and ``num_tokens`` are shared.
    """

    def __init__(self, ip_adapter, layer: LayerInfo | None = None, context: AttentionContext | None = None,
                 backend: str = "sdpa"):
        torch.nn.Module.__init__(self)
        AttncraftAttnProcessor.__init__(self, layer, context, backend)
        self.hidden_size = ip_adapter.hidden_size
        self.cross_attention_dim = ip_adapter.cross_attention_dim
        self.num_tokens = ip_adapter.num_tokens
        self.scale = ip_adapter.scale
        self.to_k_ip = ip_adapter.to_k_ip
        self.to_v_ip = ip_adapter.to_v_ip
        self._splits_image_states = True

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        ip_adapter_masks: torch.Tensor | list[torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """The core's call (not IP-Adapter's or nn.Module's); ``ip_adapter_masks`` is named so that
        diffusers passes it on from ``cross_attention_kwargs``."""
        return AttncraftAttnProcessor.__call__(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                               ip_adapter_masks=ip_adapter_masks)

    def _split_image_states(self, encoder_hidden_states):
        if isinstance(encoder_hidden_states, tuple):
            return encoder_hidden_states
        # the older layout: image tokens appended to the text tokens
        end = encoder_hidden_states.shape[1] - self.num_tokens[0]
        return encoder_hidden_states[:, :end, :], [encoder_hidden_states[:, end:, :]]

    def _add_image_attention(self, attn, query, out, image_states, masks):
        """``out + sum_i scale_i * attention(Q, K_ip_i, V_ip_i)`` over the adapters, masked per image."""
        masks = self._checked_masks(masks, image_states)
        batch_size = query.shape[0]
        for states, scale, to_k, to_v, mask in zip(image_states, self.scale, self.to_k_ip, self.to_v_ip, masks):
            if all(s == 0 for s in scale) if isinstance(scale, list) else scale == 0:
                continue
            if mask is None:
                out = out + scale * self._image_attention(attn, query, to_k, to_v, states)
                continue
            scales = scale if isinstance(scale, list) else [scale] * mask.shape[1]
            for i in range(mask.shape[1]):
                image = self._image_attention(attn, query, to_k, to_v, states[:, i, :, :])
                weight = IPAdapterMaskProcessor.downsample(mask[:, i, :, :], batch_size, image.shape[1], image.shape[2])
                out = out + scales[i] * (image * weight.to(dtype=query.dtype, device=query.device))
        return out

    def _image_attention(self, attn, query, to_k, to_v, states):
        batch_size, heads = query.shape[0], attn.heads
        head_dim = query.shape[-1]
        key = to_k(states).view(batch_size, -1, heads, head_dim).transpose(1, 2)
        value = to_v(states).view(batch_size, -1, heads, head_dim).transpose(1, 2)
        image = fused_attention(self.backend, query, key, value, None)
        return image.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)

    def _checked_masks(self, masks, image_states) -> list:
        if masks is None:
            return [None] * len(self.scale)
        if not isinstance(masks, list):  # diffusers also takes one tensor (adapters, 1, h, w)
            masks = list(masks.unsqueeze(1))
        if not len(masks) == len(self.scale) == len(image_states):
            raise InputError(
                f"{len(masks)} IP-Adapter masks for {len(self.scale)} adapters and {len(image_states)} image embeddings",
                "pass one mask (or None) per loaded IP-Adapter",
            )
        for index, (mask, scale, states) in enumerate(zip(masks, self.scale, image_states)):
            if mask is None:
                continue
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
                raise InputError(f"IP-Adapter mask {index} is not a (1, images, height, width) tensor",
                                 "preprocess masks with diffusers' IPAdapterMaskProcessor")
            if mask.shape[1] != states.shape[1]:
                raise InputError(f"IP-Adapter mask {index} has {mask.shape[1]} images for {states.shape[1]} image embeddings",
                                 "give one mask channel per image of that adapter")
            if isinstance(scale, list) and len(scale) != mask.shape[1]:
                raise InputError(f"IP-Adapter mask {index} has {mask.shape[1]} images for {len(scale)} scales",
                                 "set one scale per masked image with pipe.set_ip_adapter_scale")
        return masks


_IP_ADAPTER_CLASSES = (
    diffusers_processors.IPAdapterAttnProcessor,
    diffusers_processors.IPAdapterAttnProcessor2_0,
    diffusers_processors.IPAdapterXFormersAttnProcessor,
)


def _register_with_diffusers() -> None:
    """Add both processor classes to diffusers' ``CROSS_ATTENTION_PROCESSORS``, the classes
    ``set_default_attn_processor()`` agrees to reset, in every diffusers module that holds the tuple
    (models import it by name; modules imported later read the new one)."""
    old = diffusers_processors.CROSS_ATTENTION_PROCESSORS
    if AttncraftAttnProcessor in old:
        return
    new = (*old, AttncraftAttnProcessor, AttncraftIPAdapterAttnProcessor)
    for name, module in list(sys.modules.items()):
        if name.startswith("diffusers") and getattr(module, "__dict__", {}).get("CROSS_ATTENTION_PROCESSORS") is old:
            module.CROSS_ATTENTION_PROCESSORS = new


_register_with_diffusers()
