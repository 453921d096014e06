"""``python -m attncraft.realcustom.training``: trains on a JSON-lines dataset of image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from attncraft.errors import InputError
from attncraft.realcustom.modules import load_adapter
from attncraft.realcustom.training import main, read_jsonl


def _dataset(root):
    from attncraft.shapes.training.realcustom import sample_examples
    from attncraft.shapes.world import render_scenes

    rows = []
    for i, ex in enumerate(sample_examples(3, seed=1)):
        for name, scene in (("image", ex.target), ("subject", ex.subject)):
            img = render_scenes([scene]).images[0].permute(1, 2, 0).numpy()
            Image.fromarray((img * 255).round().astype("uint8")).save(root / f"{name}{i}.png")
        rows.append({"image": f"image{i}.png", "caption": ex.caption, "word": ex.word, "subject": f"subject{i}.png"})
    path = root / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_training_script_trains_and_saves_a_loadable_checkpoint(tiny_folders, tmp_path):
    from attncraft.shapes.models import load_shapes_sd_pipeline

    sd_dir, clip_dir = tiny_folders
    data = _dataset(tmp_path)
    assert main(["--model", str(sd_dir), "--data", str(data), "--out", str(tmp_path / "ckpt"), "--image-encoder",
                 str(clip_dir), "--steps", "3", "--batch", "2", "--device", "cpu"]) == 0
    adapter = load_adapter(tmp_path / "ckpt", unet=load_shapes_sd_pipeline(sd_dir).unet)
    assert adapter.config.encoder == str(clip_dir) and adapter.scoring is not None
    log = json.loads((tmp_path / "ckpt" / "training_log.json").read_text())
    assert log["steps"] == 3 and log["examples"] == 3 and np.isfinite(log["final_loss"])
    # training moved the value projections away from their zero initialisation
    assert any(kv.to_v_vision.weight.abs().sum() > 0 for kv in adapter.visual.values())


def test_dataset_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "x.png", "caption": "c"}\n')
    with pytest.raises(InputError, match="line 1 .* lacks subject"):
        read_jsonl(bad)
    bad.write_text('{"image": "missing.png", "caption": "c", "subject": "s.png"}\n')
    with pytest.raises(InputError, match="image of line 1"):
        read_jsonl(bad)
    bad.write_text("not json\n")
    with pytest.raises(InputError, match="not JSON"):
        read_jsonl(bad)
