"""TAR's temporal modules (heads of 9) run their attention with each head padded to a multiple of 8 on
CUDA (``AlignedHeadsProcessor``), so SDPA can take a fused kernel: the padding changes no value."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from attncraft.attention_processors.ctgm import AlignedHeadsProcessor, TemporalModule


def _module(channels: int, heads: int) -> TemporalModule:
    torch.manual_seed(0)
    module = TemporalModule(channels, heads=heads, max_frames=8).eval()
    for p in module.proj_out.parameters():  # a non-zero branch, so the attention's output matters
        torch.nn.init.normal_(p)
    return module


def _processors(module):
    return [a.processor for b in module.transformer_blocks for a in (b.attn1, b.attn2) if a is not None]


def test_only_unaligned_head_widths_get_the_aligned_processor():
    tar = _module(77, 8)  # 77 text tokens as channels: 8 heads of 9
    assert [type(p) for p in _processors(tar)] == [AlignedHeadsProcessor] * 2
    aligned = _module(64, 8)  # heads of 8: diffusers' own processor
    assert all(not isinstance(p, AlignedHeadsProcessor) for p in _processors(aligned))


def test_padded_heads_equal_the_stock_processor():
    module = _module(77, 8)
    x = torch.randn(2 * 3, 77, 2, 3)  # 2 clips of 3 frames, 2x3 latent pixels
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        for attention in (a for b in module.transformer_blocks for a in (b.attn1, b.attn2)):
            attention.set_processor(AttnProcessor2_0())
        ref = module(x, 3)
        padded = []
        for attention in (a for b in module.transformer_blocks for a in (b.attn1, b.attn2)):
            proc = AlignedHeadsProcessor(pad_on_cpu=True)
            calls = []
            original = proc._stock
            proc._stock = lambda *a, _o=original, _c=calls, **k: (_c.append(1), _o(*a, **k))[1]
            attention.set_processor(proc)
            padded.append(calls)
        out = module(x, 3)
    assert all(calls == [] for calls in padded)  # the padded path ran, not the stock fallback
    assert not torch.allclose(out, x) and torch.allclose(out, ref, atol=1e-6, rtol=1e-5)


def test_padding_is_off_on_the_cpu_by_default_and_exact_there():
    module = _module(77, 8)
    x = torch.randn(2 * 3, 77, 2, 2)
    with torch.no_grad():
        out = module(x, 3)
        for attention in (a for b in module.transformer_blocks for a in (b.attn1, b.attn2)):
            attention.set_processor(AttnProcessor2_0())
        ref = module(x, 3)
    assert torch.equal(out, ref)  # on the CPU it is AttnProcessor2_0's call, bit for bit
