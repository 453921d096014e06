"""``benchmarks/probe_unstated_pattern.py``: the captions' prior of an unstated pattern (exact where the
grammar fixes it) and the probe end to end on the shipped Shapes SD."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from bench_scripts import load_script


def test_with_no_omission_an_unstated_pattern_is_plain(monkeypatch):
    """Captions that state every attribute name every pattern but plain: no pattern word means plain."""
    from attncraft.shapes.training import configs

    @dataclass
    class AllStated:
        caption_omits: tuple = (0.0,)

    monkeypatch.setattr(configs, "UnetTrain", AllStated)
    prior = load_script("probe_unstated_pattern").caption_prior(scenes=600)
    assert prior["no_pattern_word"]["plain"] == 1.0 and prior["no_pattern_word"]["captions"] > 100


def test_the_training_captions_leave_some_unstated_patterns_open():
    prior = load_script("probe_unstated_pattern").caption_prior(scenes=3000)
    for row in prior.values():
        assert sum(v for k, v in row.items() if k != "captions") == pytest.approx(1.0)
    # dropping attributes makes some unstated patterns non-plain, and more so in captions without a size word
    unstated, short = prior["no_pattern_word"], prior["no_pattern_or_size_word"]
    assert 0.8 < unstated["plain"] < 1.0
    assert short["plain"] < unstated["plain"] and short["captions"] < unstated["captions"]


@pytest.mark.slow
def test_probe_runs_on_the_shipped_model(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert load_script("probe_unstated_pattern").main(["--n", "2", "--scenes", "400", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["model"]) == {"a red circle", "a big red circle", "a red circle on the left and a blue square on the right"}
    for row in record["model"].values():
        assert row["images"] == 2 and row["guidance"] == 3.0 and sum(row["objects"].values()) >= 2
    assert "| a red circle (guidance 3) | 2 |" in capsys.readouterr().out
