"""The motion stage's loss re-weightings towards what changes between frames
(``--frame-deviation-weight``, ``--motion-region-weight``): exact identities and hand-computed values of
:func:`frame_weighted_mse`, the checks of the weights, and a CPU smoke run with them on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny_models as tm
from test_training import _run_args

from attncraft.errors import InputError
from attncraft.shapes.training.motion import frame_weighted_mse


def _err(seed=0, shape=(3, 4, 5, 6, 6)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_off_by_default_is_exactly_the_plain_mse():
    err = _err()
    assert torch.equal(frame_weighted_mse(err), err.pow(2).mean(dim=(1, 2, 3, 4)))
    assert torch.equal(frame_weighted_mse(err, _err(1), 1.0, 0.0), err.pow(2).mean(dim=(1, 2, 3, 4)))


def test_the_deviation_weight_splits_the_loss_exactly():
    err = _err()
    plain = err.pow(2).mean(dim=(1, 2, 3, 4))
    mean = err.mean(dim=2, keepdim=True)
    static = mean.pow(2).mean(dim=(1, 2, 3, 4))
    between = (err - mean).pow(2).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(static + between, plain, rtol=1e-12, atol=0)  # the split is exact
    for w in (0.5, 2.0, 4.0):
        assert torch.allclose(frame_weighted_mse(err, deviation_weight=w), static + w * between, rtol=1e-12, atol=0)
    # an error that is the same in every frame has nothing between frames: the weight changes nothing
    same = err[:, :, :1].expand_as(err).contiguous()
    assert torch.allclose(frame_weighted_mse(same, deviation_weight=9.0), same.pow(2).mean(dim=(1, 2, 3, 4)),
                          rtol=1e-12, atol=0)


def test_the_deviation_weight_by_hand():
    err = torch.tensor([1.0, 3.0]).view(1, 1, 2, 1, 1)  # mean 2, deviations -1 and +1
    assert frame_weighted_mse(err).item() == 5.0  # (1 + 9) / 2
    assert frame_weighted_mse(err, deviation_weight=4.0).item() == 8.0  # 2^2 + 4 * 1


def test_the_region_weight_by_hand_and_on_a_still_clip():
    # two latent positions; the clean clip changes at the first only (frames 0 and 1: 0 then 2)
    z0 = torch.zeros(1, 1, 2, 1, 2)
    z0[0, 0, 1, 0, 0] = 2.0
    err = torch.zeros(1, 1, 2, 1, 2)
    err[..., 0] = 1.0  # the error is where the clip changes
    w = 8.0
    # weights 1 + 8 = 9 and 1, normalised to mean 1: 9 / 5 and 1 / 5
    assert frame_weighted_mse(err, z0, region_weight=w).item() == pytest.approx(0.5 * 9 / 5)
    assert frame_weighted_mse(err.flip(-1), z0, region_weight=w).item() == pytest.approx(0.5 * 1 / 5)
    # a uniform error keeps its loss: the weights only move it
    ones = torch.ones_like(err)
    assert frame_weighted_mse(ones, z0, region_weight=w).item() == pytest.approx(1.0)
    # a clip without change keeps weight 1 everywhere
    still = _err(2)[:, :, :1].expand(3, 4, 5, 6, 6)
    err = _err(3)
    assert torch.allclose(frame_weighted_mse(err, still, region_weight=w), err.pow(2).mean(dim=(1, 2, 3, 4)),
                          rtol=1e-9, atol=0)  # the mean over frames of equal values rounds: not exactly 0 change


def test_both_weights_together_and_gradients():
    err = _err().requires_grad_(True)
    z0 = _err(4)
    loss = frame_weighted_mse(err, z0, deviation_weight=3.0, region_weight=2.0)
    change = (z0 - z0.mean(dim=2, keepdim=True)).abs().amax(dim=2).mean(dim=1, keepdim=True)
    weight = 1 + 2.0 * change / change.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    weight = (weight / weight.mean(dim=(1, 2, 3), keepdim=True))[:, :, None]
    mean = err.mean(dim=2, keepdim=True)
    expected = ((mean.pow(2) + 3.0 * (err - mean).pow(2)) * weight).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)
    loss.sum().backward()
    assert torch.isfinite(err.grad).all() and err.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="clean clips"):
        frame_weighted_mse(err, None, region_weight=1.0)


@pytest.mark.parametrize("flag, value, message", [("--frame-deviation-weight", "0", "must be > 0"),
                                                  ("--motion-region-weight", "-1", "must be >= 0")])
def test_bad_weights_are_one_line_and_write_nothing(tmp_path, capsys, flag, value, message):
    from attncraft.shapes.training.__main__ import main

    code = main(["motion", "--config", "smoke", "--device", "cpu", flag, value, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith(f"error: {flag} {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


def test_smoke_runs_with_and_without_the_weights(tmp_path):
    """The same seed and steps with and without the weights: the first step sees the same clips (the
    logged, unweighted loss agrees), the adapters trained differ, and the log records the weights."""
    from safetensors.torch import load_file

    from attncraft.shapes.training.motion import train_motion

    tm.sd_pipeline(seed=1).save_pretrained(tmp_path / "sd")
    runs = {}
    for name, kw in (("plain", {}), ("weighted", dict(frame_deviation_weight=4.0, motion_region_weight=8.0))):
        runs[name] = train_motion(_run_args(tmp_path / name, sd_dir=str(tmp_path / "sd"), max_steps=3, workers=0, **kw),
                                  quiet=True)
    log = json.loads((tmp_path / "weighted" / "training_log.json").read_text())
    assert log["frame_weights"] == {"frame_deviation_weight": 4.0, "motion_region_weight": 8.0}
    assert runs["plain"]["frame_weights"] is None
    assert np.isfinite(runs["weighted"]["final_loss"])
    first = [runs[k]["loss_history"][0] for k in runs]
    assert first[0] == pytest.approx(first[1], rel=1e-6), first
    a, b = (load_file(str(tmp_path / k / "diffusion_pytorch_model.safetensors")) for k in runs)
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
