"""RealCustom's per-call host work: the lean visual branch gives the numbers of the straightforward one.

The reference below is the visual branch written the direct way (each layer projects nothing new
but splits, casts, selects and masks its keys/values at every call, and adds through a copy), the
form the technique had before its host work was cut; the technique must give the same bits, with
fewer tensor operations per UNet call.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tiny_models as tm
from attncraft.attention_processors import get_manager
from attncraft.attention_processors import realcustom as rc
from attncraft.attention_processors.realcustom import (
    RealCustomVisualAttention,
    VisualCondition,
    VisualTokens,
    adaptive_mask,
    resize_mask,
)
from attncraft.realcustom.modules import RealCustomAdapter, reweight_and_select


class ReferenceVisualAttention(RealCustomVisualAttention):
    """The visual branch, each step done per layer and call (the reference of the parity tests)."""

    def edit_output(self, call, output):
        if not self.conditions:
            return output
        hw = call.resolution
        kv = self.adapter.kv(call.layer.name)
        heads, query = call.attn.heads, call.query
        head_dim = query.shape[-1]
        in_place = not torch.is_grad_enabled()
        pieces, pos = [], 0
        for cond in sorted(self.conditions, key=lambda c: c.rows.start):
            rows = cond.rows
            q = query[rows]
            k, v = cond.tokens.keys_values(call.layer.name, kv)
            if cond.index is not None:
                gather = cond.index[..., None].expand(-1, -1, k.shape[-1])
                k, v = k.gather(1, gather), v.gather(1, gather)
            if cond.weights is not None:
                w = cond.weights[..., None].to(k.dtype)
                k, v = k * w, v * w
            b = q.shape[0]
            k = k.to(q.dtype).view(b, -1, heads, head_dim).transpose(1, 2)
            v = v.to(q.dtype).view(b, -1, heads, head_dim).transpose(1, 2)
            vis = rc.sdpa(q, k, v).transpose(1, 2).reshape(b, -1, heads * head_dim)
            if cond.mask is not None:
                vis = vis * resize_mask(cond.mask.float(), hw).to(vis.dtype)
            if in_place:
                output[rows] += vis.to(output.dtype)
            else:
                pieces += [output[pos:rows.start], output[rows] + vis.to(output.dtype)]
                pos = rows.stop
        if in_place:
            return output
        pieces.append(output[pos:])
        return torch.cat(pieces)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def _setup(dtype, feature_dtype=None, seed=0):
    unet = tm.sd_unet().eval().to(dtype)
    adapter = RealCustomAdapter.from_unet(unet, 16, init="text", seed=0).to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 16, 16, generator=g).to(dtype)
    ehs = torch.randn(3, 77, unet.config.cross_attention_dim, generator=g).to(dtype)
    feats = adapter.project(torch.randn(2, 10, 16, generator=g).to(dtype)).to(feature_dtype or dtype)
    mask = adaptive_mask(torch.rand(1, 16, 16, generator=g), 0.25)
    weights, index = reweight_and_select(torch.rand(1, 10, generator=g).softmax(-1), 0.6)
    return unet, adapter, x, ehs, feats, mask, index, weights


def _conditions(kind, feats, mask, index, weights):
    """Fresh conditions (each variant gets its own caches)."""
    if kind == "release":  # one condition over two adjacent blocks, as the release pipeline builds it
        return [VisualCondition(slice(1, 3), VisualTokens(feats), mask=torch.cat([mask, mask]))]
    if kind == "paper":  # the scoring module's selection and weights, on the last row
        return [VisualCondition(slice(2, 3), VisualTokens(feats[1:]), index=index, weights=weights, mask=mask)]
    if kind == "whole":  # every row, no mask
        return [VisualCondition(slice(0, 3), VisualTokens(torch.cat([feats, feats[:1]])))]
    # two conditions given out of order, one of them without a mask
    return [VisualCondition(slice(2, 3), VisualTokens(feats[1:]), mask=mask),
            VisualCondition(slice(0, 1), VisualTokens(feats[:1]), index=index, weights=weights)]


def _run(unet, technique, conditions, x, ehs, calls=2, counter=None):
    outs = []
    with get_manager(unet).applied(technique):
        for i in range(calls):  # the second call reuses what the first one cached
            technique.conditions = list(conditions)
            if counter is not None and i == calls - 1:
                with counter:
                    outs.append(unet(x, 500 - i, encoder_hidden_states=ehs).sample)
            else:
                outs.append(unet(x, 500 - i, encoder_hidden_states=ehs).sample)
        technique.conditions = []
    return outs


@pytest.mark.parametrize("dtype,feature_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                                 (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("kind", ["release", "paper", "whole", "two"])
def test_lean_visual_branch_is_bit_equal_to_the_reference_and_issues_fewer_ops(kind, dtype, feature_dtype):
    unet, adapter, x, ehs, feats, mask, index, weights = _setup(dtype, feature_dtype)
    ours, theirs = _CountOps(), _CountOps()
    with torch.no_grad():
        new = _run(unet, RealCustomVisualAttention(adapter), _conditions(kind, feats, mask, index, weights), x, ehs,
                   counter=ours)
        ref = _run(unet, ReferenceVisualAttention(adapter), _conditions(kind, feats, mask, index, weights), x, ehs,
                   counter=theirs)
    for a, b in zip(new, ref):
        assert torch.equal(a, b)
    assert ours.ops < theirs.ops, (ours.ops, theirs.ops)


@pytest.mark.parametrize("kind", ["release", "paper", "two"])
def test_training_path_is_bit_equal_and_has_the_same_gradients(kind):
    unet, adapter, x, ehs, feats, mask, index, weights = _setup(torch.float32)
    feats = feats.detach()
    grads = []
    for cls in (RealCustomVisualAttention, ReferenceVisualAttention):
        adapter.zero_grad(set_to_none=True)
        conditions = _conditions(kind, feats, mask, index, weights)
        for cond in conditions:
            cond.tokens.cache = False  # training projects afresh at every call
        (out,) = _run(unet, cls(adapter), conditions, x, ehs, calls=1)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in adapter.visual.parameters() if p.grad is not None]))
    (a, ga), (b, gb) = grads
    assert torch.equal(a, b)
    assert len(ga) == len(gb) > 0 and all(torch.equal(p, q) for p, q in zip(ga, gb))


@pytest.mark.parametrize("settings", [dict(guidance_mode="release", use_scoring=False),
                                      dict(guidance_mode="release", use_scoring=False, mask_reused_step=2),
                                      dict(guidance_mode="paper", use_scoring=True, image_guidance_scale=3.0)])
def test_pipeline_is_bit_equal_with_the_reference_branch(monkeypatch, settings):
    from test_realcustom_pipeline import _pipe

    import attncraft.pipelines.realcustom as pipeline_module

    pipe = _pipe()
    subject = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))

    def sample():
        return pipe("a red circle on the left", subject_image=subject, subject_word="circle", num_inference_steps=4,
                    height=32, width=32, output_type="latent", generator=torch.Generator().manual_seed(0), **settings)

    new = sample()
    monkeypatch.setattr(pipeline_module, "RealCustomVisualAttention", ReferenceVisualAttention)
    ref = sample()
    assert torch.equal(new.images, ref.images) and torch.equal(new.masks, ref.masks)
