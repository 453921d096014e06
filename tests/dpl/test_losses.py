"""DPL's losses, thresholds and background mask against hand-computed values on small tensors."""

from __future__ import annotations

import math

import pytest
import torch

from attncraft.attention_processors.dpl import (
    DPLConfig,
    attention_balancing_loss,
    background_loss,
    background_masks,
    below_thresholds,
    disjoint_loss,
    dpl_losses,
    kmeans,
    smoothing_kernel,
    thresholds,
)
from attncraft.errors import InputError


def maps_from(columns: dict[int, list[float]], hw=(2, 2), keys=6) -> torch.Tensor:
    """(1, h, w, keys) maps with the given token columns (flattened h*w values), zeros elsewhere."""
    A = torch.zeros(1, hw[0] * hw[1], keys)
    for k, values in columns.items():
        A[0, :, k] = torch.tensor(values)
    return A.reshape(1, *hw, keys)


def test_thresholds_match_the_spec_table():
    cfg = DPLConfig()
    table = {0: (0.300, 0.700, 0.900), 10: (0.201, 0.573, 0.603), 25: (0.110, 0.425, 0.331), 49: (0.0423, 0.263, 0.127)}
    for i, expected in table.items():
        assert thresholds(i, cfg) == pytest.approx(expected, abs=6e-4)
    t_at, t_bg, _ = thresholds(49, cfg)
    assert t_at == pytest.approx(0.3 * math.exp(-49 / 25)) and round(t_at, 5) == 0.04226 and round(t_bg, 5) == 0.26272


def test_smoothing_kernel_is_attend_and_excites():
    k = smoothing_kernel(0.5)
    side = math.exp(-1.0) / (1 + 2 * math.exp(-1.0))  # exp(-(x / (2 * 0.5))^2) at x = 1, normalised
    centre = 1 / (1 + 2 * math.exp(-1.0))
    assert k.shape == (3, 3) and k.sum().item() == pytest.approx(1.0)
    assert k[1, 1].item() == pytest.approx(centre ** 2) and k[0, 0].item() == pytest.approx(side ** 2)
    assert k[0, 1].item() == pytest.approx(side * centre)
    # made on the device asked for, with no CPU tensor on the way (a compiled graph keeps no CPU operation)
    meta = smoothing_kernel(0.5, device="meta")
    assert meta.device.type == "meta" and meta.shape == (3, 3) and meta.dtype == torch.float32
    assert torch.equal(smoothing_kernel(0.5, device="cpu"), k)


def test_attention_balancing_loss_by_hand():
    # keys: 0 start, 1..4 text, 5 dropped like the end; token 1 holds 0.01 more than tokens 2..4 at pixel 0
    A = maps_from({1: [0.01, 0.0, 0.0, 0.0]})
    p_top = math.e / (math.e + 3)  # softmax(100 * [0.01, 0, 0, 0]) over the four kept keys
    loss = attention_balancing_loss(A, torch.tensor([1]), smooth=False)
    assert loss.item() == pytest.approx(1 - p_top, abs=1e-6)
    # two tokens: the loss is the worse token's; token 2 peaks at 1/4 (pixels 1..3) or 1/(e+3) (pixel 0)
    loss2 = attention_balancing_loss(A, torch.tensor([1, 2]), smooth=False)
    assert loss2.item() == pytest.approx(1 - 0.25, abs=1e-6)
    # a constant map stays constant under smoothing with reflect padding: 4 kept keys -> 1/4 each
    flat = maps_from({k: [0.3] * 4 for k in range(6)})
    assert attention_balancing_loss(flat, torch.tensor([2]), smooth=True).item() == pytest.approx(0.75, abs=1e-6)
    # the re-softmaxed maps sum to one over the kept keys (spec: tokens 1..75 of 77)
    A77 = torch.rand(2, 4, 4, 77)
    assert torch.allclose(torch.softmax(100 * A77[..., 1:-1], -1).sum(-1), torch.ones(2, 4, 4), atol=1e-5)
    assert 0 <= attention_balancing_loss(A77, torch.tensor([3, 9])).min() and attention_balancing_loss(A77, torch.tensor([3, 9])).max() <= 1


