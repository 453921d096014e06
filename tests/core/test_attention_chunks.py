"""Fused attention in batch slices within the CUDA grid limit (``backends.MAX_KERNEL_BATCH``): SDPA slices
a batch above the limit (its grid holds the heads apart), xformers keeps ``batch * heads`` within it; the
slices are equal and the result is exactly the one-call result (math backend), for SDPA, the xformers path
(fake xformers that records what it receives), the core processor on an AnimateDiff UNet's temporal layers,
CTGM's temporal modules (TAR) and FancyVideo's VAE attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import tiny_models as tm
from attncraft.attention_processors import backends
from attncraft.attention_processors.backends import MAX_KERNEL_BATCH, batch_chunk_size, chunk_rows, map_batch_chunks, sdpa


def _qkv(batch, heads, q_tokens=5, k_tokens=7, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads) if heads else (batch,)
    return [torch.randn(*shape, n, dim, generator=g) for n in (q_tokens, k_tokens, k_tokens)]


def test_chunk_size_keeps_batch_times_heads_within_the_limit():
    assert MAX_KERNEL_BATCH == 65535
    assert batch_chunk_size(8) == 8191 and 8191 * 8 <= MAX_KERNEL_BATCH < 8192 * 8
    assert batch_chunk_size(1) == MAX_KERNEL_BATCH
    assert batch_chunk_size(100, limit=10) == 1  # never zero rows
    with pytest.raises(ValueError):
        batch_chunk_size(1, limit=0)


def test_chunk_rows_are_equal_slices_of_the_fewest_pieces():
    assert chunk_rows(8192, heads=8) == 4096  # two slices of 4096, not 8191 + 1
    assert chunk_rows(65536) == 32768 and chunk_rows(65535) == 65535
    assert chunk_rows(10, heads=2, limit=6) == 3  # at most 3 rows: 4 pieces of ceil(10 / 4) = 3
    assert chunk_rows(11, limit=5) == 4  # 3 pieces: 4 + 4 + 3
    assert chunk_rows(7, limit=100) == 7


def test_map_batch_chunks_slices_and_passes_none_through():
    seen = []

    def fn(x, nothing):
        seen.append((x.shape[0], nothing))
        return x * 2

    x = torch.arange(10.0)
    assert torch.equal(map_batch_chunks(fn, (x, None), heads=2, limit=6), x * 2)
    assert seen == [(3, None), (3, None), (3, None), (1, None)]
    seen.clear()
    map_batch_chunks(fn, (x, None), heads=2, limit=20)
    assert seen == [(10, None)]  # fits: one call on the tensors as given


@pytest.mark.parametrize("mask_kind", ["none", "per_row", "broadcast"])
def test_chunked_sdpa_equals_one_call_exactly(mask_kind):
    q, k, v = _qkv(11, 3)
    mask = {"none": None, "per_row": torch.randn(11, 3, 5, 7), "broadcast": torch.randn(1, 1, 5, 7)}[mask_kind]
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        for limit in (3, 7, 12, 32):  # 1, 2, 4 and 10 rows a slice
            assert torch.equal(sdpa(q, k, v, mask, limit=limit), ref)
    assert torch.equal(sdpa(q, k, v, mask, limit=7), sdpa(q, k, v, mask))  # default backend too


def test_sdpa_makes_the_stock_call_at_animatediff_temporal_size():
    """2 * 64 * 64 = 8192 sequences with 8 heads (65536 (sequence, head) pairs): SDPA's kernels hold the
    heads on a grid dimension of their own, so this is the one call AttnProcessor2_0 makes; 65536
    sequences (CTGM's TAR) are past the limit and go in two equal slices."""
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(tuple(args[0].shape[:2]))
        return original(*args, **kwargs)

    q, k, v = _qkv(8192, 8, q_tokens=2, k_tokens=2, dim=1)
    with sdpa_kernel(SDPBackend.MATH), pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "scaled_dot_product_attention", recording)
        out = sdpa(q, k, v)
        assert calls == [(8192, 8)]
        calls.clear()
        q2, k2, v2 = _qkv(65536, 1, q_tokens=2, k_tokens=2, dim=1)
        out2 = sdpa(q2, k2, v2)
        assert calls == [(32768, 1), (32768, 1)]
    with sdpa_kernel(SDPBackend.MATH):
        assert torch.equal(out, original(q, k, v)) and torch.equal(out2, original(q2, k2, v2))


