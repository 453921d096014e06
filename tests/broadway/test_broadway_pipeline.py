"""BroadWay through ``apply_techniques`` on diffusers' stock ``AnimateDiffPipeline`` (tiny, CPU):
placement, identities, the step window, the reference maps, the energy rule, tau errors.

The tiny UNet has two up blocks (``up_blocks.0`` at half resolution, ``up_blocks.1`` at full), so the
tests guide from ``up_blocks.0`` (``reference_block=0``): the reference map is then resized 8x8 ->
16x16, as ``up_blocks.1`` -> ``up_blocks.2/3`` on SD 1.5. Eight frames with tau 3 make the high band
every non-DC bin, where the 16-frame closed form holds too.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetMotionModel

import tiny_models as tm
from attncraft.attention_processors import apply_techniques, get_manager
from attncraft.attention_processors.broadway import BroadWay, resize_reference_map
from attncraft.errors import InputError, TechniqueError
from temporal_probe import Probe, count_active_calls, run_latents


@pytest.fixture(scope="module")
def pipe():
    return tm.animatediff_pipeline()


@pytest.fixture(scope="module")
def stock(pipe):
    return run_latents(pipe)


def broadway(**kw):
    kw.setdefault("reference_block", 0)
    kw.setdefault("tau", 3)
    return BroadWay(**kw)


def test_placement_is_every_temporal_layer_of_the_reference_and_later_up_blocks():
    with torch.device("meta"):  # the SD 1.5 layout, free: no weights are allocated
        unet = UNetMotionModel(cross_attention_dim=768)
    manager = get_manager(unet)
    names = sorted(layer.name for layer in manager.layers_for(BroadWay()))
    expected = sorted(f"up_blocks.{b}.motion_modules.{m}.transformer_blocks.0.attn{a}"
                      for b in (1, 2, 3) for m in (0, 1, 2) for a in (1, 2))  # fmt: skip
    assert names == expected and len(names) == 18
    tiny = tm.motion_unet()
    expected_tiny = sum(2 * len(block.motion_modules) for block in tiny.up_blocks)  # from the config
    assert len(get_manager(tiny).layers_for(broadway())) == expected_tiny
    assert len(get_manager(tiny).layers_for(BroadWay(reference_block=1))) == 2 * len(tiny.up_blocks[1].motion_modules)


def test_alpha_zero_guidance_is_bit_equal_to_the_pipeline_without_it(pipe, stock):
    assert torch.equal(run_latents(pipe, broadway(alpha=0.0, motion_enhancement=False)), stock)


def test_outside_the_step_window_the_output_is_the_stock_output(pipe, stock):
    assert torch.equal(run_latents(pipe, broadway(num_active_steps=0)), stock)
    assert torch.equal(run_latents(pipe, broadway(step_fraction=0.2)), stock)  # floor(0.2 * 2) = 0 steps


def test_window_counts_denoising_steps_from_the_pipelines_scheduler(pipe, stock):
    technique = broadway(step_fraction=0.5)  # floor(0.5 * 2) = 1: step 0 only
    seen = count_active_calls(technique, "edit_probs")
    probe = Probe()
    out = run_latents(pipe, technique, probe)
    assert len(seen) == 1 and not torch.equal(out, stock)
    assert BroadWay().active_steps(25) == 5 and BroadWay().active_steps(50) == 10 and technique.active_steps(25) == 12
    assert BroadWay(num_active_steps=3).active_steps(2) == 2


def test_alpha_one_copies_the_resized_reference_map(pipe):
    probe = Probe()
    run_latents(pipe, broadway(alpha=1.0, motion_enhancement=False, num_active_steps=1), probe, steps=1)
    for module in (0, 1):
        for slot in (1, 2):
            ref = probe.maps[(0, f"up_blocks.0.motion_modules.{module}.transformer_blocks.0.attn{slot}")]
            target = probe.maps[(0, f"up_blocks.1.motion_modules.{module}.transformer_blocks.0.attn{slot}")]
            assert torch.equal(target, resize_reference_map(ref, (8, 8), (16, 16), "nearest"))
            assert not torch.equal(target[:, :, 0], target[:1, :, 0].expand_as(target[:, :, 0]))


def test_with_beta_c_the_energy_after_fme_equals_the_energy_before_guidance(pipe):
    technique = broadway(beta=0.0, num_active_steps=1, record_energy=True)  # beta = beta_c everywhere
    run_latents(pipe, technique, steps=1)
    rows = technique.energy_log()
    assert len(rows) == 8
    for row in rows:
        assert row["after"] == pytest.approx(row["before"], rel=1e-5, abs=1e-7)
    guided = [r for r in rows if r["layer"].startswith("up_blocks.1")]
    assert all(r["after_tsg"] < r["before"] for r in guided)  # TSG toward a coarser map lowered it
    assert all(r["beta"] > 1.0 for r in guided)
    assert technique._refs == {}  # reference maps do not outlive their UNet call


def test_default_fme_restores_at_least_the_energy_and_keeps_rows_stochastic(pipe, stock):
    technique, probe = broadway(num_active_steps=1, record_energy=True), Probe()
    out = run_latents(pipe, technique, probe)
    assert not torch.equal(out, stock)
    for (step, name), probs in probe.maps.items():
        assert (probs.sum(-1) - 1).abs().max() <= 1e-5, name
    rows = technique.energy_log()
    assert all(r["after"] >= r["before"] * (1 - 1e-6) and r["beta"] >= 1.5 for r in rows)  # at least restored
    assert all(r["after"] > r["before"] for r in rows if r["layer"].startswith("up_blocks.0"))  # no TSG there


def test_energies_come_from_the_conditional_half_and_both_halves_are_edited(pipe):
    technique, probe = broadway(num_active_steps=1, record_energy=True, temporal_self_guidance=False), Probe()
    with_guidance = Probe()
    run_latents(pipe, with_guidance, steps=1)
    run_latents(pipe, technique, probe, steps=1)
    name = "up_blocks.0.motion_modules.0.transformer_blocks.0.attn1"  # the first edited layer: same input
    before, after = with_guidance.maps[(0, name)], probe.maps[(0, name)]
    half = before.shape[0] // 2
    row = next(r for r in technique.energy_log() if r["layer"] == name)
    assert row["before"] == pytest.approx(float(before[half:].square().sum(-1).mean()), rel=1e-5)
    for rows in (slice(0, half), slice(half, None)):
        assert (after[rows] - 1 / 8 - 1.5 * (before[rows] - 1 / 8)).abs().max() <= 1e-5  # one beta, both halves


def test_tau_too_large_for_the_frame_count_is_refused_before_the_first_layer(pipe):
    technique = BroadWay(reference_block=0)  # AnimateDiff preset: tau 7 needs 16 frames or more
    seen = count_active_calls(technique, "edit_probs")
    with pytest.raises(InputError, match="tau 7 is too large for 8 frames"):
        run_latents(pipe, technique, steps=1)
    assert not seen
    with pytest.raises(InputError, match="tau 7 is too large for 8 frames"):
        technique.check_frames(8)
    technique.check_frames(16)


def test_bad_settings_are_refused_with_one_line():
    with pytest.raises(InputError, match="unknown BroadWay preset 'sd'.*animatediff"):
        BroadWay("sd")
    with pytest.raises(InputError, match="alpha must be"):
        BroadWay(alpha=1.5)
    with pytest.raises(InputError, match="tau must be a whole number"):
        BroadWay(tau="seven")
    with pytest.raises(InputError, match="interpolation"):
        BroadWay(interpolation="cubic")


def test_a_bare_unet_needs_the_step_count(pipe):
    unet = tm.motion_unet()
    sample = torch.randn(1, 4, 8, 8, 8)
    with apply_techniques(unet, broadway()):
        with pytest.raises(TechniqueError, match="how many denoising steps"):
            unet(sample, 10, encoder_hidden_states=torch.randn(8, 77, 32))
    with apply_techniques(unet, broadway(num_active_steps=1)):
        unet(sample, 10, encoder_hidden_states=torch.randn(8, 77, 32))
