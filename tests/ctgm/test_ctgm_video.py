"""CTGM as an option of TextToVideoPipeline (``ctgm=``) and of ``attncraft video`` (``--ctgm``):
the stock output at initialisation, one load per file, composition with schedules, BroadWay and VSTAR,
the sidecar, re-running from it, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_runner import run_cli
import tiny_models as tm
from attncraft.attention_processors.broadway import BroadWay
from attncraft.attention_processors.ctgm import CTGM, save_ctgm
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from attncraft.errors import InputError
from attncraft.outputs import read_sidecar
from attncraft.pipelines.text_to_video import TextToVideoPipeline
from attncraft.video import read_video
from ctgm_helpers import trained_like, write_tiny_video_model

KW = dict(num_frames=4, height=16, width=16, num_inference_steps=1, output_type="latent")


@pytest.fixture(scope="module")
def video_pipe():
    pipe = TextToVideoPipeline.from_pipe(tm.animatediff_pipeline())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, prompt="a red circle moves right, then turns blue", **kw):
    return pipe(prompt, generator=torch.Generator().manual_seed(0), **KW, **kw).frames


def test_ctgm_option_loads_a_file_once_and_an_untrained_one_is_the_stock_output(video_pipe, tmp_path):
    identity = save_ctgm(CTGM.for_pipeline(video_pipe, mode="tii"), tmp_path / "identity.safetensors")
    trained = save_ctgm(trained_like(CTGM.for_pipeline(video_pipe, mode="all")), tmp_path / "all.safetensors")
    stock = run(video_pipe)
    assert torch.equal(run(video_pipe, ctgm=identity), stock)
    out = run(video_pipe, ctgm=trained)
    kept = video_pipe._attncraft_ctgm[1]
    assert not torch.allclose(out, stock, atol=1e-4) and torch.equal(run(video_pipe, ctgm=trained), out)
    assert video_pipe._attncraft_ctgm[1] is kept  # the same unchanged file is not loaded again
    only_tfb = run(video_pipe, ctgm=trained, ctgm_components=["tfb"])
    assert not torch.equal(only_tfb, out) and torch.equal(run(video_pipe), stock)
    with pytest.raises(InputError, match="has no tii_text"):
        run(video_pipe, ctgm=trained, ctgm_components=["tii_text"])


def test_ctgm_schedules_broadway_and_vstar_on_one_call_in_a_fixed_order(video_pipe, tmp_path):
    path = save_ctgm(trained_like(CTGM.for_pipeline(video_pipe, mode="tii+tar")), tmp_path / "ctgm.safetensors")
    schedule = {0: "a red circle on the left", 3: "a blue circle on the right"}

    def temporal():
        return [BroadWay(reference_block=0, tau=1, num_active_steps=1), TemporalAttentionRegularization(until_time=0)]

    one = run(video_pipe, schedule, ctgm=path, techniques=temporal())
    other = run(video_pipe, schedule, ctgm=path, techniques=temporal()[::-1])
    assert torch.equal(one, other) and not torch.allclose(one, run(video_pipe, schedule, techniques=temporal()), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctgm-cli")
    sd, adapter = write_tiny_video_model(root)
    from attncraft.video.ctgm_training import frozen_motion_pipeline

    pipe = frozen_motion_pipeline(sd, adapter)
    path = save_ctgm(trained_like(CTGM.for_pipeline(pipe, mode="all", sites="part")), root / "ctgm.safetensors")
    return ["--model", sd, "--adapter", adapter, "--frames", "3", "--steps", "1", "--size", "32"], path


def test_cli_runs_with_a_ctgm_records_it_and_reruns_from_the_sidecar(tiny_cli, tmp_path, capsys):
    tiny, path = tiny_cli
    code, out, err = run_cli(["video", "a red circle moves right", *tiny, "--ctgm", str(path), "--ctgm-parts",
                              "tii_self,tii_cross,tar", "--format", "gif", "--out", str(tmp_path / "a")], capsys)  # fmt: skip
    assert code == 0, err
    video = tmp_path / "a" / out.split()[-1].rsplit("/", 1)[-1]
    settings = read_sidecar(video)
    assert settings["ctgm"] == str(path) and settings["ctgm_components"] == ["tii_self", "tii_cross", "tar"]
    recorded = settings["extra"]["ctgm"]
    assert recorded["mode"] == "all" and recorded["components"] == ["tar", "tii_cross", "tii_self"] and recorded["sha256_16"]
    code, out, err = run_cli(["video", "--from-sidecar", str(video) + ".json", "--format", "gif",
                              "--out", str(tmp_path / "b")], capsys)  # fmt: skip
    assert code == 0, err
    again = tmp_path / "b" / out.split()[-1].rsplit("/", 1)[-1]
    assert np.array_equal(read_video(again), read_video(video))
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)  # the file changed since: refused, naming it
    code, _, err = run_cli(["video", "--from-sidecar", str(video) + ".json", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "is not the one that made this video" in err and "Traceback" not in err


@pytest.mark.parametrize("extra, needle", [
    (["--ctgm", "missing.safetensors"], "does not exist"),
    (["--ctgm-parts", "tar"], "--ctgm-parts without --ctgm"),
    (["--ctgm", "shapes-all"], "not trained yet"),
])  # fmt: skip
def test_cli_ctgm_errors_are_one_line(extra, needle, tiny_cli, tmp_path, capsys, monkeypatch):
    import attncraft.shapes.models as models

    monkeypatch.setattr(models, "SHAPES_CTGM_DIR", tmp_path / "no-ctgm-here")
    tiny, _ = tiny_cli
    code, _, err = run_cli(["video", "a red circle", *tiny, *extra, "--out", str(tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_parts_the_mode_lacks(tiny_cli, tmp_path, capsys):
    tiny, path = tiny_cli
    code, _, err = run_cli(["video", "a red circle", *tiny, "--ctgm", str(path), "--ctgm-parts", "tii_text",
                            "--out", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2 and "has no tii_text" in err
