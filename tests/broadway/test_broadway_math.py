"""BroadWay's math on synthetic row-stochastic maps: bands, Parseval, the 16-frame closed form, the
energy rule, identities, interpolation (the spec's "Acceptance evidence", unit part)."""

from __future__ import annotations

import pytest
import torch

from attncraft.attention_processors.broadway import (
    ALL_NON_DC,
    band_energy,
    band_operator,
    beta_rule,
    fourier_motion_enhancement,
    high_band,
    resize_reference_map,
    temporal_energy,
)
from attncraft.errors import InputError


def stochastic(*shape, seed=0, temperature=1.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64) * temperature, -1).to(dtype)


def literal_fme(a, beta, bins):
    """The reference formulation: FFT over keys, band scaled, inverse FFT, real part, renormalised."""
    x = torch.fft.fft(a.double(), dim=-1)
    scale = torch.ones(a.shape[-1], dtype=torch.float64)
    scale[bins] = beta
    out = torch.fft.ifft(x * scale, dim=-1).real
    return out / out.sum(-1, keepdim=True)


def literal_band_energy(a, bins):
    x = torch.fft.fft(a.double(), dim=-1)
    return (x[..., bins].abs().square().sum(-1) / a.shape[-1]).mean()


def test_high_band_is_centred_on_nyquist_and_tau_is_checked_against_frames():
    assert high_band(16, 7) == list(range(1, 16))
    assert high_band(24, 7) == list(range(5, 20))
    assert high_band(32, 7) == list(range(9, 24))
    assert high_band(8, 3) == list(range(1, 8)) and high_band(9, 3) == list(range(1, 8))
    assert high_band(24, ALL_NON_DC) == list(range(1, 24))
    for frames, tau in ((16, 8), (8, 4), (9, 4), (2, 1)):
        with pytest.raises(InputError, match=f"tau {tau} is too large for {frames} frames.*at most {frames // 2 - 1}"):
            high_band(frames, tau)
    with pytest.raises(InputError, match="at least 2 frames"):
        high_band(1, 0)


@pytest.mark.parametrize("frames", [8, 9, 16, 24])
def test_band_operator_matches_the_literal_fft_and_parseval_holds(frames):
    a = stochastic(64, frames, frames, seed=frames)
    bins = high_band(frames, 3)
    op = band_operator(frames, bins)
    for beta in (0.5, 1.5, 3.0):
        assert torch.allclose(fourier_motion_enhancement(a, beta, op), literal_fme(a, beta, bins).float(), atol=1e-6)
    e_high = band_energy(a, op)
    assert torch.allclose(e_high.double(), literal_band_energy(a, bins), atol=1e-7)
    low = [k for k in range(frames) if k not in bins]
    assert torch.allclose(e_high.double() + literal_band_energy(a, low), temporal_energy(a.double()), atol=1e-6)


def test_fme_at_16_frames_tau_7_is_the_affine_closed_form():
    a = stochastic(2 * 4 * 4, 8, 16, 16, seed=1)
    op = band_operator(16, high_band(16, 7))
    for beta in (0.7, 1.5, 4.0):
        out = fourier_motion_enhancement(a, beta, op)
        assert (out - (1 / 16 + beta * (a - 1 / 16))).abs().max() <= 1e-6
        assert (out.sum(-1) - 1).abs().max() <= 1e-6


def test_rows_sum_to_one_and_the_v1_clamp_leaves_no_negative_weight():
    a = stochastic(256, 16, 16, seed=2)
    op = band_operator(16, high_band(16, 7))
    kept = fourier_motion_enhancement(a, 1.5, op)
    assert (kept < 0).any(), "beta 1.5 on random maps must make some weights negative (ByTheWay keeps them)"
    clamped = fourier_motion_enhancement(a, 1.5, op, clamp_negative=True)
    assert (clamped >= 0).all()
    for out in (kept, clamped):
        assert (out.sum(-1) - 1).abs().max() <= 1e-6


