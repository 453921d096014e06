"""The runner: hash-named atomic outputs, the status file, resuming, failures, kills and a full disk."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fake_jobs  # noqa: F401 - registers the "solid" job type
from attncraft.batch.manifest import load_manifest
from attncraft.batch.runner import plan_units, run_batch
from attncraft.outputs import read_png_settings
from batch_helpers import records, solid_jobs, subprocess_env, temporaries, write_jsonl
from cli_runner import run_cli

MODULES = ("fake_jobs",)


def snapshot(folder):
    """Bytes and modification time of every file (what must not change when a run resumes)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file() and p.name not in ("batch-status.jsonl", "index.html", ".attncraft-batch.lock")}


def test_outputs_are_named_by_settings_with_sidecars_and_a_status(tmp_path, calls, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"command": "solid", "label": "one", "color": "green"},
        {"command": "solid", "label": "two", "sweep": {"media": ["png", "gif", "folder"]}},
    ])
    out = tmp_path / "out"
    code, stdout, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs"], capsys)
    assert code == 0, err
    assert "4 done, 0 failed, 0 already done" in err and stdout.strip() == str(out / "index.html")
    jobs = load_manifest(manifest, MODULES)
    for job in jobs:
        side = json.loads((out / f"{job.stem}.json").read_text())
        assert side["job"]["id"] == job.id and side["job"]["options"] == job.spec
        assert side["metrics"]["brightness"] > 0 and side["attncraft"]["label"] == job.options["label"]
        for name in side["files"]:
            assert (out / name).exists()
    png = out / f"{jobs[0].stem}.png"
    assert np.asarray(Image.open(png))[0, 0].tolist() == [20, 200, 40]
    assert read_png_settings(png) == {"label": "one", "color": "green", "size": 32, "seed": 0}
    assert (out / f"{jobs[2].stem}.gif").is_file() and (out / jobs[3].stem / "turntable.gif").is_file()
    assert sorted(r["id"] for r in records(out)) == sorted(j.id for j in jobs)
    assert all(r["state"] == "done" for r in records(out)) and not temporaries(out)
    # one load; the jobs that differ only in options the job type batches over share a call
    assert calls.loads() == ["a"]
    assert calls.runs() == [["one", "two"], ["two"], ["two"]]


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path, calls, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", solid_jobs(["a", "b", "c"]) + [
        {"command": "solid", "label": "bad", "fail": True}, {"command": "solid", "label": "d", "fail": True, "size": 16}])
    out = tmp_path / "out"
    code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs", "--batch-size", "4"], capsys)
    assert code == 1
    assert "error: 2 of 5 jobs failed (first: m.jsonl:4: RuntimeError: job bad was asked to fail <b>)" in err
    states = {r["options"]["label"]: r for r in records(out)}
    assert {k: v["state"] for k, v in states.items()} == {"a": "done", "b": "done", "c": "done", "bad": "failed", "d": "failed"}
    assert "Traceback" in states["bad"]["detail"] and not temporaries(out)
    # the batched call failed, so its jobs ran one at a time: only the job at fault failed
    assert calls.runs() == [["a", "b", "c", "bad"], ["a"], ["b"], ["c"], ["bad"], ["d"]]
    calls.clear()
    before = snapshot(out)
    code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs", "--skip-failed"], capsys)
    assert code == 0 and calls.runs() == [] and "2 failed before and skipped" in err
    code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs"], capsys)
    assert code == 1 and calls.runs() == [["bad"], ["d"]]  # only the failed jobs run again
    assert snapshot(out) == before


def test_a_killed_run_resumes_without_redoing_finished_jobs(tmp_path, calls):
    """SIGKILL of the whole run in the middle of a job, then the same command again."""
    marker = tmp_path / "kill-now"
    marker.touch()
    jobs = solid_jobs(["j0", "j1", "j2"]) + [{"command": "solid", "label": "j3", "die-if": str(marker)}] + solid_jobs(["j4", "j5"])
    for i, job in enumerate(jobs):
        job["seed"] = i
        job["size"] = 8 + 8 * i  # distinct sizes: one job a unit, run in order
    manifest = write_jsonl(tmp_path / "m.jsonl", jobs)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "attncraft.cli.app", "batch", "run", str(manifest), "--out", str(out)]
    first = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert first.returncode == -9, first.stderr
    assert [r["options"]["label"] for r in records(out)] == ["j0", "j1", "j2"]
    before = snapshot(out)
    with open(out / "batch-status.jsonl", "a") as handle:  # a record torn by the kill
        handle.write('{"id": "0123", "state": "do')
    marker.unlink()
    calls.clear()
    second = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "3 done, 0 failed, 3 already done" in second.stderr and "1 torn line(s)" in second.stderr
    assert calls.runs() == [["j3"], ["j4"], ["j5"]] and calls.loads() == ["a"]
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k in before} == before  # finished files untouched
    assert len({r["id"] for r in records(out)}) == 6 == len(records(out))
    assert not temporaries(out)


