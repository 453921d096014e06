"""Running units of jobs in one worker: models cached per (job type, model options, device).

A :class:`Unit` is one or more jobs of one job type that share a model (and, when there are several,
every setting their job type does not batch over); the coordinator forms units before any work
starts, so the same manifest gives the same units whatever the number or kind of workers. A
:class:`Worker` (in the coordinating process, in a worker process of the local backend, or in a Ray
actor) runs units: it loads each model once and keeps the last few, prepares every job (the job
type's checks that need the model: a job that fails them fails alone), runs the prepared jobs in
one call, and writes each finished job's JSON sidecar (``<stem>.json``) after its files. A failing
batched call is retried job by job so that only the job at fault fails; a full disk fails the rest
of the unit at once (``fatal``: the coordinator stops the batch).
"""

from __future__ import annotations

import errno
import gc
import os
import socket
import time
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.batch.jobs import JobRun, JobType, get_job_type
from attncraft.errors import AttncraftError, short_reason


@dataclass
class JobSpec:
    """What a worker needs of one job (picklable)."""

    id: str
    command: str
    options: dict[str, Any]
    spec: dict[str, Any]
    stem: str
    source: str
    line: int | None = None
    title: str = ""

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "options": self.spec, "source": self.source, "stem": self.stem,
                "title": self.title}


@dataclass
class Unit:
    index: int
    command: str
    model_key: tuple
    jobs: list[JobSpec]


@dataclass
class JobResult:
    id: str
    ok: bool
    files: list[str] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None
    """The traceback of an unexpected exception (not of a one-line AttncraftError)."""
    seconds: float = 0.0
    fatal: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitResult:
    index: int
    results: list[JobResult]
    worker: str
    load_seconds: float = 0.0
    run_seconds: float = 0.0


def error_text(exc: BaseException) -> str:
    """One line for a failed job: an AttncraftError's own line, else the exception's type and gist."""
    if isinstance(exc, AttncraftError):
        return exc.one_line()
    return f"{type(exc).__name__}: {short_reason(exc, 300)}"


def is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _detail(exc: BaseException) -> str | None:
    if isinstance(exc, AttncraftError):
        return None
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(lines)[-4000:]


def worker_name(label: str = "") -> str:
    base = f"{socket.gethostname()}:{os.getpid()}"
    return f"{label} ({base})" if label else base


class Worker:
    """Runs units (see the module docstring) on ``device`` and writes into ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, device: str = "auto", label: str = "", score: bool = False,
                 cache_size: int = 2, extra_modules: Sequence[str] = (), threads: int | None = None):
        self.out_dir = Path(out_dir)
        self.device = device
        self.name = worker_name(label)
        self.score = score
        self.cache_size = max(1, cache_size)
        self.extra_modules = tuple(extra_modules)
        self.models: OrderedDict[tuple, Any] = OrderedDict()
        self.load_failures: dict[tuple, BaseException] = {}
        self.loads = 0
        if threads:
            _set_threads(threads)

    # -- models ------------------------------------------------------------------------------------

    def _model(self, job_type: JobType, unit: Unit) -> tuple[Any, float]:
        key = (*unit.model_key, ("device", self.device))
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key], 0.0
        if key in self.load_failures:
            raise self.load_failures[key]
        while len(self.models) >= self.cache_size:
            self.models.popitem(last=False)
            gc.collect()
            _empty_cuda_cache()
        start = time.perf_counter()
        try:
            model = job_type.load(unit.jobs[0].options, self.device)
        except Exception as exc:  # noqa: BLE001 - every job of this model fails with the load's error
            self.load_failures[key] = exc
            raise
        self.loads += 1
        self.models[key] = model
        return model, time.perf_counter() - start

    # -- jobs --------------------------------------------------------------------------------------

    def _run(self, spec: JobSpec) -> JobRun:
        return JobRun(spec.id, spec.command, dict(spec.options), spec.stem, self.out_dir, score=self.score, line=spec.line)

    def _finish(self, spec: JobSpec, run: JobRun, seconds: float) -> JobResult:
        from attncraft.outputs import write_sidecar

        write_sidecar(self.out_dir / spec.stem, run.settings, job=spec.record(), files=run.files, metrics=run.metrics,
                      seconds=round(seconds, 4), worker=self.name)
        return JobResult(spec.id, True, files=[*run.files, f"{spec.stem}.json"], seconds=seconds, metrics=run.metrics)

    def _failed(self, spec: JobSpec, exc: BaseException, seconds: float = 0.0) -> JobResult:
        return JobResult(spec.id, False, error=error_text(exc), detail=_detail(exc), seconds=seconds,
                         fatal=is_disk_full(exc))

    def _run_together(self, job_type: JobType, model: Any, items: list[tuple[JobSpec, JobRun]]) -> list[JobResult]:
        start = time.perf_counter()
        try:
            job_type.run(model, [run for _spec, run in items])
        except Exception as exc:  # noqa: BLE001 - isolate the job at fault, below
            if len(items) == 1 or is_disk_full(exc):
                seconds = (time.perf_counter() - start) / len(items)
                return [self._failed(spec, exc, seconds) for spec, _run in items]
        else:
            seconds = (time.perf_counter() - start) / len(items)
            finished = []
            for spec, run in items:
                try:
                    finished.append(self._finish(spec, run, seconds))
                except Exception as exc:  # noqa: BLE001 - e.g. a full disk while writing the sidecar
                    finished.append(self._failed(spec, exc, seconds))
            return finished
        results = []
        for spec, run in items:  # one at a time, so that only the job at fault fails
            fresh = self._run(spec)
            fresh.state = run.state
            results.extend(self._run_together(job_type, model, [(spec, fresh)]))
            if results[-1].fatal:
                done = {r.id for r in results}
                results.extend(JobResult(s.id, False, error=results[-1].error, fatal=True) for s, _r in items if s.id not in done)
                break
        return results

    def run_unit(self, unit: Unit) -> UnitResult:
        """Run every job of ``unit``; never raises for a job's failure (it is in the results)."""
        start = time.perf_counter()
        job_type = get_job_type(unit.command, self.extra_modules)
        if job_type is None:
            exc = LookupError(f"no job type {unit.command!r} in this worker")
            return UnitResult(unit.index, [self._failed(s, exc) for s in unit.jobs], self.name)
        try:
            model, load_seconds = self._model(job_type, unit)
        except Exception as exc:  # noqa: BLE001
            return UnitResult(unit.index, [self._failed(s, exc) for s in unit.jobs], self.name,
                              run_seconds=time.perf_counter() - start)
        results: list[JobResult] = []
        ready: list[tuple[JobSpec, JobRun]] = []
        for spec in unit.jobs:
            run = self._run(spec)
            if job_type.prepare is not None:
                try:
                    run.state = job_type.prepare(model, run)
                except Exception as exc:  # noqa: BLE001 - this job alone fails
                    results.append(self._failed(spec, exc))
                    continue
            ready.append((spec, run))
        if ready:
            results.extend(self._run_together(job_type, model, ready))
        order = {s.id: i for i, s in enumerate(unit.jobs)}
        results.sort(key=lambda r: order[r.id])
        return UnitResult(unit.index, results, self.name, load_seconds=load_seconds,
                          run_seconds=time.perf_counter() - start - load_seconds)


def _set_threads(threads: int) -> None:
    """Torch's CPU threads for this worker: now if torch is loaded, else when it loads (the
    environment variable it reads), so a worker whose jobs need no torch never imports it."""
    import sys

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _empty_cuda_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
