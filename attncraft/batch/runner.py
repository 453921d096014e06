"""``attncraft batch run``: run a manifest's jobs into one output folder, resumably.

* Every job's outputs are named after the hash of its settings (:mod:`attncraft.batch.manifest`),
  written under temporary names and renamed when complete, then its JSON sidecar (``<stem>.json``),
  then its record in the status file (:mod:`attncraft.batch.status`).
* A job is finished when its status record says ``done`` and its files are there. Running the same
  command again (after a kill, a crash, a full disk) runs only the jobs that are not finished: a
  job whose sidecar was written but whose record was not (killed in between) is taken as done;
  failed jobs are retried (``retry_failed=False`` leaves them).
* A failing job is recorded with its error and does not stop the others; a full disk stops the
  batch (every later write would fail too), keeping everything finished.
* Jobs that share a model go to the same worker, which loads it once; jobs that also share every
  setting their job type does not batch over are run together, up to ``batch_size`` a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.batch.backends import Backend, dispatch, make_backend
from attncraft.batch.jobs import get_job_type
from attncraft.batch.manifest import Job
from attncraft.batch.status import StatusLog, folder_lock
from attncraft.batch.worker import JobSpec, Unit, UnitResult
from attncraft.errors import AttncraftError, InputError
from attncraft.outputs import prepare_output_dir, sidecar_path

DEFAULT_BATCH_SIZE = 8


class JobsFailed(AttncraftError):
    """Some jobs failed (each is recorded with its error); the others are done."""

    exit_code = 1


@dataclass
class BatchSummary:
    total: int
    already_done: int = 0
    skipped_failed: int = 0
    done: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    """Why the batch stopped before its end (a full disk), or None."""
    seconds: float = 0.0
    load_seconds: float = 0.0
    """Model loading, summed over workers."""
    busy_seconds: float = 0.0
    """Running jobs (preparing, the pipeline calls, writing), summed over workers."""
    pipeline_calls: int = 0
    backend: str = ""

    @property
    def remaining(self) -> int:
        return self.total - self.already_done - self.skipped_failed - self.done - len(self.failed)


def plan_units(jobs: Sequence[Job], batch_size: int = DEFAULT_BATCH_SIZE, extra_modules: Sequence[str] = ()) -> list[Unit]:
    """Group jobs into units: by model first (in the order models first appear), then jobs that can
    share a call, ``batch_size`` at most a unit. Depends on the jobs alone, not on the workers."""
    groups: dict[tuple, list[Job]] = {}
    model_order: dict[tuple, int] = {}
    for job in jobs:
        job_type = get_job_type(job.command, extra_modules)
        model_key = job_type.model_key(job.options)
        batch_key = job_type.batch_key(job.options)
        model_order.setdefault(model_key, len(model_order))
        groups.setdefault((model_key, batch_key if batch_key is not None else ("job", job.id)), []).append(job)
    units: list[Unit] = []
    size = max(1, batch_size)
    for (model_key, _batch_key), members in sorted(groups.items(), key=lambda item: model_order[item[0][0]]):
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            specs = [JobSpec(j.id, j.command, j.options, j.spec, j.stem, j.source, j.line, j.title) for j in chunk]
            units.append(Unit(len(units), chunk[0].command, model_key, specs))
    return units


def _finished(out_dir: Path, job: Job, record: dict[str, Any] | None) -> bool:
    if record is None or record.get("state") != "done":
        return False
    return all((out_dir / name).exists() for name in record.get("files", []))


def _sidecar_of(out_dir: Path, job: Job) -> dict[str, Any] | None:
    import json

    path = sidecar_path(out_dir / job.stem)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("job", {}).get("id") != job.id:
        return None
    if not all((out_dir / name).exists() for name in data.get("files", [])):
        return None
    return data


def run_batch(
    jobs: Sequence[Job],
    out: str | Path,
    *,
    backend: str | Backend = "local",
    workers: int | None = None,
    gpus: Sequence[int] | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    score: bool = False,
    retry_failed: bool = True,
    ray_address: str | None = None,
    threads: int | None = None,
    extra_modules: Sequence[str] = (),
    progress: bool | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> BatchSummary:
    """Run the jobs that are not finished in ``out`` (see the module docstring); returns what happened.

    Failed jobs are in ``summary.failed``; the caller decides what that means (the CLI exits 1).
    """
    from attncraft.progress import progress_task

    start = time.perf_counter()
    out_dir = prepare_output_dir(out)
    summary = BatchSummary(total=len(jobs))
    with folder_lock(out_dir):
        status = StatusLog(out_dir)
        records = status.read()
        if status.torn_lines:
            log(f"note: {status.torn_lines} torn line(s) in {status.path.name} (a killed run) were skipped")
        pending: list[Job] = []
        for job in jobs:
            record = records.get(job.id)
            if _finished(out_dir, job, record):
                summary.already_done += 1
                continue
            side = _sidecar_of(out_dir, job)
            if side is not None:  # finished, but the run was killed before it was recorded
                status.append({"id": job.id, "state": "done", **job.to_dict(), "files": [*side["files"], sidecar_path(job.stem).name],
                               "seconds": side.get("seconds"), "worker": side.get("worker"), "recovered": True})
                summary.already_done += 1
                continue
            if record is not None and record.get("state") == "failed" and not retry_failed:
                summary.skipped_failed += 1
                continue
            pending.append(job)
        units = plan_units(pending, batch_size, extra_modules)
        summary.pipeline_calls = len(units)
        if not units:
            summary.seconds = time.perf_counter() - start
            return summary
        engine = backend if isinstance(backend, Backend) else make_backend(
            backend, out_dir, workers=workers, gpus=gpus, device=device, score=score, extra_modules=extra_modules,
            ray_address=ray_address, threads=threads)
        summary.backend = engine.describe()
        log(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''}: {summary.already_done} already done, {len(pending)} to run in {len(units)} "
            f"call{'s' if len(units) != 1 else ''} on {summary.backend}")
        by_id = {job.id: job for job in pending}

        with progress_task("jobs", len(pending), enabled=progress) as update:
            def on_result(result: UnitResult) -> None:
                summary.load_seconds += result.load_seconds
                summary.busy_seconds += result.run_seconds
                for item in result.results:
                    job = by_id[item.id]
                    record = {"id": job.id, **job.to_dict(), "seconds": round(item.seconds, 4), "worker": result.worker}
                    if item.ok:
                        status.append({**record, "state": "done", "files": item.files})
                        summary.done += 1
                    else:
                        status.append({**record, "state": "failed", "error": item.error, "detail": item.detail})
                        summary.failed.append({"source": job.source, "stem": job.stem, "error": item.error})
                        if item.fatal and summary.stopped is None:
                            summary.stopped = item.error
                finished = summary.done + len(summary.failed)
                update(finished, f"{len(summary.failed)} failed" if summary.failed else "")

            dispatch(engine, units, on_result, should_stop=lambda: summary.stopped is not None)
    summary.seconds = time.perf_counter() - start
    return summary


def raise_for_summary(summary: BatchSummary, out_dir: Path) -> None:
    """The one-line error of a batch that stopped or had failures (nothing if all went well)."""
    kept = summary.already_done + summary.done
    if summary.stopped is not None:
        raise InputError(f"the batch stopped: {summary.stopped}",
                         f"then run the same command again: the {kept} finished job{'s are' if kept != 1 else ' is'} kept "
                         f"and only the {summary.total - kept} others run")
    if summary.failed:
        first = summary.failed[0]
        n = len(summary.failed)
        raise JobsFailed(f"{n} of {summary.total} jobs failed (first: {first['source']}: {first['error']})",
                         f"'attncraft batch report {out_dir}' shows every error; running the same command again retries only the failed jobs")