def test_a_sidecar_without_its_record_counts_as_done(tmp_path, calls):
    manifest = write_jsonl(tmp_path / "m.jsonl", solid_jobs(["a", "b"]))
    out = tmp_path / "out"
    jobs = load_manifest(manifest, MODULES)
    run_batch(jobs, out, extra_modules=MODULES)
    status = out / "batch-status.jsonl"
    status.write_text(status.read_text().splitlines()[0] + "\n")  # killed after b's sidecar, before its record
    calls.clear()
    summary = run_batch(jobs, out, extra_modules=MODULES)
    assert summary.already_done == 2 and summary.done == 0 and calls.runs() == []
    assert records(out)[-1]["recovered"] is True
    (out / f"{jobs[0].stem}.png").unlink()  # a result deleted by hand is made again
    summary = run_batch(jobs, out, extra_modules=MODULES)
    assert summary.done == 1 and calls.runs() == [["a"]]


def test_a_full_disk_stops_the_batch_and_keeps_what_was_written(tmp_path, calls, monkeypatch, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", [dict(j, size=8 + 8 * i) for i, j in enumerate(solid_jobs("abcde"))])
    out = tmp_path / "out"
    real_save = Image.Image.save
    written = []

    def save(self, fp, *args, **kwargs):
        if len(written) == 2:  # the third image: half of it reaches the disk, then the disk is full
            with open(fp, "wb") as handle:
                handle.write(b"\x89PNG\r\n")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs"], capsys)
    assert code == 2
    stem_c = load_manifest(manifest, MODULES)[2].stem
    assert f"error: the batch stopped: no space left on the device while writing {out / stem_c}.png" in err
    assert "the 2 finished jobs are kept and only the 3 others run" in err
    assert [r["options"]["label"] for r in records(out) if r["state"] == "done"] == ["a", "b"]
    assert not temporaries(out) and not (out / f"{stem_c}.png").exists()
    before = snapshot(out)
    monkeypatch.setattr(Image.Image, "save", real_save)
    calls.clear()
    code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs"], capsys)
    assert code == 0, err
    assert calls.runs() == [["c"], ["d"], ["e"]]
    assert {k: v for k, v in snapshot(out).items() if k in before} == before


def test_a_killed_worker_process_fails_its_job_alone(tmp_path, calls, monkeypatch):
    """Two worker processes; one job SIGKILLs its worker; a fresh worker takes its place."""
    marker = tmp_path / "die"
    marker.touch()
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    jobs = [dict(j, size=8 + 8 * i) for i, j in enumerate(solid_jobs(["a", "b", "c", "d", "e", "f"]))]
    jobs[1]["die-if"] = str(marker)
    manifest = write_jsonl(tmp_path / "m.jsonl", jobs)
    summary = run_batch(load_manifest(manifest, MODULES), tmp_path / "out", workers=2, device="cpu", extra_modules=MODULES)
    assert summary.done == 5 and len(summary.failed) == 1
    (failure,) = summary.failed
    assert failure["source"] == "m.jsonl:2"
    assert "the worker worker" in failure["error"] and "died while running this job (killed by SIGKILL)" in failure["error"]
    assert sorted(label for run in calls.runs() for label in run) == ["a", "b", "c", "d", "e", "f"]
    # two workers, and the one that replaced the dead one if work was left for it by then
    assert len(calls.loads()) in (2, 3)
    assert not temporaries(tmp_path / "out")


def test_models_load_once_and_units_do_not_depend_on_workers(tmp_path, calls):
    jobs = solid_jobs([f"j{i}" for i in range(10)], size=16) + solid_jobs(["x", "y"], variant="b") + solid_jobs(["z"], size=24)
    manifest = write_jsonl(tmp_path / "m.jsonl", jobs)
    parsed = load_manifest(manifest, MODULES)
    units = plan_units(parsed, batch_size=4, extra_modules=MODULES)
    # by model (a before b), then by what may share a call, 4 jobs at most
    assert [[j.spec["label"] for j in u.jobs] for u in units] == [
        ["j0", "j1", "j2", "j3"], ["j4", "j5", "j6", "j7"], ["j8", "j9"], ["z"], ["x", "y"]]
    assert units == plan_units(parsed, batch_size=4, extra_modules=MODULES)
    run_batch(parsed, tmp_path / "out", batch_size=4, extra_modules=MODULES)
    assert calls.loads() == ["a", "b"] and len(calls.runs()) == 5


def test_one_run_per_folder_and_bad_options(tmp_path, capsys):
    from attncraft.batch.status import folder_lock
    from attncraft.errors import InputError

    manifest = write_jsonl(tmp_path / "m.jsonl", solid_jobs(["a"]))
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):
        with pytest.raises(InputError, match=f"another batch run \\(pid {os.getpid()} on .*\\) is writing to {out}"):
            run_batch(load_manifest(manifest, MODULES), out, extra_modules=MODULES)
    for args, needle in ((["--gpus", "0,x"], "--gpus '0,x' is not a list of GPU numbers"),
                         (["--backend", "slurm"], "unknown backend 'slurm'"),
                         (["--batch-size", "0"], "--batch-size must be between 1 and 1024"),
                         (["--workers", "2", "--gpus", "0"], "--workers 2 and --gpus 0 disagree")):
        code, _, err = run_cli(["batch", "run", manifest, "--out", out, "--job-module", "fake_jobs", *args], capsys)
        assert code == 2 and needle in err and "Traceback" not in err
    code, _, err = run_cli(["batch", "launch", manifest], capsys)
    assert code == 2 and "No such command 'launch'" in err
