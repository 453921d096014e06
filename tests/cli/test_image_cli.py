"""`attncraft image`: help, a successful run with settings in the PNG, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attncraft.outputs import read_png_settings
from cli_runner import run_cli


def test_help_lists_commands(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "image" in out


def test_image_writes_pngs_with_reproducible_settings(tmp_path, capsys):
    code, out, err = run_cli(["image", "a red circle", "--steps", "2", "--count", "2", "--seed", "7",
                              "--width", "64", "--height", "64", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2
    seeds = sorted(read_png_settings(p)["seed"] for p in paths)
    assert seeds == [7, 8]
    meta = read_png_settings(paths[0])
    assert meta["prompt"] == "a red circle" and meta["num_inference_steps"] == 2 and meta["model"] == "shapes"
    assert meta["attention_backend"] == "sdpa"
    # a second run never overwrites the first one's files
    code, out2, _ = run_cli(["image", "a red circle", "--steps", "1", "--seed", "7", "--width", "64",
                             "--height", "64", "--out", str(tmp_path)], capsys)
    assert code == 0 and out2.split()[0] not in paths
    assert len(list(tmp_path.glob("*.png"))) == 3


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["image", "x", "--model", "nonsense"], "unknown model 'nonsense'"),
        (["image", "x", "--model", "org/unreachable-model"], "cannot load model 'org/unreachable-model'"),
        (["image", "x", "--width", "30"], "--width 30 is not usable"),
        (["image", "x", "--steps", "-3"], "--steps must be between 1 and 1000, got -3"),
        (["image", "x", "--scheduler", "magic"], "unknown scheduler 'magic'"),
        (["image", "red " * 90], "tokens long"),
        (["image", "x", "--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["image", "x", "--device", "tpu"], "device"),
        (["image"], "Missing argument"),
        (["image", "x", "--attention-backend", "flash"], "unknown attention backend 'flash'"),
    ],
)
def test_bad_input_is_one_line_nonzero_no_traceback(args, needle, capsys, tmp_path):
    code, out, err = run_cli(args + ["--out", str(tmp_path)], capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_xformers_backend_that_cannot_run_is_refused_before_loading(capsys, tmp_path, monkeypatch):
    """Without a usable xformers (here: none, or no CUDA) the run stops at once with the reason."""
    from attncraft.attention_processors import backends

    if backends.xformers_available():
        pytest.skip("xformers runs on this machine")
    loaded = []
    monkeypatch.setattr("attncraft.loading.load_text_to_image", lambda *a, **k: loaded.append(1))
    code, _, err = run_cli(["image", "x", "--attention-backend", "xformers", "--out", str(tmp_path)], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "xformers" in lines[0] and "--attention-backend sdpa" in lines[0]
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_xformers_backend_puts_the_core_on_every_layer_and_is_recorded(fake_xformers, capsys, tmp_path, monkeypatch):
    """With a usable xformers (a stand-in here) every layer gets the core processor set to it."""
    import attncraft.attention_processors as ap

    managers = []
    real_get_manager = ap.get_manager
    monkeypatch.setattr(ap, "get_manager", lambda *a, **k: managers.append(real_get_manager(*a, **k)) or managers[-1])
    fake_xformers()
    code, out, err = run_cli(["image", "a red circle", "--steps", "1", "--width", "64", "--height", "64",
                              "--device", "cpu", "--attention-backend", "xformers", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert read_png_settings(out.split()[0])["attention_backend"] == "xformers"
    (manager,) = managers
    processors = [manager.processor(name) for name in manager.layers]
    assert processors and all(isinstance(p, ap.AttncraftAttnProcessor) and p.backend == "xformers" for p in processors)


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "attncraft.cli.app", "image", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--guidance" in out.stdout
