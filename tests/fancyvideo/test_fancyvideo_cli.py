"""`attncraft convert fancyvideo` and `attncraft video --method fancyvideo`: runs, sidecar re-runs,
and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from attncraft.cli.app import main
from attncraft.outputs import read_sidecar
from attncraft.video import read_video


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.fixture
def tiny(fancyvideo_folders):
    f = fancyvideo_folders
    return ["--method", "fancyvideo", "--model", f["sd"], "--adapter", f["adapter"], "--vae", f["vae"],
            "--frames", "5", "--steps", "2", "--size", "32"]


def test_convert_refuses_a_pickle_without_the_flag_then_converts(fancyvideo_folders, tmp_path, capsys):
    ckpt, out = fancyvideo_folders["checkpoint"], tmp_path / "converted"
    code, _, err = run_cli(["convert", "fancyvideo", ckpt, "--out", out], capsys)
    assert code == 2 and "--trust-pickle" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    code, stdout, err = run_cli(["convert", "fancyvideo", ckpt, "--out", out, "--trust-pickle", "--dtype", "fp16"], capsys)
    assert code == 0, err
    assert stdout.strip() == str(out) and "kept 182 motion-module tensors" in err and "spatial UNet" in err
    assert (out / "config.json").is_file() and (out / "conditioning" / "config.json").is_file()
    code, _, err = run_cli(["convert", "fancyvideo", ckpt, "--out", out, "--trust-pickle"], capsys)
    assert code == 2 and "--overwrite" in err


def test_text_to_video_run_and_rerun_from_the_sidecar(tiny, tmp_path, capsys):
    code, out, err = run_cli(["video", "a red circle", *tiny, "--fps", "12", "--motion-score", "2", "--seed", "4",
                              "--format", "gif", "--out", tmp_path / "a"], capsys)
    assert code == 0, err
    video = out.split()[-1]
    settings = read_sidecar(video)
    assert settings["method"] == "fancyvideo" and settings["fps"] == 12 and settings["motion_score"] == 2
    assert settings["image"] is None and settings["num_frames"] == 5 and "text-to-video" in err
    frames = read_video(video)
    assert frames.shape == (5, 32, 32, 3)
    code, out, err = run_cli(["video", "--from-sidecar", video + ".json", "--format", "gif", "--out", tmp_path / "b"], capsys)
    assert code == 0, err
    assert np.array_equal(read_video(out.split()[-1]), frames)


def test_image_to_video_records_the_image(tiny, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "first.png"
    Image.fromarray(np.full((40, 48, 3), 90, np.uint8)).save(image)
    code, out, err = run_cli(["video", "a red circle", *tiny, "--image", image, "--format", "webp", "--out", tmp_path], capsys)
    assert code == 0, err
    settings = read_sidecar(out.split()[-1])
    assert settings["image"] == str(image) and len(settings["image_sha256"]) == 64 and "image-to-video" in err
    Image.fromarray(np.full((40, 48, 3), 91, np.uint8)).save(image)
    code, _, err = run_cli(["video", "--from-sidecar", out.split()[-1] + ".json", "--out", tmp_path], capsys)
    assert code == 2 and "content changed" in err


@pytest.mark.parametrize("extra, message", [
    (["--frames", "6"], "pass 5 or 9 frames"),
    (["--frames", "129"], "limit of 32 latent frames"),
    (["--state", "a red circle"], "--state does not apply to --method fancyvideo"),
    (["--broadway"], "--broadway does not apply to --method fancyvideo"),
    (["--ctgm", "shapes"], "--ctgm does not apply to --method fancyvideo"),
    (["--motion-score", "nan"], "--motion-score"),
])
def test_one_line_errors(tiny, tmp_path, capsys, extra, message):
    code, _, err = run_cli(["video", "a red circle", *tiny, *extra, "--out", tmp_path], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_method_options_need_the_method_and_the_adapter(fancyvideo_folders, tmp_path, capsys):
    code, _, err = run_cli(["video", "a red circle", "--motion-score", "2", "--out", tmp_path], capsys)
    assert code == 2 and "--motion-score needs --method fancyvideo" in err
    code, _, err = run_cli(["video", "a red circle", "--method", "fancyvideo", "--out", tmp_path], capsys)
    assert code == 2 and "attncraft convert fancyvideo" in err
