"""The relation-word probe of the text encoder (benchmarks/probe_text_relations.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from attncraft.shapes.models import SHAPES_SD_DIR
from bench_scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _probe_module():
    mod = load_script(ROOT / "benchmarks/probe_text_relations.py", "probe_text_relations")
    return mod


@pytest.mark.skipif(not (SHAPES_SD_DIR / "text_encoder").exists(), reason="shipped Shapes SD missing")
def test_a_word_swapped_for_itself_changes_nothing_and_a_real_swap_does():
    probe = _probe_module().probe
    same, other = probe(str(SHAPES_SD_DIR), pairs=[("above", "above"), ("left of", "right of")], max_captions=4)
    assert same["tokens"] == 0.0 and same["max"] == 0.0 and same["after_end"] == 0.0
    assert other["captions"] == 4 and other["tokens"] > 0.0 and other["after_end"] > 0.0


def test_cli_prints_one_row_per_pair(capsys):
    mod = _probe_module()
    if not (SHAPES_SD_DIR / "text_encoder").exists():
        pytest.skip("shipped Shapes SD missing")
    assert mod.main(["--captions", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == len(mod.PAIRS) + 2  # header, rule, one row per pair
