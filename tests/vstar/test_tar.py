"""VSTAR temporal attention regularization: the band, the logit edit, presets and levels, the
inclusive step gate, and identities through ``apply_techniques`` on the tiny AnimateDiff pipeline."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetMotionModel

import tiny_models as tm
from attncraft.attention_processors import get_manager
from attncraft.attention_processors.vstar import (
    VSTAR_PRESETS,
    TemporalAttentionRegularization,
    gaussian_band,
    parse_sigmas,
    regularize_scores,
    until_time_for,
)
from attncraft.errors import InputError, TechniqueError
from temporal_probe import Probe, count_active_calls, run_latents


def logits(rows=512, frames=16, seed=0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, frames, frames, generator=g) * 2 + shift


def distances(frames):
    idx = torch.arange(frames)
    return (idx[:, None] - idx[None, :]).abs().float()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0, 12.0])
def test_band_is_a_symmetric_toeplitz_gaussian_with_unit_diagonal(sigma):
    band = gaussian_band(16, sigma)
    d = distances(16)
    assert torch.equal(band, band.T) and torch.equal(band.diagonal(), torch.ones(16))
    for k in range(-15, 16):  # constant along every diagonal
        diag = band.diagonal(k)
        assert torch.equal(diag, diag[:1].expand_as(diag))
    assert torch.allclose(band, torch.exp(-d.square() / (2 * sigma**2)), atol=1e-7)
    assert torch.equal(gaussian_band(16, 0.0), torch.eye(16))
    assert (gaussian_band(16, 0.05) - torch.eye(16)).abs().max() < 1e-7


def test_the_bonus_is_strength_times_row_max_times_the_band_and_rows_stay_stochastic():
    s = logits()
    band = gaussian_band(16, 4.0)
    out = regularize_scores(s, band, 0.7)
    assert torch.allclose(out, s + 0.7 * s.amax(-1, keepdim=True) * band, atol=1e-6)
    assert torch.equal(regularize_scores(s, band, 0.0), s)
    assert (torch.softmax(out, -1).sum(-1) - 1).abs().max() <= 1e-6


def test_mass_near_the_diagonal_grows_with_strength_and_self_attention_as_sigma_shrinks():
    s = logits(shift=1.0)
    positive = s.amax(-1) > 0
    near = (distances(16) <= 1).float()
    previous = None
    for strength in (0.0, 0.25, 0.5, 1.0, 2.0):
        mass = (torch.softmax(regularize_scores(s, gaussian_band(16, 4.0), strength), -1) * near).sum(-1)
        if previous is not None:
            assert (mass[positive] >= previous[positive] - 1e-6).all()
            assert mass[positive].mean() > previous[positive].mean()
        previous = mass
    previous = None
    for sigma in (12.0, 8.0, 4.0, 2.0, 1.0, 0.5):  # decreasing: every off-diagonal bonus shrinks
        own = torch.softmax(regularize_scores(s, gaussian_band(16, sigma)), -1).diagonal(dim1=-2, dim2=-1)
        if previous is not None:
            assert (own[positive] >= previous[positive] - 1e-6).all()
            assert own[positive].mean() > previous[positive].mean()
        previous = own


def test_negative_row_maxima_penalise_neighbours_unless_clamped():
    s = -torch.rand(64, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5  # every logit negative
    band = gaussian_band(8, 2.0)
    plain = torch.softmax(s, -1).diagonal(dim1=-2, dim2=-1)
    faithful = torch.softmax(regularize_scores(s, band), -1).diagonal(dim1=-2, dim2=-1)
    assert (faithful < plain).all()  # the reference's sign hazard: the "bonus" is a penalty
    assert torch.equal(regularize_scores(s, band, clamp_rowmax=True), s)


def test_inclusive_gate_and_its_conversion_from_a_fraction():
    assert until_time_for(25) == 13  # the reference: 14 of 25 steps
    assert until_time_for(50) == 27 and until_time_for(3) == 1 and until_time_for(1) == 0
    assert TemporalAttentionRegularization(until_time=5).last_active_step(None) == 5
    with pytest.raises(TechniqueError, match="how many denoising steps"):
        TemporalAttentionRegularization().last_active_step(None)


def test_presets_name_levels_and_sigmas_override_them():
    assert VSTAR_PRESETS["64D4"] == {0: 4.0} and VSTAR_PRESETS["64D1_32D8"] == {0: 1.0, 1: 8.0}
    assert TemporalAttentionRegularization().sigmas == {0: 4.0}
    assert TemporalAttentionRegularization(sigmas="1, 8").sigmas == {0: 1.0, 1: 8.0}
    assert TemporalAttentionRegularization("64D1_32D8", sigmas=2).sigmas == {0: 2.0}
    assert parse_sigmas({1: 3}) == {1: 3.0}
    with pytest.raises(InputError, match="unknown VSTAR preset '64D2'.*64D4"):
        TemporalAttentionRegularization("64D2")
    with pytest.raises(InputError, match="VSTAR sigma must be"):
        TemporalAttentionRegularization(sigmas="4,-1")
    with pytest.raises(InputError, match="VSTAR sigma must be a number"):
        TemporalAttentionRegularization(sigmas="four")


def test_processor_counts_per_level_on_the_sd15_layout_and_on_the_tiny_unet():
    with torch.device("meta"):  # the SD 1.5 layout, free: no weights are allocated
        unet = UNetMotionModel(cross_attention_dim=768)
    manager = get_manager(unet)

    def names(sigmas):
        return {layer.name for layer in manager.layers_for(TemporalAttentionRegularization(sigmas=sigmas))}

    level0, level1 = names({0: 4}), names({1: 8})
    assert len(level0) == 10 and len(level1) == 10
    assert {n.split(".motion")[0] for n in level0} == {"down_blocks.0", "up_blocks.3"}
    assert {n.split(".motion")[0] for n in level1} == {"down_blocks.1", "up_blocks.2"}
    assert names(VSTAR_PRESETS["64D1_32D8"]) == level0 | level1
    assert len(names({3: 1})) == 12  # down_blocks.3, up_blocks.0 and the mid block
    tiny = tm.motion_unet()
    expected = 2 * (len(tiny.down_blocks[0].motion_modules) + len(tiny.up_blocks[1].motion_modules))
    assert len(get_manager(tiny).layers_for(TemporalAttentionRegularization())) == expected


@pytest.fixture(scope="module")
def pipe():
    return tm.animatediff_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    return run_latents(pipe, steps=3)


def test_strength_zero_and_outside_the_gate_leave_the_stock_output(pipe, stock):
    assert torch.equal(run_latents(pipe, TemporalAttentionRegularization(strength=0.0), steps=3), stock)
    assert torch.equal(run_latents(pipe, TemporalAttentionRegularization(until_time=-1), steps=3), stock)


@pytest.mark.parametrize("until_time, calls", [(None, 2), (7, 3)])
def test_active_on_exactly_the_gated_number_of_unet_calls(pipe, stock, until_time, calls):
    technique = TemporalAttentionRegularization("64D1_32D8", until_time=until_time)
    seen = count_active_calls(technique, "edit_scores")
    probe = Probe()
    out = run_latents(pipe, technique, probe, steps=3)
    assert len(seen) == calls and not torch.equal(out, stock)  # None: round(0.56 * 3) - 1 = 1, steps 0 and 1
    for (step, name), probs in probe.maps.items():
        assert (probs.sum(-1) - 1).abs().max() <= 1e-5, name


def test_tar_raises_attention_to_neighbouring_frames_in_the_pipeline(pipe):
    plain, regularised = Probe(), Probe()
    technique = TemporalAttentionRegularization(sigmas={0: 1.0}, until_time=0)
    edited, original = [], technique.edit_scores
    technique.edit_scores = lambda call, scores: edited.append(call.layer.level) or original(call, scores)
    run_latents(pipe, plain, steps=1)
    run_latents(pipe, technique, regularised, steps=1)
    assert edited and set(edited) == {0}
    name = "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1"  # the first layer: same input
    near = (distances(8) <= 1).float()
    before = (plain.maps[(0, name)] * near).sum(-1).mean()
    after = (regularised.maps[(0, name)] * near).sum(-1).mean()
    assert after > before
