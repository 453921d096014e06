"""RealCustom's attention hooks: the adaptive mask, the masked visual branch, the word-map reader."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from attncraft.attention_processors import AttentionStore, get_manager
from attncraft.attention_processors.realcustom import (
    RealCustomVisualAttention,
    VisualCondition,
    VisualTokens,
    WordMapReader,
    adaptive_mask,
    resize_mask,
    token_weights,
    word_token_indices,
)
from attncraft.errors import InputError
from attncraft.realcustom.modules import RealCustomAdapter, reweight_and_select


@pytest.mark.parametrize("gamma_scope", [0.05, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("hw", [(16, 16), (8, 12)])
def test_topk_keeps_exactly_the_fraction_and_max_normalises_to_one(gamma_scope, hw):
    torch.manual_seed(0)
    word_map = torch.rand(3, *hw)
    mask = adaptive_mask(word_map, gamma_scope, "max")
    k = math.floor(gamma_scope * hw[0] * hw[1])
    assert mask.shape == (3, 1, *hw)
    assert ((mask > 0).flatten(1).sum(1) == k).all()
    assert torch.equal(mask.flatten(1).amax(1), torch.ones(3))
    assert mask.min() >= 0 and mask.max() <= 1
    # the kept pixels are the k largest of the map, scaled by one factor per map
    for b in range(3):
        kept = mask[b, 0] > 0
        assert word_map[b][kept].min() >= word_map[b][~kept].max() if (~kept).any() else True
        ratio = mask[b, 0][kept] / word_map[b][kept]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio))


def test_binary_minmax_and_empty_masks():
    torch.manual_seed(1)
    word_map = torch.rand(2, 8, 8)
    binary = adaptive_mask(word_map, 0.25, "binary")
    assert set(binary.unique().tolist()) == {0.0, 1.0} and int(binary[0].sum()) == 16
    minmax = adaptive_mask(word_map, 0.25, "minmax")
    assert ((minmax > 0).flatten(1).sum(1) == 16).all() and torch.allclose(minmax.flatten(1).amax(1), torch.ones(2))
    assert torch.equal(adaptive_mask(word_map, 0.0), torch.zeros(2, 1, 8, 8))
    with pytest.raises(InputError, match="gamma_scope"):
        adaptive_mask(word_map, 1.5)
    with pytest.raises(InputError, match="mask mode"):
        adaptive_mask(word_map, 0.25, "soft")


def test_mask_is_resized_to_each_layers_resolution():
    mask = adaptive_mask(torch.rand(2, 16, 16), 0.25)
    for hw in ((16, 16), (8, 8), (4, 4)):
        resized = resize_mask(mask, hw)
        assert resized.shape == (2, hw[0] * hw[1], 1)
    # halving with bilinear interpolation averages each 2x2 block
    assert torch.allclose(resize_mask(mask, (8, 8)).view(2, 8, 8), F.avg_pool2d(mask, 2)[:, 0], atol=1e-6)


def test_word_token_span(clip_tokenizer):
    assert word_token_indices(clip_tokenizer, "a photo of a toy", "toy") == [5]
    ids = clip_tokenizer("a big star on the left").input_ids
    (i,) = word_token_indices(clip_tokenizer, "a big star on the left", "Star")
    assert ids[i] == clip_tokenizer("star", add_special_tokens=False).input_ids[0]
    assert len(word_token_indices(clip_tokenizer, "a photo of a teddybear plushie", "teddybear plushie")) >= 2
    with pytest.raises(InputError, match="not in the prompt"):
        word_token_indices(clip_tokenizer, "a red circle", "star")
    with pytest.raises(InputError, match="not in the prompt"):
        word_token_indices(clip_tokenizer, "a red starfish", "star")  # whole words only
    with pytest.raises(InputError, match="beyond"):
        word_token_indices(clip_tokenizer, "word " * 80 + "star", "star")
    w = token_weights([[2], [3, 4]], 77)
    assert w.shape == (2, 77) and w.sum().item() == 3 and w[1, 4] == 1


# ------------------------------------------------------------------------------- the visual branch
def _unet_inputs(unet, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    ehs = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return x, ehs


def _adapter(unet, feature_dim=16, **kw):
    return RealCustomAdapter.from_unet(unet, feature_dim, init="text", seed=0, **kw)


def test_zero_mask_leaves_the_unet_output_bit_equal():
    unet = tm.sd_unet().eval()
    x, ehs = _unet_inputs(unet)
    with torch.no_grad():
        plain = unet(x, 500, encoder_hidden_states=ehs).sample
        adapter = _adapter(unet)
        visual = RealCustomVisualAttention(adapter)
        tokens = VisualTokens(adapter.project(torch.randn(3, 9, 16)))
        with get_manager(unet).applied(visual):
            visual.conditions = [VisualCondition(slice(0, 3), tokens, mask=torch.zeros(3, 1, 16, 16))]
            zero = unet(x, 500, encoder_hidden_states=ehs).sample
            visual.conditions = [VisualCondition(slice(0, 3), tokens, mask=torch.ones(3, 1, 16, 16))]
            one = unet(x, 500, encoder_hidden_states=ehs).sample
            visual.conditions = []
            none = unet(x, 500, encoder_hidden_states=ehs).sample
    assert torch.equal(zero, plain) and torch.equal(none, plain)
    assert (one - plain).abs().max() > 1e-3  # the branch does act when the mask lets it


def test_visual_branch_touches_only_its_rows_and_equals_the_formula():
    unet = tm.sd_unet().eval()
    adapter = _adapter(unet)
    layer = next(n for n in adapter.layer_names)
    module = dict(unet.named_modules())[layer]
    x, ehs = _unet_inputs(unet)
    captured = {}

    def grab(mod, args, kwargs, out):
        captured.setdefault("out", []).append(out)

    handle = module.register_forward_hook(grab, with_kwargs=True)
    feats = adapter.project(torch.randn(1, 9, 16))
    mask = torch.rand(1, 1, 16, 16)
    visual = RealCustomVisualAttention(adapter)
    with torch.no_grad():
        with get_manager(unet).applied(visual):
            visual.conditions = [VisualCondition(slice(2, 3), VisualTokens(feats), mask=mask)]
            unet(x, 500, encoder_hidden_states=ehs)
            visual.conditions = []
            unet(x, 500, encoder_hidden_states=ehs)
    handle.remove()
    with_branch, without = captured["out"]
    assert torch.equal(with_branch[:2], without[:2])
    # recompute the visual branch of row 2 by hand, from the layer's own query
    hidden = {}
    def keep_input(mod, args, kwargs):
        hidden["h"] = args[0] if args else kwargs["hidden_states"]

    h2 = module.register_forward_pre_hook(keep_input, with_kwargs=True)
    with torch.no_grad():
        unet(x, 500, encoder_hidden_states=ehs)
        h2.remove()
        hs = hidden["h"][2:3]
        q = module.to_q(hs)
        kv = adapter.kv(layer)
        k, v = kv.to_k_vision(feats), kv.to_v_vision(feats)
        heads = module.heads
        d = q.shape[-1] // heads
        split = lambda t: t.view(1, -1, heads, d).transpose(1, 2)  # noqa: E731
        vis = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(1, -1, heads * d)
        side = int(math.isqrt(hs.shape[1]))
        vis = vis * F.interpolate(mask, size=(side, side), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        expected = without[2:3] + module.to_out[0](vis) - module.to_out[0].bias
    assert torch.allclose(with_branch[2:3], expected, atol=1e-5)


def test_one_condition_over_adjacent_blocks_equals_one_condition_per_block():
    """The release's zero-image and subject branches as one attention call (the pipeline's way)
    give the same output as one call per block."""
    unet = tm.sd_unet().eval()
    adapter = _adapter(unet)
    x, ehs = _unet_inputs(unet)
    zero, subject = adapter.project(torch.randn(1, 9, 16)), adapter.project(torch.randn(1, 9, 16))
    mask = adaptive_mask(torch.rand(1, 16, 16), 0.25)
    visual = RealCustomVisualAttention(adapter)
    with torch.no_grad(), get_manager(unet).applied(visual):
        visual.conditions = [VisualCondition(slice(1, 2), VisualTokens(zero), mask=mask),
                             VisualCondition(slice(2, 3), VisualTokens(subject), mask=mask)]
        apart = unet(x, 500, encoder_hidden_states=ehs).sample
        visual.conditions = [VisualCondition(slice(1, 3), VisualTokens(torch.cat([zero, subject])),
                                             mask=torch.cat([mask, mask]))]
        together = unet(x, 500, encoder_hidden_states=ehs).sample
        visual.conditions = []
        plain = unet(x, 500, encoder_hidden_states=ehs).sample
    assert torch.allclose(together, apart, atol=1e-6)
    assert torch.equal(together[0], plain[0]) and (together[1:] - plain[1:]).abs().amax() > 1e-3


def test_weights_on_projected_keys_equal_projecting_reweighted_features():
    unet = tm.sd_unet().eval()
    adapter = _adapter(unet)
    feats = adapter.project(torch.randn(2, 10, 16))
    scores = torch.rand(2, 10).softmax(-1)
    weights, index = reweight_and_select(scores, 0.6)
    assert index.shape == (2, 6) and (index.diff(dim=1) > 0).all()
    selected = torch.gather(feats, 1, index[..., None].expand(-1, -1, feats.shape[-1])) * weights[..., None]
    x, ehs = _unet_inputs(unet, batch=2)
    visual = RealCustomVisualAttention(adapter)
    with torch.no_grad(), get_manager(unet).applied(visual):
        visual.conditions = [VisualCondition(slice(0, 2), VisualTokens(feats), index=index, weights=weights)]
        a = unet(x, 500, encoder_hidden_states=ehs).sample
        visual.conditions = [VisualCondition(slice(0, 2), VisualTokens(selected))]
        b = unet(x, 500, encoder_hidden_states=ehs).sample
    assert torch.allclose(a, b, atol=1e-5)


# ------------------------------------------------------------------------------------ the reader
def _store_word_map(store, rows, weights):
    """The aggregated word map recomputed from the attention store's full-batch maps (the reference)."""
    maps = store.layer_maps()
    largest = max(store.resolution(n)[0] for n in maps)
    expected = torch.zeros(len(weights), largest, largest)
    for name, m in maps.items():  # (B, Q, K), heads averaged
        h, w = store.resolution(name)
        word = torch.einsum("bqk,bk->bq", m[rows], weights).view(len(weights), 1, h, w)
        expected += F.interpolate(word, size=(largest, largest), mode="bilinear", align_corners=False)[:, 0]
    return expected / len(maps), len(maps)


