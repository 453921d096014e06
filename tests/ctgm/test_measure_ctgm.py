"""``benchmarks/measure_ctgm.py`` end to end on a tiny random SD folder, motion adapter and two CTGM
files (CPU; the numbers mean nothing): every row, the VSTAR prompt set, the files recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attncraft.attention_processors.ctgm import CTGM, save_ctgm
from attncraft.errors import InputError
from attncraft.video.ctgm_training import frozen_motion_pipeline
from ctgm_helpers import trained_like, write_tiny_video_model
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "measure_ctgm.py"


@pytest.fixture(scope="module")
def measure():
    module = load_script(SCRIPT, "measure_ctgm")
    return module


def test_rows_are_plain_each_mode_synopsis_and_synopsis_with_each_mode(measure):
    plan = measure.row_plan(["a", "b"], ["tii+tar", "all"])
    assert [row for row, _, _ in plan] == ["plain", "ctgm tii+tar", "ctgm all", "synopsis", "synopsis + ctgm tii+tar",
                                           "synopsis + ctgm all"]  # fmt: skip
    assert [(states, index) for _, states, index in plan] == [(False, None), (False, 0), (False, 1), (True, None),
                                                              (True, 0), (True, 1)]  # fmt: skip


@pytest.mark.slow
def test_measurement_runs_end_to_end(measure, tmp_path, capsys):
    sd, adapter = write_tiny_video_model(tmp_path)
    pipe = frozen_motion_pipeline(sd, adapter)
    ctgm = trained_like(CTGM.for_pipeline(pipe, mode="all", sites="part"))
    files = ["--ctgm", str(save_ctgm(ctgm, tmp_path / "ctgm-all.safetensors", training={"steps": 7}))]
    out = tmp_path / "out"
    argv = ["--adapter", adapter, "--model", sd, *files, "--out", str(out), "--count", "2", "--frames", "3",
            "--size", "32", "--steps", "1", "--batch", "2", "--device", "cpu", "--guidance", "5"]  # fmt: skip
    assert measure.main(argv) == 0
    results = json.loads((out / "measure_ctgm.json").read_text())
    assert list(results["rows"]) == ["plain", "ctgm all", "synopsis", "synopsis + ctgm all"]
    for row in results["rows"].values():
        assert row["means"]["n"] == 2 and len(row["scores"]) == 2 and "identity" in row["scores"][0]
    assert results["prompts"] == measure.shared.sequential_prompts(2)  # VSTAR's prompt set
    assert [c["mode"] for c in results["ctgm"]] == ["all"] and results["ctgm"][0]["steps"] == 7
    table = (out / "measure_ctgm.md").read_text()
    assert "| synopsis + ctgm all | 2 |" in table and table.strip() in capsys.readouterr().out
    assert (out / "ctgm_examples.png").is_file()
    with pytest.raises(InputError, match="does not exist"):
        measure.main([*argv[:4], "--ctgm", str(tmp_path / "missing.safetensors"), "--out", str(out)])
