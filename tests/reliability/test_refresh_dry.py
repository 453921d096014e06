"""``tools/gpu/refresh_all.sh`` with ``DRY=1``: the GPU refresh's control flow (who waits for whom, which tree
each job runs in, which product it takes), on a stand-in tree of three model folders, in seconds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "gpu" / "refresh_all.sh"


def _dry(tmp_path: Path, **env: str) -> tuple[list[str], Path, Path]:
    root, out, work = tmp_path / "root", tmp_path / "out", tmp_path / "work"
    for name in ("shapes-sd", "shapes-clip", "shapes-motion"):
        (root / "assets" / "models" / name).mkdir(parents=True)
        (root / "assets" / "models" / name / "config.json").write_text("{}")
    run_env = {**os.environ, "DRY": "1", "OUT": str(out), "REFRESH_WORK": str(work), **env}
    done = subprocess.run(["bash", str(SCRIPT)], cwd=root, env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [re.sub(r"^\d\d:\d\d:\d\d ", "", line) for line in (out / "refresh.log").read_text().splitlines()]
    return events, out, work


def _first(events: list[str], text: str) -> int:
    return next(i for i, e in enumerate(events) if e.startswith(text))


def _command(out: Path, job: str) -> str:
    return (out / job / "job.log").read_text()


@pytest.mark.slow
def test_dependants_wait_for_their_models_and_use_them(tmp_path):
    events, out, work = _dry(tmp_path)
    dpl_rows = ("dpl_psnr", "dpl_world", "dpl_generated", "dpl_same", "dpl_three", "dpl_bf16")
    for job in ("sd", "clip", "motion", "realcustom", "dpl_effect", "ctgm", "broadway_vstar", "xmesh_claim", *dpl_rows):
        assert (out / job / ".rc").read_text().strip() == "0", job
    # wave 2 starts after the SD and takes its product; CTGM and BroadWay/VSTAR after the motion adapter
    for later in ("start motion", "start dpl_world", "start realcustom"):
        assert _first(events, "end sd") < _first(events, "wave 2 uses the new SD") < _first(events, later)
    # the DPL effect runs as six processes in the new tree, merged once the last has ended; edits shares world's
    assert max(_first(events, f"end {job} ") for job in dpl_rows) < _first(events, "start dpl_effect")
    assert "--rows world,edits " in _command(out, "dpl_world") and "--rows same,edits-same " in _command(out, "dpl_same")
    assert f"in {work / 'new'}: " in _command(out, "dpl_bf16")
    merge = _command(out, "dpl_effect")
    assert "--merge " in merge and all(str(out / job / "dpl_effect.json") in merge for job in dpl_rows)
    assert not (out / "motion_eval").exists()  # the adapter is retrained and evaluated by its own job
    for later in ("start ctgm", "start broadway_vstar"):
        assert _first(events, "end motion") < _first(events, "wave 2 uses the new motion adapter") < _first(events, later)
    # RealCustom trains on the new SD with its own image encoder (the train script's default), not the mesh CLIP
    assert f"in {work / 'new'}: WORK=" in _command(out, "realcustom") and "CLIP_DIR" not in _command(out, "realcustom")
    assert (work / "newclip" / "shapes-clip" / "config.json").is_file()
    assert "TRAIN_VISION_FROM=0 " in _command(out, "clip")
    assert f"--clip {work / 'newclip' / 'shapes-clip'}" in _command(out, "xmesh_claim")
    # the recipes: the SD with the relation contrast, the motion adapter without the caption contrast
    assert "CONTRAST=0.5 " in _command(out, "sd") and "CONTRAST= " in _command(out, "motion")


@pytest.mark.slow
def test_realcustom_keeps_its_encoder_and_an_empty_vision_start_freezes_the_trunk(tmp_path):
    events, out, work = _dry(tmp_path, JOBS="sd clip", SD_CONTRAST="", CLIP_VISION_FROM="")
    assert "TRAIN_VISION_FROM= " in _command(out, "clip")
    assert f"in {work / 'new'}: WORK=" in _command(out, "realcustom")
    assert "CONTRAST= " in _command(out, "sd") and not (out / "motion").exists()
    assert "no motion adapter: ctgm and broadway_vstar skipped" not in "\n".join(events)  # the tree's adapter serves
    # and is evaluated on the new SD, in the new tree, after the SD
    assert _first(events, "wave 2 uses the new SD") < _first(events, "start motion_eval")
    assert f"in {work / 'new'}: " in _command(out, "motion_eval") and "--what motion " in _command(out, "motion_eval")
    # on a copy of the adapter: the evaluation re-saves its guidance there, not where CTGM and BroadWay/VSTAR read it
    assert f"--adapter {work / 'motion_eval' / 'shapes-motion'} " in _command(out, "motion_eval")


@pytest.mark.slow
def test_the_motion_pair_trains_beside_from_the_same_start_and_is_not_shipped(tmp_path):
    events, out, work = _dry(tmp_path, JOBS="motion", MOTION_INIT="assets/models/shapes-motion", MOTION_PAIR="0.5",
                             MOTION_PAIR_MIN_T="800")
    plain, paired = _command(out, "motion"), _command(out, "motion_contrast")
    assert "CONTRAST= CONTRAST_MIN_T= INIT=assets/models/shapes-motion " in plain
    assert "CONTRAST=0.5 CONTRAST_MIN_T=800 INIT=assets/models/shapes-motion " in paired
    assert f"WORK={work / 'motion_contrast'} " in paired and (out / "motion_contrast" / ".rc").read_text().strip() == "0"
    # the dependants take the plain adapter and do not wait for the paired one
    assert _first(events, "end motion ") < _first(events, "wave 2 uses the new motion adapter") < _first(events, "start ctgm")
    assert not list((out / "motion_contrast").glob("*.tar"))


@pytest.mark.slow
def test_without_the_pair_no_second_motion_adapter(tmp_path):
    events, out, _ = _dry(tmp_path, JOBS="motion")
    assert not (out / "motion_contrast").exists() and "INIT= " in _command(out, "motion")


@pytest.mark.slow
def test_quiet_timings_run_last_one_at_a_time(tmp_path):
    events, out, _ = _dry(tmp_path, JOBS="sd", QUIET_BENCH="1")
    quiet = ("quiet_ctgm", "quiet_realcustom", "quiet_dpl", "quiet_dpl_cudagraphs")
    others = [e for e in events if e.startswith("end ") and not e.startswith(tuple(f"end {q} " for q in quiet))]
    last_other = max(events.index(e) for e in others)
    starts = [_first(events, f"start {q}") for q in quiet]
    ends = [_first(events, f"end {q} ") for q in quiet]
    assert last_other < starts[0] < ends[0] < starts[1] < ends[1] < starts[2] < ends[2] < starts[3] < ends[3]
    assert "--compile-backend cudagraphs" in _command(out, "quiet_dpl_cudagraphs")
    assert "--variants release,release_reuse,release_condmask_reuse --rounds 5 --profile " in _command(out, "quiet_realcustom")
    events, out, _ = _dry(tmp_path / "plain", JOBS="sd")
    assert not any((out / q).exists() for q in quiet)