def test_chunked_sdpa_three_dimensional_counts_one_head():
    q, k, v = _qkv(9, 0)
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    with sdpa_kernel(SDPBackend.MATH), pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "scaled_dot_product_attention", recording)
        out = sdpa(q, k, v, limit=4)
    assert calls == [3, 3, 3]  # 9 rows, at most 4 a slice: three equal slices
    with sdpa_kernel(SDPBackend.MATH):
        assert torch.equal(out, original(q, k, v))


def _recording_xformers(fake_xformers):
    batches = []

    def attention(q, k, v, attn_bias=None):  # xformers' (batch, tokens, heads, head_dim) layout
        batches.append((q.shape[0], q.shape[2]))
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=attn_bias).transpose(1, 2)  # fmt: skip

    return fake_xformers(attention), batches


def test_xformers_path_splits_a_large_batch_and_equals_one_call(fake_xformers):
    ops, batches = _recording_xformers(fake_xformers)
    q, k, v = _qkv(10, 3)
    mask = torch.randn(10, 3, 5, 7)
    with sdpa_kernel(SDPBackend.MATH):
        ref = backends._xformers_attention(ops, q, k, v, mask, limit=1000)
        assert batches == [(10, 3)]
        batches.clear()
        out = backends._xformers_attention(ops, q, k, v, mask, limit=9)
    assert batches == [(3, 3), (3, 3), (3, 3), (1, 3)] and all(b * h <= 9 for b, h in batches)  # 10 = 3+3+3+1
    assert torch.equal(out, ref)


def test_xformers_path_at_animatediff_temporal_size_stays_within_the_grid_limit(fake_xformers):
    """The failing shape: 2 * 64 * 64 = 8192 sequences of 16 frames with 8 heads (65536 > 65535)."""
    ops, batches = _recording_xformers(fake_xformers)
    q, k, v = _qkv(8192, 8, q_tokens=16, k_tokens=16, dim=2)
    with sdpa_kernel(SDPBackend.MATH):
        out = backends._xformers_attention(ops, q, k, v, None)
        ref = F.scaled_dot_product_attention(q, k, v)
    assert batches == [(4096, 8), (4096, 8)] and all(b * h <= MAX_KERNEL_BATCH for b, h in batches)
    assert torch.equal(out, ref)


def test_core_processor_on_temporal_layers_is_exact_when_chunked(monkeypatch):
    """The whole motion UNet with the core processor on every layer: a tiny grid limit (forcing slices on
    every layer) gives exactly the output of the default limit (one call a layer at this size)."""
    from attncraft.attention_processors import get_manager

    unet = tm.motion_unet(seed=0).eval()
    get_manager(unet).install_core()
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 3, 8, 8, generator=g)
    text = torch.randn(3, 77, 32, generator=g)
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
        ref = unet(sample, 10, encoder_hidden_states=text).sample
        whole = max(calls)
        calls.clear()
        monkeypatch.setattr(backends, "MAX_KERNEL_BATCH", 8)
        out = unet(sample, 10, encoder_hidden_states=text).sample
    assert whole > 8 and calls and max(calls) <= 8  # the temporal layers' batches were sliced
    assert torch.equal(out, ref)


def test_ctgm_temporal_module_is_exact_when_chunked():
    """TAR's sequences (clip, attn2 head, pixel) through a temporal module in slices: the same values."""
    from attncraft.attention_processors.ctgm import TemporalModule

    torch.manual_seed(0)
    module = TemporalModule(16, heads=4, max_frames=8).eval()
    for p in module.proj_out.parameters():  # a non-zero branch, so the blocks' output matters
        torch.nn.init.normal_(p)
    x = torch.randn(2 * 3, 16, 4, 4)  # 2 clips of 3 frames: 32 sequences
    sizes = []
    module.transformer_blocks[0].attn1.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ref = module(x, 3)
        assert sizes == [32]
        sizes.clear()
        module.kernel_batch_limit = 5  # at most 5 sequences a slice: 7 equal slices of 5 (the last 2)
        out = module(x, 3)
    assert sizes == [5] * 6 + [2]
    assert not torch.equal(out, x) and torch.equal(out, ref)


def test_fancyvideo_vae_temporal_attention_is_exact_when_chunked(monkeypatch):
    from attncraft.fancyvideo.vae import SpatialTemporalAttention

    torch.manual_seed(0)
    layer = SpatialTemporalAttention(32).eval()
    x = torch.randn(1, 32, 3, 4, 4)  # temporal attention: 16 positions, sequences of 3 frames
    calls = []
    original = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        ref = layer(x)
        monkeypatch.setattr(backends, "MAX_KERNEL_BATCH", 3)
        monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
        out = layer(x)
    assert calls == [3] + [3] * 5 + [1]  # spatial (3 frames), then the 16 temporal sequences in slices
    assert torch.equal(out, ref)
