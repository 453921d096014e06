"""TAR's temporal modules (heads of 9, which no fused kernel takes) run their attention over the frames as
two batched matrix products on CUDA (``ShortSequenceProcessor``): the values are those of diffusers'
processor, and on the CPU the call is diffusers' own."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from attncraft.attention_processors.ctgm import ShortSequenceProcessor, TemporalModule


def _module(channels: int, heads: int, dtype=torch.float32) -> TemporalModule:
    torch.manual_seed(0)
    module = TemporalModule(channels, heads=heads, max_frames=8).eval()
    for p in module.proj_out.parameters():  # a non-zero branch, so the attention's output matters
        torch.nn.init.normal_(p)
    return module.to(dtype)


def _attentions(module):
    return [a for b in module.transformer_blocks for a in (b.attn1, b.attn2) if a is not None]


def _explicit(module, max_length=8):
    """Give every attention an explicit processor that records whether SDPA's fallback ran."""
    fallbacks = []
    for attention in _attentions(module):
        proc = ShortSequenceProcessor(max_length=max_length, explicit_on_cpu=True)
        original = proc._stock
        proc._stock = lambda *a, _o=original, **k: (fallbacks.append(1), _o(*a, **k))[1]
        attention.set_processor(proc)
    return fallbacks


def _stock(module):
    for attention in _attentions(module):
        attention.set_processor(AttnProcessor2_0())


def _stock_then_explicit(module, x, frames: int, max_length: int = 8):
    """The module's output with diffusers' processor, then with the explicit one, and the explicit
    processors' fallbacks to SDPA."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _stock(module)
        ref = module(x, frames)
        fallbacks = _explicit(module, max_length)
        out = module(x, frames)
    return ref, out, fallbacks


def test_only_unaligned_head_widths_get_the_short_sequence_processor():
    tar = _module(77, 8)  # 77 text tokens as channels: 8 heads of 9
    assert [type(a.processor) for a in _attentions(tar)] == [ShortSequenceProcessor] * 2
    aligned = _module(64, 8)  # heads of 8: diffusers' own processor
    assert all(not isinstance(a.processor, ShortSequenceProcessor) for a in _attentions(aligned))


def test_explicit_attention_equals_the_stock_processor():
    module = _module(77, 8)
    x = torch.randn(2 * 3, 77, 2, 3)  # 2 clips of 3 frames, 2x3 latent pixels
    ref, out, fallbacks = _stock_then_explicit(module, x, 3)
    assert fallbacks == []  # the explicit path ran, not the stock fallback
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_in_half_precision_it_is_as_close_to_fp32_as_the_stock_processor():
    """The softmax in fp32: in bf16 the explicit path errs no more than SDPA does, against fp32."""
    module = _module(77, 8)
    x = torch.randn(4 * 6, 77, 4, 4)
    with torch.no_grad():
        _stock(module)
        exact = module(x, 6)
        module.to(torch.bfloat16)
        stock = module(x.bfloat16(), 6).float()
        _explicit(module)
        explicit = module(x.bfloat16(), 6).float()
    stock_err, explicit_err = (float((y - exact).abs().mean()) for y in (stock, explicit))
    assert 0 < explicit_err <= 1.1 * stock_err


def test_sequences_past_the_limit_go_to_sdpa():
    module = _module(77, 8)
    ref, out, fallbacks = _stock_then_explicit(module, torch.randn(2 * 3, 77, 2, 2), 3, max_length=2)  # 3 frames > 2
    assert len(fallbacks) == 2 and torch.equal(out, ref)


def test_stock_call_on_the_cpu_by_default_and_exact_there():
    module = _module(77, 8)
    x = torch.randn(2 * 3, 77, 2, 2)
    with torch.no_grad():
        out = module(x, 3)
        _stock(module)
        ref = module(x, 3)
    assert torch.equal(out, ref)  # on the CPU it is AttnProcessor2_0's call, bit for bit
