"""``benchmarks/probe_clip_mesh.py`` on the shipped Shapes CLIP: the confusion tables count every mesh once,
and their diagonals agree with the zero-shot evaluation's accuracy on the same meshes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_clip_mesh.py"


def _load():
    module = load_script(SCRIPT, "probe_clip_mesh")
    return module


def test_confusion_counts_each_pair_once():
    probe = _load()
    truth, pred = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2])
    assert probe.confusion(truth, pred, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_tables_cover_every_mesh_and_match_the_evaluation(capsys):
    from attncraft.shapes.models import SHAPES_CLIP_DIR
    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.evaluate import eval_clip_mesh

    n = 24
    assert _load().main(["--clip", str(SHAPES_CLIP_DIR), "--meshes", str(n)]) == 0
    out = capsys.readouterr().out
    sections = out.split("\n\n")
    rows = {title: [line for line in out.split(title, 1)[1].split("\n\n", 2)[1].splitlines()[2:]]
            for title in ("Shape (", "Pattern (")}
    accuracy = {}
    for title, lines in rows.items():
        counts = [int(line.split("|")[-3]) for line in lines]
        right = [round(float(line.split("|")[-2].strip(" %")) * c / 100) for line, c in zip(lines, counts)]
        assert sum(counts) == n, title
        accuracy[title] = sum(right) / n
    cfg = get_configs("smoke").eval
    cfg.mesh_scenes = n
    ref = eval_clip_mesh(SHAPES_CLIP_DIR, cfg, torch.device("cpu"))["conditions"]["render"]["accuracy"]
    assert abs(accuracy["Shape ("] - ref["shape"]) < 1e-6 and abs(accuracy["Pattern ("] - ref["pattern"]) < 1e-6
    assert re.search(r"\| smooth \| \d+ \|", out) and len(sections) > 3


def test_a_folder_without_a_clip_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _load().main(["--clip", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and f"--clip {tmp_path}: no CLIP folder there" in err
