"""``benchmarks/probe_motion_timesteps.py`` on the shipped text-to-video model (CPU, a few clips): the motion
probe per band of timesteps, with what the shipped adapter must show in any band: the caption helps (the empty
caption costs more) and the order of frames matters (shuffled frames cost more)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_motion_timesteps.py"


@pytest.mark.slow
def test_probe_reads_each_band_of_the_shipped_adapter(capsys):
    module = load_script(SCRIPT, "probe_motion_timesteps")
    rows = module.probe(["--n", "8", "--frames", "8", "--device", "cpu", "--bands", "500-800,800-1000"])
    assert set(rows) == {"500-800", "800-1000"}
    for band, r in rows.items():
        assert set(r) == {"true", "frames_shuffled", "motion_swapped", "empty", "true_between_frames",
                          "motion_swapped_between_frames"}, band
        # the part of a loss in how the frames differ is a part of it
        assert 0 < r["true_between_frames"] < r["true"] and 0 < r["motion_swapped_between_frames"] < r["motion_swapped"]
        assert r["empty"] > r["true"] and r["frames_shuffled"] > r["true"], (band, r)
    assert "| [800, 1000) |" in capsys.readouterr().out


@pytest.mark.slow
def test_negative_prompt_probe_scores_both_rows_on_the_same_prompts(tmp_path, capsys):
    """``benchmarks/probe_motion_negative.py`` end to end at 2 prompts and 2 steps: both rows scored by the reader."""
    import json

    script = SCRIPT.parent / "probe_motion_negative.py"
    module = load_script(script, "probe_motion_negative")
    out = tmp_path / "neg.json"
    assert module.main(["--n", "2", "--steps", "2", "--batch", "2", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert list(rows) == ["default negative prompt", "the motion turned the other way as negative"]
    assert all(r["n"] == 2 and 0.0 <= r["motion"] <= 1.0 for r in rows.values())
    assert "| the motion turned the other way as negative | 2 |" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--bands", "800"], "--bands: '800' is not LO-HI"),
    (["--bands", "900-800"], "--bands: '900-800' is not LO-HI"),
    (["--adapter", "/nonexistent"], "--adapter /nonexistent: not a MotionAdapter folder"),
    (["--n", "0"], "give at least 1 clip"),
])
def test_probe_bad_input_is_a_one_line_usage_error(argv, message, capsys):
    module = load_script(SCRIPT, "probe_motion_timesteps")
    with pytest.raises(SystemExit) as exc:
        module.probe(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_negative_probe_refuses_zero_prompts(capsys):
    module = load_script(SCRIPT.parent / "probe_motion_negative.py", "probe_motion_negative")
    with pytest.raises(SystemExit) as exc:
        module.main(["--n", "0"])
    assert exc.value.code == 2 and "each must be at least 1" in capsys.readouterr().err