@pytest.mark.parametrize("compiling", [False, True])
def test_word_map_reader_matches_the_attention_store_and_computes_only_its_rows(monkeypatch, compiling):
    unet = tm.sd_unet().eval()
    x, ehs = _unet_inputs(unet)
    weights = token_weights([[3], [3, 4]], 77)
    store = AttentionStore(cond_only=False)
    reader = WordMapReader()
    if compiling:  # inside a compiled graph the reader computes each layer's map at once
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    manager = get_manager(unet)
    with torch.no_grad(), manager.applied(store, reader):
        reader.arm(slice(1, 3), weights)
        manager.start_run()
        unet(x, 500, encoder_hidden_states=ehs)
    expected, layers = _store_word_map(store, slice(1, 3), weights)
    assert reader.layers_read == layers
    assert reader.maps_computed == 2 * layers  # its 2 rows of the batch of 3, not all 3
    assert torch.allclose(reader.word_map(), expected, atol=1e-6)


def test_reader_alone_leaves_the_fused_kernel_and_flushes_before_the_next_call():
    unet = tm.sd_unet().eval()
    x, ehs = _unet_inputs(unet)
    weights = token_weights([[3]], 77)
    store = AttentionStore(cond_only=False)
    reader = WordMapReader()
    manager = get_manager(unet)
    with torch.no_grad(), manager.applied(reader):
        assert not any(p.needs_maps for p in unet.attn_processors.values() if hasattr(p, "needs_maps"))
        reader.arm(slice(0, 1), weights)
        manager.start_run()
        unet(x, 500, encoder_hidden_states=ehs)
        unet(x, 500, encoder_hidden_states=ehs)  # a second call while armed: both calls are summed
        two = reader.word_map()
    with torch.no_grad(), manager.applied(store):
        manager.start_run()
        unet(x, 500, encoder_hidden_states=ehs)
    expected, layers = _store_word_map(store, slice(0, 1), weights)
    assert reader.layers_read == 2 * layers
    assert torch.allclose(two, expected, atol=1e-6)  # the same input twice: the mean is one call's map


def test_reader_records_nothing_while_disarmed():
    unet = tm.sd_unet().eval()
    x, ehs = _unet_inputs(unet)
    reader = WordMapReader()
    with torch.no_grad(), get_manager(unet).applied(reader):
        unet(x, 500, encoder_hidden_states=ehs)
    assert reader.layers_read == 0
    with pytest.raises(Exception, match="no word map"):
        reader.word_map()
