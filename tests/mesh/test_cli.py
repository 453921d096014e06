"""``attncraft mesh``: bad input gives one clean line and a non-zero exit; a tiny run writes all outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from attncraft.cli.app import main
from attncraft.cli.mesh import _split_args


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), ("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
     ("garbage\n", "no faces"), ("", "empty")],
)
def test_bad_mesh_exits_with_one_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "bad.obj"
    if content is not None:
        path.write_text(content)
    code, out, err = run_main(["mesh", "stylize", str(path), "a red chair", "--clip", "random:test"], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0] and "Traceback" not in err


def test_bad_options_exit_cleanly(tmp_path, capsys):
    code, _, err = run_main(["mesh", "stylize", "default", "x", "--turntable", "avi"], capsys)
    assert code == 2 and err.count("\n") == 1 and "turntable" in err
    code, _, err = run_main(["mesh", "stylize", "default", "x", "--clip", str(tmp_path / "nope")], capsys)
    assert code == 2 and "CLIP folder not found" in err and err.count("\n") == 1
    code, _, err = run_main(["mesh", "bench", str(tmp_path)], capsys)
    assert code == 2 and "prompts/" in err


def test_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATTNCRAFT_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", "from attncraft.cli.app import main; main()", "mesh", "stylize",
                           str(bad), "a chair"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: could not read mesh broken.ply")
    assert "Traceback" not in proc.stderr


def test_argument_split():
    assert _split_args(None, None) == ("default", None)
    assert _split_args("a red vase", None) == ("default", "a red vase")
    assert _split_args("chair.obj", None) == ("chair.obj", None)
    assert _split_args("default", "a red vase") == ("default", "a red vase")


def test_tiny_stylize_writes_all_outputs(tmp_path, capsys):
    import trimesh

    from attncraft.outputs import read_sidecar

    mesh = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1).export(mesh)
    out = tmp_path / "out"
    main_args = ["mesh", "stylize", str(mesh), "a red ball", "--clip", "random:test", "--iterations", "2", "--views", "2",
                 "--resolution", "32", "--turntable", "gif", "--frames", "3", "--out", str(out), "--device", "cpu"]
    main(main_args)
    captured = capsys.readouterr()
    result = out / "ball-a-red-ball"  # the result folder reserved inside --out
    assert [p.name for p in out.iterdir()] == [result.name]
    names = sorted(p.name for p in result.iterdir())
    assert names == ["ball.glb", "ball.glb.json", "ball.obj", "ball.ply", "ball_turntable.gif", "ball_views.png"]
    assert "random weights" in captured.err and "evaluation CLIP score" in captured.err
    assert "ground truth:" in captured.err and "of the visible surface is red" in captured.err
    assert read_sidecar(result / "ball.glb")["prompt"] == "a red ball"
    assert len(captured.out.strip().splitlines()) == 6


def test_bench_command_reports_skips_and_resumes(tmp_path, capsys):
    import trimesh

    data = tmp_path / "data"
    (data / "meshes").mkdir(parents=True)
    (data / "prompts").mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(data / "meshes" / "ball.obj")
    (data / "prompts" / "ball.txt").write_text("A red ball.\n")
    (data / "prompts" / "ghost.txt").write_text("A ghost.\n")
    argv = ["mesh", "bench", str(data), "--out", str(tmp_path / "out"), "--clip", "random:test", "--iterations", "1",
            "--views", "1", "--resolution", "32", "--eval-resolution", "32", "--device", "cpu"]
    main(argv)
    first = capsys.readouterr()
    assert "1 computed, 0 reused, 1 meshes skipped" in first.err and "| ball | 1 |" in first.out
    main(argv)
    assert "0 computed, 1 reused" in capsys.readouterr().err


def test_background_option(capsys):
    from attncraft.cli.mesh import _background

    assert _background("gray") == (0.5, 0.5, 0.5) and _background("0.1,0.2,0.3") == (0.1, 0.2, 0.3)
    code, _, err = run_main(["mesh", "stylize", "default", "x", "--background", "pink"], capsys)
    assert code == 2 and err.strip().startswith("error: --background 'pink' is not a colour")
