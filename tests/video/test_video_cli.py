"""`attncraft video`: help, a run (video + contact sheet + sidecar), re-running from the sidecar,
per-frame states, scoring the output with `world score`, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import run_cli
from attncraft.outputs import read_png_settings, read_sidecar
from attncraft.video import read_video


@pytest.fixture
def tiny(video_folders):
    return ["--model", str(video_folders["sd"]), "--adapter", str(video_folders["adapter"]),
            "--frames", "4", "--steps", "2", "--size", "32"]


def test_help(capsys):
    code, out, _ = run_cli(["video", "--help"], capsys)
    assert code == 0 and "--state" in out and "--from-sidecar" in out and "--free-noise" in out


def test_run_writes_video_sheet_sidecar_and_reruns_from_the_sidecar(tiny, tmp_path, capsys):
    code, out, err = run_cli(["video", "a red circle moves right", *tiny, "--seed", "5", "--format", "gif",
                              "--out", str(tmp_path / "a")], capsys)
    assert code == 0, err
    video = tmp_path / "a" / out.split()[-1].rsplit("/", 1)[-1]
    assert video.name == "a-red-circle-moves-right_s5.gif"
    sheet = video.with_name(video.stem + "_frames.png")
    settings = read_sidecar(video)
    assert settings["prompt"] == "a red circle moves right" and settings["seed"] == 5 and settings["num_frames"] == 4
    assert settings["task"] == "video" and read_png_settings(sheet) == settings
    assert json.loads((video.parent / (video.name + ".json")).read_text())["caption"] == settings["prompt"]
    frames = read_video(video)
    assert frames.shape == (4, 32, 32, 3)
    # the same frames again from the sidecar alone
    code, out, err = run_cli(["video", "--from-sidecar", str(video) + ".json", "--format", "gif",
                              "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert np.array_equal(read_video(out.split()[-1]), frames)
    # the output reads back with the reader, against its stored caption
    code, out, err = run_cli(["world", "score", str(video), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["prompt"] == "a red circle moves right" and "motion" in json.loads(out)["scores"]


def test_states_webp_and_no_overwrite(tiny, tmp_path, capsys):
    args = ["video", "--state", "0: a red circle", "--state", "3: a blue square", *tiny, "--format", "webp",
            "--out", str(tmp_path)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    first = out.split()[-1]
    settings = read_sidecar(first)
    assert settings["states"] == ["a red circle", "a blue square"] and settings["state_frames"] == [0, 3]
    assert settings["prompt"] == "a red circle, then a blue square"
    assert read_video(first).shape == (4, 32, 32, 3)
    code, out, err = run_cli(["world", "score", first, "--prompt", "a red circle turns blue", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["scores"].keys() >= {"recolor", "identity"}  # read as a video, not a still
    code, out, err = run_cli(args, capsys)
    assert code == 0 and out.split()[-1] != first and out.split()[-1].endswith("-2.webp")
    states = tmp_path / "states.txt"
    states.write_text("a red circle\n# a comment\na blue square\n", encoding="utf-8")
    code, out, err = run_cli(["video", "--states-file", str(states), *tiny, "--format", "gif", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert read_sidecar(out.split()[-1])["state_frames"] is None


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--frames", "0"], "--frames must be at least 1"),
        (["--frames", "33"], "33 frames exceed this motion adapter's limit of 32"),
        (["--adapter", "nonsense"], "unknown motion adapter 'nonsense'"),
        (["--adapter", "SD"], "not a motion adapter"),
        (["--format", "avi"], "unknown --format 'avi'"),
        (["--size", "30"], "must be a multiple of"),
        (["--guidance", "nan"], "--guidance must be a finite number"),
    ],
)
def test_bad_input_is_one_line_nonzero_no_traceback(extra, needle, tiny, video_folders, tmp_path, capsys):
    extra = [str(video_folders["sd"]) if e == "SD" else e for e in extra]
    code, out, err = run_cli(["video", "a red circle", *tiny, *extra, "--out", str(tmp_path)], capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err and not list(tmp_path.glob("*.gif")) and not list(tmp_path.glob("*.mp4"))


def test_from_sidecar_refuses_a_prompt_and_a_foreign_file(tmp_path, capsys):
    code, _, err = run_cli(["video", "x", "--from-sidecar", str(tmp_path / "none.json")], capsys)
    assert code == 2 and "takes no prompt" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"attncraft": {"task": "image"}}))
    code, _, err = run_cli(["video", "--from-sidecar", str(other), "--out", str(tmp_path)], capsys)
    assert code == 2 and "holds no attncraft video settings" in err
