"""Jobs of the real commands on the embedded Shapes models: the same results as the commands, batched calls, scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from attncraft.batch.manifest import load_manifest
from attncraft.outputs import read_png_settings
from batch_helpers import write_jsonl
from cli_runner import run_cli


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


@pytest.mark.slow
def test_image_jobs_draw_what_the_command_draws(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"command": "image", "prompt": "a red circle", "steps": 2, "sweep": {"seed": [3, 4]}},
        {"command": "image", "prompt": "a blue square on the left", "steps": 2, "seed": 9, "count": 2},
    ])
    jobs = load_manifest(manifest)
    single, batched = tmp_path / "single", tmp_path / "batched"
    code, _, err = run_cli(["batch", "run", manifest, "--out", single, "--batch-size", "1", "--device", "cpu", "--score"], capsys)
    assert code == 0, err
    assert "in 3 calls" in err
    code, stdout, err = run_cli(["image", "a red circle", "--steps", "2", "--seed", "4", "--device", "cpu",
                                 "--out", tmp_path / "cli"], capsys)
    assert code == 0, err
    cli_png = stdout.split()[0]
    job_png = single / f"{jobs[1].stem}.png"
    assert np.array_equal(pixels(job_png), pixels(cli_png))  # a job alone is exactly the command's image
    assert read_png_settings(job_png) == read_png_settings(cli_png)
    two = [single / f"{jobs[2].stem}_{i}.png" for i in range(2)]
    assert [read_png_settings(p)["seed"] for p in two] == [9, 10]
    side = json.loads((single / f"{jobs[2].stem}.json").read_text())
    assert side["files"] == [p.name for p in two] and side["attncraft"]["count"] == 2
    assert set(side["metrics"]) >= {"color", "shape", "position", "exact"}  # the reader's scores (--score)
    assert all(0.0 <= v <= 1.0 for v in side["metrics"].values())

    # the three jobs differ only in prompt, seed and count: one pipeline call draws all four images
    code, _, err = run_cli(["batch", "run", manifest, "--out", batched, "--device", "cpu", "--no-report"], capsys)
    assert code == 0, err
    assert "in 1 call on" in err
    names = sorted(p.name for p in batched.glob("*.png"))
    assert names == sorted(p.name for p in single.glob("*.png")) and len(names) == 4
    for name in names:  # the same images, up to float rounding in batched kernels
        assert np.abs(pixels(batched / name) - pixels(single / name)).max() <= 2, name
        assert read_png_settings(batched / name) == read_png_settings(single / name)


@pytest.mark.slow
def test_a_video_job_writes_what_the_command_writes(tmp_path, capsys):
    from attncraft.video.io import read_video

    tiny = {"frames": 4, "steps": 2, "size": "32", "format": "gif", "seed": 5}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"command": "video", "prompt": "a red circle moves right", **tiny}])
    (job,) = load_manifest(manifest)
    code, _, err = run_cli(["batch", "run", manifest, "--out", tmp_path / "batch", "--device", "cpu", "--no-report"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["video", "a red circle moves right", "--frames", "4", "--steps", "2", "--size", "32",
                                 "--format", "gif", "--seed", "5", "--device", "cpu", "--out", tmp_path / "cli"], capsys)
    assert code == 0, err
    cli_video = stdout.split()[-1]
    folder = tmp_path / "batch" / job.stem  # a video job's result folder: the video, its contact sheet, its sidecar
    name = "a-red-circle-moves-right_s5.gif"
    assert sorted(p.name for p in folder.iterdir()) == [name, f"{name}.json", "a-red-circle-moves-right_s5_frames.png"]
    assert np.array_equal(read_video(folder / name), read_video(cli_video))
    side = json.loads((tmp_path / "batch" / f"{job.stem}.json").read_text())
    assert side["attncraft"]["num_frames"] == 4 and side["files"] == [job.stem]


def test_edit_jobs_share_one_pipeline_and_write_what_the_command_writes(tmp_path, capsys):
    fast = {"steps": 2, "null-steps": 1, "method": "ddim"}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"command": "edit", **fast, "sweep": {"seed": [1, 2]}}])
    jobs = load_manifest(manifest)
    code, _, err = run_cli(["batch", "run", manifest, "--out", tmp_path / "batch", "--device", "cpu", "--no-report"], capsys)
    assert code == 0, err
    assert "in 2 calls" in err
    # the second job ran on the pipeline the first one used: still exactly what the command draws alone
    code, stdout, err = run_cli(["edit", "--steps", "2", "--null-steps", "1", "--method", "ddim", "--seed", "2",
                                 "--device", "cpu", "--out", tmp_path / "cli"], capsys)
    assert code == 0, err
    cli = {p.split("/")[-1]: p for p in stdout.split()}
    folder = tmp_path / "batch" / jobs[1].stem
    assert sorted(p.name for p in folder.iterdir()) == sorted(cli)
    for name in ("source.png", "reconstruction.png", "edited.png"):
        assert np.array_equal(pixels(folder / name), pixels(cli[name])), name
    cli_meta, job_meta = read_png_settings(cli["edited.png"]), read_png_settings(folder / "edited.png")
    assert {k: v for k, v in job_meta.items() if k != "inversion"} == {k: v for k, v in cli_meta.items() if k != "inversion"}
    side = json.loads((tmp_path / "batch" / f"{jobs[1].stem}.json").read_text())
    assert side["files"] == [jobs[1].stem] and side["attncraft"]["seed"] == 2 and side["attncraft"]["task"] == "edit"
    assert side["attncraft"]["source"] != side["attncraft"]["target"]


def test_customize_jobs_write_what_the_command_writes_whatever_scheduler_ran_before(tmp_path, capsys):
    from attncraft.shapes.world import Scene, SceneObject, render_scenes

    subject = tmp_path / "subject.png"
    image = render_scenes([Scene((SceneObject("star", "red", pattern="striped"),))]).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(subject)
    prompt = "a big star on the left on a gray background"
    job = {"command": "customize", "prompt": prompt, "subject": str(subject), "word": "star", "steps": 2, "seed": 3}
    manifest = write_jsonl(tmp_path / "m.jsonl", [{**job, "scheduler": "euler"}, {**job, "count": 2}])
    jobs = load_manifest(manifest)
    code, _, err = run_cli(["batch", "run", manifest, "--out", tmp_path / "batch", "--device", "cpu", "--no-report"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["customize", prompt, "--subject", subject, "--word", "star", "--steps", "2", "--seed", "3",
                                 "--count", "2", "--device", "cpu", "--out", tmp_path / "cli"], capsys)
    assert code == 0, err
    out = tmp_path / "batch"
    assert sorted(p.name for p in out.glob(f"{jobs[0].stem}*.png")) == [f"{jobs[0].stem}.png", f"{jobs[0].stem}_masks.png"]
    for i, cli_png in enumerate(stdout.split()):  # the default scheduler again after the euler job
        png = out / f"{jobs[1].stem}_{i}.png"
        assert np.array_equal(pixels(png), pixels(cli_png))
        assert read_png_settings(png) == read_png_settings(cli_png)
        assert np.array_equal(pixels(out / f"{jobs[1].stem}_{i}_masks.png"), pixels(cli_png.replace(".png", "_masks.png")))
    assert read_png_settings(out / f"{jobs[0].stem}.png")["scheduler"] == "euler"
    assert not np.array_equal(pixels(out / f"{jobs[0].stem}.png"), pixels(out / f"{jobs[1].stem}_0.png"))
