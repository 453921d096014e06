"""The Ray backend on a local Ray instance with 2 CPU workers: the files the local runner writes."""

from __future__ import annotations

import json
import os

import pytest

import fake_jobs  # noqa: F401 - registers the "solid" job type
from attncraft.batch.manifest import load_manifest
from attncraft.batch.runner import run_batch
from batch_helpers import records, subprocess_env, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'attncraft[distributed]'); .ci/run installs it")

MODULES = ("fake_jobs",)


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module: 2 CPUs, workers that can import the fake job type."""
    env = subprocess_env()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": env["PYTHONPATH"], "OMP_NUM_THREADS": "1",
                                       "HF_HUB_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def comparable(folder, name):
    """A file's content, less what says where and how long it ran."""
    path = folder / name
    if name.endswith(".json"):
        data = json.loads(path.read_text())
        data.pop("worker"), data.pop("seconds")
        return data
    return path.read_bytes()


@pytest.mark.slow
def test_ray_workers_write_what_the_local_runner_writes(tmp_path, local_ray):
    marker = tmp_path / "die"
    marker.touch()
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"command": "image", "prompt": "a red circle", "steps": 2, "sweep": {"seed": [0, 1]}},
        {"command": "image", "prompt": "a yellow star on the right", "steps": 2, "sweep": {"seed": [0, 1]}},
        {"command": "solid", "label": "broken", "fail": True},
        {"command": "solid", "label": "kills-its-worker", "die-if": str(marker), "size": 16},
        {"command": "solid", "label": "fine", "size": 24},
    ])
    jobs = load_manifest(manifest, MODULES)
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    summary = run_batch(jobs, on_ray, backend="ray", workers=2, device="cpu", batch_size=2, extra_modules=MODULES)
    assert summary.backend == "2 Ray workers (1 CPU each) on a local Ray instance"
    assert summary.done == 5 and len(summary.failed) == 2, summary.failed
    errors = {f["source"]: f["error"] for f in summary.failed}
    assert errors["m.jsonl:3"] == "RuntimeError: job broken was asked to fail <b>"
    assert errors["m.jsonl:4"].startswith("the worker Ray worker") and "died while running this job" in errors["m.jsonl:4"]

    marker.unlink()
    summary_local = run_batch(jobs, local, device="cpu", batch_size=2, extra_modules=MODULES)
    assert summary_local.done == 6 and len(summary_local.failed) == 1

    done_ray = {r["id"]: r for r in records(on_ray) if r["state"] == "done"}
    done_local = {r["id"]: r for r in records(local) if r["state"] == "done"}
    assert set(done_ray) < set(done_local) and len(done_ray) == 5
    for job_id, record in done_ray.items():
        assert record["files"] == done_local[job_id]["files"]
        for name in record["files"]:
            assert comparable(on_ray, name) == comparable(local, name), name  # PNGs byte for byte

    # the same command again on Ray runs only the two failed jobs; the killed one now finishes
    again = run_batch(jobs, on_ray, backend="ray", workers=2, device="cpu", batch_size=2, extra_modules=MODULES)
    assert again.already_done == 5 and again.done == 1 and len(again.failed) == 1
    assert sorted(os.listdir(on_ray)) == sorted(os.listdir(local))
