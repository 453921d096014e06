"""``attncraft world render`` / ``attncraft world score``: files with settings, scores, clean errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attncraft.cli.app import main
from attncraft.outputs import read_png_settings, read_sidecar
from attncraft.shapes.world import Scene


def _run(argv, capsys):
    """Run the CLI; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_render_writes_images_with_settings_and_truth(tmp_path, capsys):
    code, _, err = _run(["world", "render", "--seed", "3", "--count", "2", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    for i in range(2):
        png = tmp_path / f"scene_{i:03d}.png"
        settings = read_png_settings(png)
        assert settings["seed"] == 3 and settings["index"] == i and settings["size"] == 64
        scene = Scene.from_dict(settings["scene"])
        truth = json.loads((tmp_path / f"scene_{i:03d}.json").read_text())
        assert truth["caption"] == settings["caption"] and Scene.from_dict(truth["scene"]) == scene
        labels = np.asarray(Image.open(tmp_path / truth["mask"]))
        assert labels.shape == (64, 64) and set(np.unique(labels)) == set(range(len(scene.objects) + 1))
        assert [o["area"] for o in truth["objects"]] == [int((labels == k + 1).sum()) for k in range(len(scene.objects))]
        with Image.open(png) as im:
            assert im.size == (64, 64)
    # same seed, same files
    again = tmp_path / "again"
    _run(["world", "render", "--seed", "3", "--count", "2", "--out", str(again)], capsys)
    assert (again / "scene_001.png").read_bytes() == (tmp_path / "scene_001.png").read_bytes()


def test_score_prints_scores(tmp_path, capsys):
    _run(["world", "render", "--seed", "1", "--count", "1", "--size", "128", "--out", str(tmp_path)], capsys)
    png = str(tmp_path / "scene_000.png")
    code, out, err = _run(["world", "score", png], capsys)  # prompt from the PNG's settings
    assert code == 0, err
    assert "count" in out and "color" in out and "1.00" in out
    caption = read_png_settings(png)["caption"]
    code, out, _ = _run(["world", "score", png, "--prompt", caption, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["prompt"] == caption
    assert all(v == 1.0 for v in data["scores"].values()), data["scores"]
    code, out, _ = _run(["world", "score", png, "--prompt", "a purple triangle and a green star", "--json"], capsys)
    assert code == 0 and json.loads(out)["scores"]["exact"] == 0.0
    assert json.loads(out)["reasons"] == []


def test_score_says_why_a_canvas_is_refused(capsys):
    """A canvas of two halves is no pair of hearts: the table shows plausible 0, the reasons follow."""
    from pathlib import Path

    png = str(Path(__file__).parent / "regression" / "fool_red_blue_halves.png")
    prompt = "a red heart on the left and a blue heart on the right"
    code, out, err = _run(["world", "score", png, "--prompt", prompt, "--json"], capsys)
    data = json.loads(out)
    assert code == 0, err
    assert data["scores"]["plausible"] == 0.0 and data["scores"]["exact"] == 0.0
    assert len(data["reasons"]) == 3 and all("canvas" in r for r in data["reasons"])
    assert {r["color"] for r in data["read"]["rejected"]} == {"red", "blue"}
    code, out, err = _run(["world", "score", png, "--prompt", prompt], capsys)
    assert code == 0, err
    assert out.count("rejected: ") == 3 and "red region at (0.25, 0.50): fills 50 %" in " ".join(out.split())


def test_render_and_score_video(tmp_path, capsys):
    code, _, err = _run(["world", "render", "--video", "--frames", "8", "--count", "1", "--objects", "1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    gif = tmp_path / "scene_000.gif"
    settings = read_sidecar(gif)
    assert settings["frames"] == 8
    side = json.loads((tmp_path / "scene_000.gif.json").read_text())
    assert len(side["frames"]) == 8 and Scene.from_dict(side["scene"]).has_motion
    code, out, err = _run(["world", "score", str(gif), "--json"], capsys)
    assert code == 0, err
    scores = json.loads(out)["scores"]
    assert scores["motion"] == 1.0 and scores["identity"] == 1.0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["world", "score", "/nonexistent/x.png", "--prompt", "a red circle"], "does not exist"),
        (["world", "render", "--size", "8"], "--size 8"),
        (["world", "render", "--objects", "5"], "--objects"),
        (["world", "render", "--video", "--frames", "1"], "--frames"),
    ],
)
def test_bad_input_is_one_line(argv, needle, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err


def test_bad_prompt_and_bad_file(tmp_path, capsys):
    png = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (100, 100, 100)).save(png)
    code, _, err = _run(["world", "score", str(png), "--prompt", "a beautiful landscape"], capsys)
    assert code == 2 and err.count("\n") == 1 and "cannot parse the prompt" in err
    code, _, err = _run(["world", "score", str(png)], capsys)  # no stored caption, no --prompt
    assert code == 2 and "--prompt" in err
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    code, _, err = _run(["world", "score", str(junk), "--prompt", "a red circle"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a readable image" in err
