"""The caption-contrast term of the motion training: its value on hand-computed tensors, the reversed
captions the scene stream makes for it, and a CPU smoke run with it on (recorded in the training log)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny_models as tm
from test_training import _run_args

from attncraft.errors import InputError
from attncraft.shapes.training.common import caption_contrast
from attncraft.shapes.training.motion import swap_motions


def test_caption_contrast_values_and_gradients():
    true = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    swapped = torch.tensor([1.5, 1.0, 0.5], requires_grad=True)
    # row 0: 1.1 * 1 - 1.5 < 0 -> 0; row 1: (2.2 - 1.0) / 2 = 0.6; row 2: (0.55 - 0.5) / 0.5 = 0.1
    term = caption_contrast(true, swapped, margin=0.1)
    assert torch.isclose(term, torch.tensor((0.0 + 0.6 + 0.1) / 3))
    term.backward()
    # the true caption's loss is pushed down, the reversed one's up, where the margin is not met
    assert true.grad[0] == 0 and swapped.grad[0] == 0
    assert torch.isclose(true.grad[1], torch.tensor(1.1 / 2 / 3)) and torch.isclose(swapped.grad[1], torch.tensor(-1 / 2 / 3))
    masked = caption_contrast(true, swapped, margin=0.1, mask=torch.tensor([True, True, False]))
    assert torch.isclose(masked, torch.tensor(0.6 / 2))
    assert caption_contrast(true, swapped, 0.1, mask=torch.zeros(3, dtype=torch.bool)) == 0


def test_scene_stream_gives_the_reversed_captions_with_the_same_seeds():
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.training.data import SceneChunks, tokenize_fast

    plain = SceneChunks(6, caption_omits=(0.0, 0.3), num_objects=(1, 2), motion=True).chunk(3)
    assert plain.swapped is None
    chunks = SceneChunks(6, caption_omits=(0.0, 0.3), num_objects=(1, 2), motion=True, contrast="motion")
    chunk = chunks.chunk(3)
    assert np.array_equal(chunk.tokens, plain.tokens)  # the true captions do not change
    base = (chunks.seed_base + 3) * 6 * 2
    for i, scene in enumerate(chunk.scenes):
        for c, omit in enumerate((0.0, 0.3)):
            text = caption_scene(swap_motions(scene), seed=base + i * 2 + c, omit=omit, relation=chunks.relation_share,
                                 vertical=chunks.vertical)  # fmt: skip
            assert np.array_equal(chunk.swapped[i, c], tokenize_fast([text])[0])
    # every motion but an appearance has an opposite; a scene with nothing to reverse keeps its caption
    # (and the training leaves such clips out of the term)
    kinds = [{m.kind for o in s.objects for m in o.motions} for s in chunk.scenes]
    reversible = [i for i, k in enumerate(kinds) if k - {"appear"}]
    assert reversible and all(not np.array_equal(chunk.swapped[i, 0], chunk.tokens[i, 0]) for i in reversible)
    assert all(np.array_equal(chunk.swapped[i], chunk.tokens[i]) for i, k in enumerate(kinds) if not k - {"appear"})


@pytest.fixture(scope="module")
def contrast_run(tmp_path_factory):
    from attncraft.shapes.training.motion import train_motion

    root = tmp_path_factory.mktemp("motion_contrast")
    tm.sd_pipeline(seed=1).save_pretrained(root / "sd")
    info = train_motion(_run_args(root / "adapter", sd_dir=str(root / "sd"), contrast=0.5), quiet=True)
    return root, info


def test_smoke_run_with_the_contrast_term_records_it(contrast_run):
    root, info = contrast_run
    record = info["caption_contrast"]
    assert record["weight"] == 0.5 and record["margin"] == 0.1
    assert len(record["term_every_50_steps"]) >= 1 and record["rows_share_mean"] > 0
    log = json.loads((root / "adapter" / "training_log.json").read_text())
    assert log["caption_contrast"]["weight"] == 0.5
    assert np.isfinite(info["final_loss"])


def test_a_negative_weight_is_refused(tmp_path):
    from attncraft.shapes.training.motion import train_motion

    with pytest.raises(InputError, match="--contrast must be >= 0"):
        train_motion(_run_args(tmp_path / "adapter", sd_dir=str(tmp_path / "sd"), contrast=-1.0), quiet=True)


def test_training_cli_gives_one_line_for_bad_input(tmp_path, capsys):
    from attncraft.shapes.training.__main__ import main

    code = main(["motion", "--config", "smoke", "--device", "cpu", "--contrast", "-1", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: --contrast must be >= 0") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()  # nothing written


def test_contrast_rows_picks_the_largest_timesteps_and_matches_the_masked_term():
    from attncraft.shapes.training.common import contrast_rows

    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (48,), generator=g)
    assert torch.equal(contrast_rows(t, 0, 1000), torch.arange(48))
    sel = contrast_rows(t, 800, 1000)
    assert sel.numel() == 15  # ceil(1.5 * 48 * 200 / 1000)
    assert set(sel.tolist()) == set(torch.argsort(t, descending=True)[:15].tolist())
    assert contrast_rows(t, 999, 1000).numel() == 1 and contrast_rows(t[:2], 100, 1000).numel() == 2
    # the term on the chosen rows, masked below 800, equals the term on the whole batch masked below 800
    # (every row at or above 800 is among the chosen here)
    assert int((t >= 800).sum()) <= 15
    true = torch.rand(48, generator=g) + 0.1
    swapped = true * (0.9 + 0.4 * torch.rand(48, generator=g))
    keep = torch.rand(48, generator=g) > 0.2
    whole = caption_contrast(true, swapped, 0.1, keep & (t >= 800))
    part = caption_contrast(true[sel], swapped[sel], 0.1, keep[sel] & (t[sel] >= 800))
    assert torch.equal(whole, part)


@pytest.fixture(scope="module")
def high_noise_run(contrast_run):
    from attncraft.shapes.training.motion import train_motion

    root, _ = contrast_run
    info = train_motion(_run_args(root / "high", sd_dir=str(root / "sd"), contrast=0.5, contrast_min_t=500),
                        quiet=True)
    return root, info


def test_smoke_run_with_a_lowest_timestep_records_it_and_covers_less(contrast_run, high_noise_run):
    _, everywhere = contrast_run
    root, info = high_noise_run
    record = info["caption_contrast"]
    assert record["min_t"] == 500 and everywhere["caption_contrast"]["min_t"] == 0
    # the share of the batch the term counted: only clips at t >= 500 (about half), so below the all-timestep run's
    assert 0 <= record["rows_share_mean"] < everywhere["caption_contrast"]["rows_share_mean"]
    log = json.loads((root / "high" / "training_log.json").read_text())
    assert log["caption_contrast"]["min_t"] == 500
    high = log["heldout_v_loss_high_noise"]
    assert high["t_range"] == [800, 1000] and set(high["before"]) == {"true", "frames_shuffled", "motion_swapped", "empty",
                                                       "true_between_frames", "motion_swapped_between_frames"}
    assert np.isfinite(info["final_loss"])


def test_a_lowest_timestep_out_of_range_is_refused(tmp_path, capsys):
    from attncraft.shapes.training.__main__ import main

    code = main(["motion", "--config", "smoke", "--device", "cpu", "--contrast", "0.5", "--contrast-min-t", "1000",
                 "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().startswith("error: --contrast-min-t must be in [0, 1000)")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


def test_an_init_adapter_of_another_layout_is_one_line(tmp_path, capsys):
    """``--init`` with an adapter whose layout is not the configuration's: one line, exit 2, nothing written."""
    from attncraft.shapes.models import SHAPES_MOTION_DIR
    from attncraft.shapes.training.__main__ import main

    code = main(["motion", "--config", "smoke", "--device", "cpu", "--init", str(SHAPES_MOTION_DIR),
                 "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()  # after the base model's loading bars
    last = err.splitlines()[-1].split("\r")[-1]
    assert code == 2 and last.startswith(f"error: --init {SHAPES_MOTION_DIR}: its motion_num_attention_heads is 4")
    assert "Traceback" not in err and not (tmp_path / "a").exists()