def test_disjoint_loss_by_hand():
    same = maps_from({1: [1, 0, 1, 0], 2: [1, 0, 1, 0]})
    assert disjoint_loss(same, torch.tensor([1, 2])).item() == pytest.approx(1.0)
    apart = maps_from({1: [1, 0, 0, 0], 2: [0, 1, 1, 0]})
    assert disjoint_loss(apart, torch.tensor([1, 2])).item() == 0.0
    three = maps_from({1: [1, 0, 1, 0], 2: [1, 1, 0, 0], 3: [0, 0, 0, 1]})
    # pairs (2,1): cos 1/2, (3,1): 0, (3,2): 0 -> mean 1/6
    assert disjoint_loss(three, torch.tensor([1, 2, 3])).item() == pytest.approx(1 / 6)
    assert disjoint_loss(same, torch.tensor([1])).item() == 0.0  # one noun: 0, not NaN
    # a padded token slot takes no part
    valid = torch.tensor([[True, True, False]])
    assert disjoint_loss(three, torch.tensor([[1, 2, 3]]), valid=valid).item() == pytest.approx(0.5)


def test_background_loss_and_a_missing_background():
    A = maps_from({1: [1, 0, 0, 0], 2: [0, 0, 1, 1]})
    bg = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # cos([1,0,0,0], [1,1,0,0]) = 1/sqrt(2); cos([0,0,1,1], [1,1,0,0]) = 0
    assert background_loss(A, torch.tensor([1, 2]), bg).item() == pytest.approx(0.5 / math.sqrt(2))
    cfg = DPLConfig()
    values = dpl_losses(A, torch.tensor([1, 2]), None, None, cfg, step=0)
    assert values.bg.item() == 0.0 and not values.has_background.item() and torch.isfinite(values.total).all()
    values2 = dpl_losses(A, torch.tensor([1, 2]), bg, torch.tensor([False]), cfg, step=0)
    assert values2.bg.item() == 0.0 and values2.total.item() == pytest.approx(values.total.item())
    with_bg = dpl_losses(A, torch.tensor([1, 2]), bg, torch.tensor([True]), cfg, step=0)
    assert with_bg.total.item() == pytest.approx(with_bg.at.item() + 0.05 * with_bg.dj.item() + 0.05 * with_bg.bg.item())
    # the early stop ignores L_bg where there is no background
    ok = below_thresholds(values, 0, cfg)
    assert ok.item() == bool(values.at.item() < 0.3 and values.dj.item() < 0.9)


def test_config_is_validated():
    with pytest.raises(InputError):
        DPLConfig(lr=-1).validate()
    with pytest.raises(InputError):
        DPLConfig(bg_downsample="bicubic").validate()
    with pytest.raises(InputError):
        DPLConfig(precision="int8").validate()


def test_kmeans_and_background_masks_on_a_synthetic_scene():
    # 4x4 pixels: an object in the top-left 2x2 block, background elsewhere; self-attention rows
    # attend within their region, the noun's cross-attention is high on the object
    obj = torch.zeros(4, 4, dtype=torch.bool)
    obj[:2, :2] = True
    flat = obj.flatten()
    sa = torch.where(flat[:, None] == flat[None, :], 1.0, 0.0)
    sa = (sa / sa.sum(-1, keepdim=True))[None]
    labels = kmeans(sa, k=2, restarts=3, seed=1)
    assert len(set(labels[0, flat].tolist())) == 1 and len(set(labels[0, ~flat].tolist())) == 1
    assert labels[0, flat][0] != labels[0, ~flat][0]
    noun = torch.where(obj, 0.9, 0.05)[None, None]
    cfg = DPLConfig(clusters=2, cluster_restarts=3)
    masks = background_masks(sa, (4, 4), noun, torch.tensor([[True]]), [["circle"]], (4, 4), cfg)
    assert torch.equal(masks.masks[0], ~obj) and masks.has_background.item()
    assert sorted(masks.cluster_names[0]) == ["BG", "circle"]
    # downsampled to 2x2: nearest keeps the three background cells
    small = background_masks(sa, (4, 4), noun, torch.tensor([[True]]), [["circle"]], (2, 2), cfg)
    assert small.masks[0].tolist() == [[False, True], [True, True]]
    # a second noun on the rest: every cluster is a noun's, no background (reported as such)
    two = torch.stack([torch.where(obj, 0.9, 0.05), torch.where(obj, 0.05, 0.9)])[None]
    none = background_masks(sa, (4, 4), two, torch.tensor([[True, True]]), [["circle", "square"]], (4, 4), cfg)
    assert not none.has_background.item() and not none.masks.any()
    assert sorted(none.cluster_names[0]) == ["circle", "square"]
