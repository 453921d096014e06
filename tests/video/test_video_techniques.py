"""BroadWay and VSTAR on the text-to-video pipeline and `attncraft video`: the pipeline's ``broadway=`` /
``vstar=`` arguments, settings that round-trip, a run with both techniques and a rule synopsis whose
sidecar reproduces the same frames, and the errors that come before any model is loaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import UNetMotionModel

from attncraft.attention_processors.broadway import BroadWay, default_reference_block
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from attncraft.errors import InputError
from attncraft.outputs import read_sidecar
from attncraft.pipelines.text_to_video import temporal_techniques
from attncraft.video import read_video
from test_video_cli import run_cli
from tiny_lm import scripted_lm, tiny_tokenizer
from video_models import KW, seeded

TINY = ["--frames", "4", "--steps", "5", "--size", "32", "--format", "gif"]
"""5 steps: BroadWay's first 20 % is step 0, TAR's 56 % steps 0..2."""


def test_reference_block_is_up_blocks_1_with_three_up_blocks_or_more(video_pipe):
    with torch.device("meta"):  # the SD 1.5 layout, four up blocks
        sd15 = UNetMotionModel(cross_attention_dim=768)
    assert default_reference_block(sd15) == 1
    assert default_reference_block(video_pipe.unet) == 0  # two up blocks: up_blocks.1 would guide nothing


def test_settings_round_trip_and_unknown_keys_are_refused():
    techniques = (BroadWay(tau="all_nondc", beta=2.0, reference_block=0, clamp_negative=True),
                  TemporalAttentionRegularization("64D1_32D8", until_time=3),
                  TemporalAttentionRegularization(sigmas="2,6"))  # fmt: skip
    for technique in techniques:
        settings = json.loads(json.dumps(technique.settings()))  # as a sidecar stores it
        assert type(technique).from_settings(settings).settings() == technique.settings()
    assert TemporalAttentionRegularization(sigmas={0: 4}).preset == "64D4"  # the preset's own sigmas keep its name
    with pytest.raises(InputError, match="unknown broadway setting 'gamma'"):
        BroadWay.from_settings({"gamma": 1})
    with pytest.raises(InputError, match="vstar settings must be a mapping"):
        TemporalAttentionRegularization.from_settings([1])


def test_pipeline_arguments_are_the_techniques_in_the_documented_order(video_pipe):
    def frames(**kw):
        call = KW | dict(num_frames=4)
        return video_pipe("a red circle moves right", generator=seeded(1), output_type="latent", **call, **kw).frames

    both = frames(broadway={"tau": 1, "num_active_steps": 1}, vstar={"until_time": 0})
    tar, bw = TemporalAttentionRegularization(until_time=0), BroadWay(tau=1, num_active_steps=1, reference_block=0)
    assert torch.equal(both, frames(techniques=[bw, tar]))  # BroadWay given first: TAR still runs first
    assert not torch.equal(both, frames())
    with pytest.raises(InputError, match="tau 7 is too large for 4 frames"):  # the preset, checked before any work
        frames(broadway=True)
    with pytest.raises(InputError, match="broadway= takes True, a preset name"):
        frames(broadway=3)
    made = temporal_techniques(video_pipe.unet, broadway="videocrafter2", vstar="64D1_32D8")
    assert [type(t) for t in made] == [TemporalAttentionRegularization, BroadWay]  # TAR first, the composition order
    assert made[0].sigmas == {0: 1.0, 1: 8.0} and (made[1].alpha, made[1].beta, made[1].reference_block) == (0.1, 10.0, 0)
    assert temporal_techniques(video_pipe.unet, broadway=False, vstar=None) == [] and temporal_techniques(None, vstar=tar) == [tar]


@pytest.fixture
def tiny(video_folders):
    return ["--model", str(video_folders["sd"]), "--adapter", str(video_folders["adapter"]), *TINY]


@pytest.mark.slow
def test_broadway_vstar_synopsis_run_and_the_sidecar_reproduces_it(tiny, tmp_path, capsys):
    prompt = "a red circle moves right, then turns blue"
    code, out, err = run_cli(["video", prompt, *tiny, "--broadway", "--broadway-tau", "1", "--vstar", "--synopsis", "rule",
                              "--out", str(tmp_path / "a")], capsys)  # fmt: skip
    assert code == 0, err
    video = out.split()[-1]
    assert "broadway: alpha 0.6, beta 1.5, tau 1, guided from up_blocks.0, steps 0..0 of 5" in " ".join(err.split())
    settings = read_sidecar(video)
    states = ["a red circle moves right", "a red circle on the right turns blue", "a blue circle on the right"]
    assert settings["states"] == states and settings["state_frames"] is None  # the synopsis is the schedule
    assert settings["synopsis"] == {"method": "rule", "source": "rule", "states": states}
    assert settings["broadway"] == BroadWay(tau=1, reference_block=0).settings()
    assert settings["vstar"] == TemporalAttentionRegularization().settings()
    frames = read_video(video)
    code, out, err = run_cli(["video", "--from-sidecar", video, "--format", "gif", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert np.array_equal(read_video(out.split()[-1]), frames)
    # the stored techniques are what made those frames: without them the sidecar gives others
    side = tmp_path / "a" / (video.rsplit("/", 1)[-1] + ".json")
    data = json.loads(side.read_text())
    data["attncraft"].update(broadway=None, vstar=None)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(data))
    code, out, err = run_cli(["video", "--from-sidecar", str(plain), "--format", "gif", "--out", str(tmp_path / "c")], capsys)
    assert code == 0, err
    assert not np.array_equal(read_video(out.split()[-1]), frames)


def test_explicit_states_win_over_the_synopsis(tiny, tmp_path, capsys):
    code, out, err = run_cli(["video", "a red circle moves right, then turns blue", "--state", "a red circle",
                              "--state", "a green square", *tiny, "--steps", "1", "--synopsis", "rule",
                              "--out", str(tmp_path)], capsys)  # fmt: skip
    assert code == 0, err
    settings = read_sidecar(out.split()[-1])
    assert settings["states"] == ["a red circle", "a green square"] and settings["synopsis"] is None
    assert "--synopsis rule: not used" in err


def test_llm_synopsis_states_become_the_schedule(tiny, tmp_path, capsys):
    from attncraft.video.synopsis import build_instruction

    prompt = "a red circle moves right then turns blue"
    tokenizer = tiny_tokenizer()
    length = len(tokenizer(build_instruction(prompt, tokenizer)).input_ids)
    scripted_lm(tokenizer, length, "1 . a red circle 2 . a blue circle").save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    code, out, err = run_cli(["video", prompt, *tiny, "--steps", "1", "--synopsis", "llm", "--llm", str(tmp_path / "lm"),
                              "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert code == 0, err
    settings = read_sidecar(out.split()[-1])
    assert settings["states"] == ["a red circle", "a blue circle"] and settings["broadway"] is None
    assert settings["synopsis"] == {"method": "llm", "source": "llm", "model": str(tmp_path / "lm"),
                                    "raw": "1 . a red circle 2 . a blue circle", "states": settings["states"]}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--broadway"], "BroadWay tau 7 is too large for 4 frames"),  # the preset's tau on 4 frames
        (["--broadway", "--broadway-tau", "2"], "pass a tau of at most 1 (--broadway-tau 1)"),
        (["--broadway", "--broadway-preset", "sdxl"], "unknown --broadway-preset 'sdxl'"),
        (["--vstar", "--vstar-preset", "64D3"], "unknown --vstar-preset '64D3'"),
        (["--synopsis", "llm", "--llm", "models/missing/tiny-lm"], "the --llm path 'models/missing/tiny-lm' does not exist"),
        (["--llm", "missing.gguf"], "the --llm path 'missing.gguf' does not exist"),
        (["--broadway-alpha", "0.5"], "--broadway-alpha needs --broadway"),
        (["--broadway", "--broadway-tau", "1", "--free-noise"], "--broadway needs temporal attention over the whole clip"),
    ],
)
def test_bad_technique_options_are_one_line_before_any_model_loads(extra, needle, tmp_path, capsys):
    out = tmp_path / "out"
    # a model that does not exist: the error must come before it is looked at
    code, _, err = run_cli(["video", "a red circle moves right", "--model", str(tmp_path / "no-model"), *TINY, *extra,
                            "--out", str(out)], capsys)  # fmt: skip
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not out.exists()  # nothing written, not even the folder


def test_from_sidecar_takes_no_technique_options(tmp_path, capsys):
    code, _, err = run_cli(["video", "--from-sidecar", str(tmp_path / "x.json"), "--vstar"], capsys)
    assert code == 2 and "--from-sidecar re-runs the stored techniques and states and takes no --vstar" in err