def test_beta_c_restores_the_pre_guidance_energy_exactly_and_larger_beta_exceeds_it():
    a = stochastic(512, 16, 16, seed=3, temperature=2.0, dtype=torch.float64)
    ref = stochastic(512, 16, 16, seed=4, temperature=0.5, dtype=torch.float64)  # flatter: TSG lowers the energy
    op = band_operator(16, high_band(16, 7)).double()
    guided = torch.lerp(a, ref, 0.6)
    e1, e2 = temporal_energy(a), temporal_energy(guided)
    assert e2 < e1
    e2_high = band_energy(guided, op)
    beta_c = beta_rule(e1, e2, e2_high, 0.0)
    assert torch.allclose(beta_c, torch.sqrt((e1 - 1 / 16) / (e2 - 1 / 16)))  # E2_l = 1/F at 16 frames
    # exact up to the 1e-12 the rule adds to E2_h (E2_h is about 0.2 here)
    assert abs(float(temporal_energy(fourier_motion_enhancement(guided, beta_c, op)) - e1)) <= 1e-10
    for beta_user in (1.0, 1.5, 3.0):
        beta = beta_rule(e1, e2, e2_high, beta_user)
        assert float(beta) >= beta_user and float(beta) >= float(beta_c)
        assert float(temporal_energy(fourier_motion_enhancement(guided, beta, op))) >= float(e1) - 1e-10


def test_beta_rule_falls_back_to_the_user_beta_where_beta_c_is_undefined():
    uniform = torch.full((4, 16, 16), 1 / 16, dtype=torch.float64)
    op = band_operator(16, high_band(16, 7)).double()
    e = temporal_energy(uniform)
    assert float(band_energy(uniform, op)) == pytest.approx(0.0, abs=1e-15)
    assert float(beta_rule(e, e, band_energy(uniform, op), 1.5)) == 1.5
    # E1 below the low band's energy: numerator clamped at 0, so beta_c = 0 and beta = beta_user
    assert float(beta_rule(torch.tensor(0.01), torch.tensor(0.5), torch.tensor(0.2), 1.2)) == pytest.approx(1.2)


@pytest.mark.parametrize("frames", [8, 12, 16])
def test_alpha_zero_is_a_no_op_and_alpha_zero_with_beta_at_most_one_leaves_maps_unchanged(frames):
    a = stochastic(64, frames, frames, seed=frames)
    ref = stochastic(64, frames, frames, seed=frames + 1)
    assert torch.equal(torch.lerp(a, ref, 0.0), a)  # TSG, alpha 0: bit-equal
    assert torch.equal(torch.lerp(a, ref, 1.0), ref)  # alpha 1 copies the reference
    op = band_operator(frames, high_band(frames, 2))
    e = temporal_energy(a)
    beta = beta_rule(e, e, band_energy(a, op), 0.8)
    assert float(beta) == pytest.approx(1.0, abs=1e-5)  # E2 = E1, so beta_c = 1
    assert torch.allclose(fourier_motion_enhancement(a, beta, op), a, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resized_reference_maps_stay_row_stochastic_and_keep_the_batch_layout(mode):
    batch, h1, w1, heads, frames = 2, 4, 3, 2, 8
    ref = stochastic(batch * h1 * w1, heads, frames, frames, seed=5)
    out = resize_reference_map(ref, (h1, w1), (8, 6), mode)
    assert out.shape == (batch * 8 * 6, heads, frames, frames)
    assert (out.sum(-1) - 1).abs().max() <= 1e-6
    grid_in = ref.reshape(batch, h1, w1, heads, frames, frames)
    grid_out = out.reshape(batch, 8, 6, heads, frames, frames)
    if mode == "nearest":  # an integer factor: each reference position fills a 2x2 patch
        expected = grid_in.repeat_interleave(2, 1).repeat_interleave(2, 2)
        assert torch.equal(grid_out, expected)
    # the uncond/cond halves stay apart: batch 1's maps come from batch 1's reference only
    assert torch.allclose(grid_out[1].mean((0, 1)), grid_in[1].mean((0, 1)), atol=1e-6)
    assert torch.equal(resize_reference_map(ref, (h1, w1), (h1, w1), mode), ref)
