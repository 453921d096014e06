"""The BroadWay and VSTAR options of a video command: values become techniques, and every bad value
is one line that names the option (before any model is loaded)."""

from __future__ import annotations

import pytest

from attncraft.attention_processors.broadway import BroadWay
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from attncraft.cli.broadway import broadway_from_options
from attncraft.cli.vstar import check_synopsis_options, synopsis_from_options, vstar_from_options
from attncraft.errors import InputError


def test_broadway_options():
    assert broadway_from_options(False) is None
    technique = broadway_from_options(True, alpha=0.3, beta="2", tau="5", num_frames=16)
    assert isinstance(technique, BroadWay) and (technique.alpha, technique.beta, technique.tau) == (0.3, 2.0, 5)
    assert broadway_from_options(True, tau="all_nondc", num_frames=24).tau == "all_nondc"
    cases = [
        (dict(enabled=True, num_frames=8), "tau 7 is too large for 8 frames.*--broadway-tau 3"),
        (dict(enabled=True, tau=9, num_frames=16), "tau 9 is too large for 16 frames"),
        (dict(enabled=True, preset="sdxl"), "unknown --broadway-preset 'sdxl'.*animatediff, videocrafter2"),
        (dict(enabled=True, alpha=2), "--broadway-alpha must be"),
        (dict(enabled=True, beta="nan"), "--broadway-beta must be a finite number"),
        (dict(enabled=True, tau="seven"), "--broadway-tau must be a whole number"),
        (dict(enabled=False, beta=2.0), "--broadway-beta needs --broadway"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message):
            broadway_from_options(**kwargs)


def test_vstar_options():
    assert vstar_from_options(False) is None
    assert vstar_from_options(True).sigmas == {0: 4.0}
    assert vstar_from_options(True, "64D1_32D8").sigmas == {0: 1.0, 1: 8.0}
    technique = vstar_from_options(True, sigma="2,6")
    assert isinstance(technique, TemporalAttentionRegularization) and technique.sigmas == {0: 2.0, 1: 6.0}
    with pytest.raises(InputError, match="unknown --vstar-preset '64D3'.*64D4"):
        vstar_from_options(True, "64D3")
    with pytest.raises(InputError, match="--vstar-sigma must be"):
        vstar_from_options(True, sigma="1,-2")
    with pytest.raises(InputError, match="--vstar-sigma needs --vstar"):
        vstar_from_options(False, sigma="4")


def test_synopsis_options(tmp_path):
    assert synopsis_from_options("a red circle moves right, then turns blue", None, None, None) is None
    rule = synopsis_from_options("a red circle moves right, then turns blue", "rule", None, None)
    assert rule.source == "rule" and len(rule.states) == 3
    given = synopsis_from_options("a red circle", "llm", "models/missing/model", ["a red circle", "a blue circle"])
    assert given.source == "user"
    assert check_synopsis_options(None, "some-org/some-model") == "llm"
    cases = [
        (("llm", None), "--synopsis llm needs a language model"),
        (("gpt", None), "unknown --synopsis 'gpt'"),
        (("rule", "x/y"), "--llm is only read by --synopsis llm"),
        (("llm", "models/missing/model"), "--llm path 'models/missing/model' does not exist"),
        ((None, str(tmp_path / "model.gguf")), "does not exist"),
    ]
    for (method, llm), message in cases:
        with pytest.raises(InputError, match=message):
            check_synopsis_options(method, llm)
