"""``tools/gpu/fancyvideo_full_size.py``: the tiny dry run on CPU (every step of the full-size job),
and the full-size run itself where CUDA is available."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu" / "fancyvideo_full_size.py"


def _script():
    module = load_script(SCRIPT, "fancyvideo_full_size")
    return module


def test_tiny_dry_run_passes_its_checks(tmp_path, capsys):
    code = _script().main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")])
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "fancyvideo_full_size.json").read_text())
    assert report["ok"] and report["facts"]["output shape"] == [1, 5, 3, 32, 32]
    assert "| conv_in[:, :4] is the base model's | ok |" in (tmp_path / "out" / "fancyvideo_full_size.md").read_text()
    assert not (tmp_path / "work").exists()  # the synthetic checkpoint is removed


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_full_size_on_the_gpu(tmp_path):
    assert _script().main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]) == 0
