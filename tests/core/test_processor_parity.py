"""The core processor reproduces diffusers' AttnProcessor2_0 on SD, SDXL and AnimateDiff UNets,
and its explicit path computes exactly softmax(QK^T/sqrt(d))."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import tiny_models as tm
from attncraft.attention_processors import (
    ALL_LAYERS,
    AttentionStore,
    AttentionTechnique,
    AttncraftAttnProcessor,
    get_manager,
)


def _unet_inputs(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "sd":
        unet = tm.sd_unet()
        return unet, dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor(500),
                          encoder_hidden_states=torch.randn(2, 77, 32, generator=g))
    if kind == "sdxl":
        unet = tm.sdxl_unet()
        return unet, dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor(500),
                          encoder_hidden_states=torch.randn(2, 77, 64, generator=g),
                          added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=g),
                                             "time_ids": torch.randn(2, 6, generator=g)})
    unet = tm.motion_unet()
    return unet, dict(sample=torch.randn(2, 4, 4, 16, 16, generator=g), timestep=torch.tensor(500),
                      encoder_hidden_states=torch.randn(2 * 4, 77, 32, generator=g))


@pytest.mark.parametrize("kind", ["sd", "sdxl", "motion"])
def test_core_processor_matches_stock_sdpa(kind):
    unet, inputs = _unet_inputs(kind)
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = unet(**inputs).sample
        manager = get_manager(unet)
        names = manager.install_core()
        assert len(names) == len(unet.attn_processors)
        assert all(isinstance(p, AttncraftAttnProcessor) for p in unet.attn_processors.values())
        ours = unet(**inputs).sample
    assert torch.equal(stock, ours)


class IdentityEditor(AttentionTechnique):
    """Edits nothing but declares that it edits, forcing the explicit softmax path."""

    def edit_probs(self, call, probs):
        return probs


@pytest.mark.parametrize("kind", ["sd", "sdxl", "motion"])
def test_explicit_path_matches_stock_within_fp32_tolerance(kind):
    unet, inputs = _unet_inputs(kind)
    with torch.no_grad():
        stock = unet(**inputs).sample
        with get_manager(unet).applied(IdentityEditor(ALL_LAYERS)) as manager:
            assert all(manager.processor(n)._maps_edited for n in manager.layers)
            ours = unet(**inputs).sample
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sd", "motion"])
def test_observer_only_layers_keep_the_stock_output_exactly(kind):
    unet, inputs = _unet_inputs(kind)
    with torch.no_grad():
        stock = unet(**inputs).sample
        store = AttentionStore(selector=ALL_LAYERS, cond_only=False)
        with get_manager(unet).applied(store) as manager:
            assert not any(manager.processor(n)._maps_edited for n in manager.layers)
            ours = unet(**inputs).sample
    assert len(store.layer_names) == len(unet.attn_processors)
    assert torch.equal(ours, stock)


def test_probabilities_equal_independent_softmax():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24, heads=2, dim_head=8)
    hidden = torch.randn(3, 12, 16)
    text = torch.randn(3, 7, 24)
    from attncraft.attention_processors.context import AttentionContext
    from attncraft.attention_processors.layers import describe_layer

    layer = describe_layer("down_blocks.0.attentions.0.transformer_blocks.0.attn2", attn, 2)
    assert layer.kind == "cross"
    processor = AttncraftAttnProcessor(layer, AttentionContext())
    store = AttentionStore(selector=ALL_LAYERS, cond_only=False, reduce_heads=False)
    processor.set_techniques([store])
    attn.set_processor(processor)
    with torch.no_grad():
        out = attn(hidden, encoder_hidden_states=text)
        probs = store.layer_maps()[layer.name]
        q = attn.to_q(hidden).view(3, 12, 2, 8).transpose(1, 2)
        k = attn.to_k(text).view(3, 7, 2, 8).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1)
        attn.set_processor(AttnProcessor2_0())
        stock = attn(hidden, encoder_hidden_states=text)
    assert probs.shape == (3, 2, 12, 7)
    torch.testing.assert_close(probs, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 12), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, stock, rtol=1e-5, atol=1e-6)


def test_explicit_path_applies_attention_mask_like_sdpa():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=24, heads=2, dim_head=8)
    hidden, text = torch.randn(2, 5, 16), torch.randn(2, 6, 24)
    mask = torch.zeros(2, 1, 6)
    mask[:, :, 4:] = -10000.0
    from attncraft.attention_processors.context import AttentionContext
    from attncraft.attention_processors.layers import describe_layer

    processor = AttncraftAttnProcessor(describe_layer("x.attn2", attn, None), AttentionContext())
    store = AttentionStore(selector=ALL_LAYERS, cond_only=False, reduce_heads=False)
    processor.set_techniques([store])
    with torch.no_grad():
        ours = processor(attn, hidden, text, attention_mask=mask)
        stock = AttnProcessor2_0()(attn, hidden, text, attention_mask=mask)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-6)
    assert store.layer_maps()["x.attn2"][..., 4:].max() < 1e-4
