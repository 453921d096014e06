"""Where units run: in this process, in one worker process per GPU (or CPU share), or on Ray.

Every backend runs the same :class:`~attncraft.batch.worker.Worker` code; they differ only in where
it lives and how a unit reaches it. :func:`dispatch` drives them all: each worker gets up to
``depth`` units at a time, preferring units of the model it already holds (so a model is loaded once
per worker, not once per unit); a worker that dies (killed, out of memory, a crash in native code)
fails the jobs of the unit it was running with the reason, its waiting units go back to the queue,
and a fresh worker takes its place.

* ``local`` with one worker and no ``--gpus``: the coordinating process itself.
* ``local`` with ``--workers N`` or ``--gpus 0,1``: N spawned worker processes, each on its own GPU
  (``cuda:<id>``) or, on the CPU, with its share of the cores (``torch.set_num_threads``).
* ``ray``: one Ray actor per worker (``num_gpus=1`` each when the cluster has GPUs), connecting to
  ``--ray-address`` (``ray://host:10001``, ``auto``) or starting a local instance; the actors write
  into the same output folder, which must be on a file system every node sees.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.batch.worker import JobResult, Unit, UnitResult, Worker
from attncraft.errors import AttncraftError, InputError, short_reason

MAX_RESTARTS_PER_WORKER = 3


class BatchError(AttncraftError):
    """The batch cannot go on (a worker that cannot start, no Ray): nothing finished is lost."""


@dataclass
class Handle:
    """One worker slot of a backend."""

    index: int
    device: str
    label: str
    inflight: list[Unit] = field(default_factory=list)
    model_key: tuple | None = None
    restarts: int = 0
    alive: bool = True
    impl: Any = None


@dataclass
class Event:
    kind: str  # "result" | "died"
    handle: Handle
    result: UnitResult | None = None
    reason: str = ""
    unit: Unit | None = None
    """For "died": the unit it was running, if the backend knows it (else the first it was sent)."""


def died_results(unit: Unit, handle: Handle, reason: str) -> UnitResult:
    text = f"the worker {handle.label} died while running this job ({reason})"
    return UnitResult(unit.index, [JobResult(j.id, False, error=text) for j in unit.jobs], handle.label)


def _pick(queue: list[Unit], handle: Handle, handles: Sequence[Handle]) -> Unit:
    """The next unit for ``handle``: one of the model it holds, else one of a model no other worker holds."""
    for i, unit in enumerate(queue):
        if unit.model_key == handle.model_key:
            return queue.pop(i)
    held = {h.model_key for h in handles if h is not handle and h.alive}
    for i, unit in enumerate(queue):
        if unit.model_key not in held:
            return queue.pop(i)
    return queue.pop(0)


def dispatch(backend: "Backend", units: Sequence[Unit], on_result: Callable[[UnitResult], None],
             should_stop: Callable[[], bool] = lambda: False) -> None:
    """Run ``units`` on ``backend``, calling ``on_result`` (in this process) as each unit finishes."""
    queue = list(units)
    backend.start()
    try:
        while True:
            busy = any(h.inflight for h in backend.handles)
            if not busy and (not queue or should_stop()):
                return
            if queue and not should_stop():
                for handle in backend.handles:  # a worker that died is replaced once there is work for it
                    if not handle.alive and handle.restarts < MAX_RESTARTS_PER_WORKER:
                        handle.restarts += 1
                        backend.restart(handle)
                        handle.alive = True
                handles = [h for h in backend.handles if h.alive]
                if not handles:
                    raise BatchError("every worker died too often", "see the errors in the status file; run the same command again")
                for handle in handles:
                    while queue and len(handle.inflight) < backend.depth:
                        unit = _pick(queue, handle, handles)
                        handle.inflight.append(unit)
                        handle.model_key = unit.model_key
                        backend.submit(handle, unit)
            for event in backend.poll(0.5):
                handle = event.handle
                if event.kind == "result":
                    unit = next(u for u in handle.inflight if u.index == event.result.index)
                    handle.inflight.remove(unit)
                    on_result(event.result)
                    continue
                running = [event.unit] if event.unit is not None else handle.inflight[:1]
                waiting = [u for u in handle.inflight if u not in running]
                handle.inflight = []
                handle.model_key = None
                queue[:0] = waiting  # never started: they go to the next worker
                for unit in running:
                    on_result(died_results(unit, handle, event.reason))
                handle.alive = False
    except BaseException:
        backend.abort()  # interrupted or failed: stop the workers now (finished jobs are recorded)
        raise
    backend.close()


class Backend:
    """The interface :func:`dispatch` drives (see the subclasses)."""

    depth = 1
    handles: list[Handle]

    def start(self) -> None:
        raise NotImplementedError

    def submit(self, handle: Handle, unit: Unit) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Event]:
        raise NotImplementedError

    def restart(self, handle: Handle) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the workers once they are idle."""

    def abort(self) -> None:
        """Stop the workers at once (an interrupt, or an error in the coordinator)."""
        self.close()

    def describe(self) -> str:
        return f"{len(self.handles)} worker{'s' if len(self.handles) != 1 else ''}"


@dataclass
class WorkerConfig:
    """How to build a :class:`Worker` (picklable, sent to worker processes and actors)."""

    out_dir: str
    device: str = "auto"
    score: bool = False
    extra_modules: tuple[str, ...] = ()
    threads: int | None = None
    label: str = ""
    cwd: str | None = None
    """The coordinator's working directory: relative paths in jobs mean the same files in a worker."""

    def build(self) -> Worker:
        if self.cwd and os.path.isdir(self.cwd):
            os.chdir(self.cwd)
        return Worker(self.out_dir, device=self.device, label=self.label, score=self.score,
                      extra_modules=self.extra_modules, threads=self.threads)


class InProcessBackend(Backend):
    """Runs units in this process, one after the other."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.handles = [Handle(0, config.device, "worker 0 (this process)")]
        self.pending: list[Unit] = []
        self.worker: Worker | None = None

    def start(self) -> None:
        self.worker = self.config.build()

    def submit(self, handle: Handle, unit: Unit) -> None:
        self.pending.append(unit)

    def poll(self, timeout: float) -> list[Event]:
        if not self.pending:
            return []
        unit = self.pending.pop(0)
        return [Event("result", self.handles[0], self.worker.run_unit(unit))]

    def describe(self) -> str:
        return f"1 worker in this process on {self.config.device}"


# --------------------------------------------------------------------------------------------------
# Worker processes on this machine
# --------------------------------------------------------------------------------------------------


def _worker_process(conn, config: WorkerConfig) -> None:
    """Entry point of a local worker process: build the worker, then run the units it is sent."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator handles Ctrl-C and stops us
        worker = config.build()
        if config.device.startswith("cuda"):
            import torch

            torch.cuda.set_device(torch.device(config.device))
    except BaseException as exc:  # noqa: BLE001 - reported to the coordinator, which stops the batch
        conn.send(("error", None, f"{type(exc).__name__}: {short_reason(exc, 300)}"))
        return
    conn.send(("ready", None, worker.name))
    while True:
        try:
            unit = conn.recv()
        except EOFError:
            return
        if unit is None:
            return
        conn.send(("result", unit.index, worker.run_unit(unit)))


def _signal_text(code: int | None) -> str:
    if code is None:
        return "it stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LocalProcessBackend(Backend):
    """One spawned worker process per GPU (``gpus``) or per share of the CPU cores (``workers``)."""

    depth = 2  # the next unit waits in the worker's pipe, so the device never waits for the coordinator

    def __init__(self, config: WorkerConfig, workers: int = 1, gpus: Sequence[int] | None = None):
        self.config = config
        if gpus:
            devices = [f"cuda:{g}" for g in gpus]
            threads = max(1, min(4, (os.cpu_count() or 1) // len(devices)))
        else:
            devices = [config.device] * workers
            threads = max(1, (os.cpu_count() or 1) // workers)
        self.threads = config.threads or threads
        self.handles = [Handle(i, d, f"worker {i} on {d}") for i, d in enumerate(devices)]

    def _spawn(self, handle: Handle) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        config = WorkerConfig(**{**self.config.__dict__, "device": handle.device, "threads": self.threads,
                                 "label": f"worker {handle.index}"})
        process = ctx.Process(target=_worker_process, args=(child, config), daemon=True,
                              name=f"attncraft-batch-worker-{handle.index}")
        process.start()
        child.close()
        handle.impl = (process, parent)
        handle.label = f"worker {handle.index} on {handle.device} (pid {process.pid})"

    def start(self) -> None:
        for handle in self.handles:
            self._spawn(handle)

    def submit(self, handle: Handle, unit: Unit) -> None:
        _process, conn = handle.impl
        try:
            conn.send(unit)
        except (BrokenPipeError, OSError):
            pass  # the worker is gone; poll() sees its sentinel and reports it

    def poll(self, timeout: float) -> list[Event]:
        from multiprocessing.connection import wait

        by_object: dict[Any, Handle] = {}
        for handle in self.handles:
            if handle.alive and handle.impl is not None:
                process, conn = handle.impl
                by_object[conn] = handle
                by_object[process.sentinel] = handle
        events: list[Event] = []
        ready = wait(list(by_object), timeout)
        seen: set[int] = set()
        for obj in ready:
            handle = by_object[obj]
            if handle.index in seen:
                continue
            process, conn = handle.impl
            try:
                while conn.poll():
                    kind, _index, payload = conn.recv()
                    if kind == "result":
                        events.append(Event("result", handle, payload))
                    elif kind == "error":
                        raise BatchError(f"{handle.label} could not start: {payload}",
                                         "check --gpus/--device and the installation; finished jobs are kept")
                    elif kind == "ready":
                        handle.label = f"worker {handle.index} on {handle.device} (pid {process.pid})"
            except (EOFError, OSError):
                pass
            if not process.is_alive():
                process.join(1)
                seen.add(handle.index)
                conn.close()
                handle.impl = None
                events.append(Event("died", handle, reason=_signal_text(process.exitcode)))
        return events

    def restart(self, handle: Handle) -> None:
        self._spawn(handle)

    def abort(self) -> None:
        for handle in self.handles:
            if handle.impl is not None:
                handle.impl[0].terminate()
        self.close()

    def close(self) -> None:
        for handle in self.handles:
            if handle.impl is None:
                continue
            process, conn = handle.impl
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 10
        for handle in self.handles:
            if handle.impl is None:
                continue
            process, conn = handle.impl
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(5)
            conn.close()
            handle.impl = None

    def describe(self) -> str:
        devices = sorted({h.device for h in self.handles})
        return f"{len(self.handles)} worker processes on {', '.join(devices)} ({self.threads} threads each)"


# --------------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------------


class _RayWorker:
    """The Ray actor: a :class:`Worker` that keeps its models between units."""

    def __init__(self, config: WorkerConfig):
        import ray

        from attncraft.outputs import prepare_output_dir

        self.problem = None
        try:
            prepare_output_dir(config.out_dir, "the batch output folder")
        except AttncraftError as exc:
            self.problem = exc.one_line()
        gpus = ray.get_gpu_ids()
        device = "cuda" if gpus else config.device
        self.worker = WorkerConfig(**{**config.__dict__, "device": device}).build()

    def info(self) -> dict[str, Any]:
        return {"name": self.worker.name, "device": self.worker.device, "problem": self.problem}

    def run_unit(self, unit: Unit) -> UnitResult:
        return self.worker.run_unit(unit)


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError("the Ray backend needs Ray, which is not installed",
                         "pip install 'attncraft[distributed]' (or 'ray>=2.9'), or use --backend local") from None
    return ray


class RayBackend(Backend):
    """One Ray actor per worker; actors that die are replaced (see the module docstring)."""

    depth = 2

    def __init__(self, config: WorkerConfig, workers: int | None = None, address: str | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1):
        self.ray = import_ray()
        self.config = config
        self.address = address
        self.owns = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise BatchError(f"cannot start or reach {where}: {short_reason(exc, 200)}",
                                 "check --ray-address (ray://HOST:10001 or auto) or leave it out for a local instance") from None
            self.owns = True
        resources = self.ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = 1 if cluster_gpus else 0
        if workers is None:
            workers = max(1, int(cluster_gpus // gpus_per_worker) if gpus_per_worker else 1)
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.actor_class = self.ray.remote(_RayWorker)
        self.handles = [Handle(i, "cuda" if gpus_per_worker else config.device, f"Ray worker {i}") for i in range(workers)]
        self.futures: dict[Any, tuple[Handle, Unit]] = {}

    def _actor(self, handle: Handle) -> None:
        config = WorkerConfig(**{**self.config.__dict__, "label": f"Ray worker {handle.index}",
                                 "threads": self.config.threads or max(1, int(self.cpus_per_worker))})
        actor = self.actor_class.options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                         max_restarts=0, max_task_retries=0).remote(config)
        handle.impl = actor

    def start(self) -> None:
        for handle in self.handles:
            self._actor(handle)
        try:
            infos = self.ray.get([h.impl.info.remote() for h in self.handles], timeout=600)
        except Exception as exc:  # noqa: BLE001
            raise BatchError(f"the Ray workers did not start: {short_reason(exc, 200)}",
                             "check that attncraft is installed on every node of the cluster") from None
        for handle, info in zip(self.handles, infos):
            if info["problem"]:
                raise BatchError(f"{info['name']}: {info['problem']}", "pass an --out on a file system every Ray node shares")
            handle.label = f"Ray worker {handle.index} on {info['device']} ({info['name'].split('(')[-1].rstrip(')')})"

    def submit(self, handle: Handle, unit: Unit) -> None:
        self.futures[handle.impl.run_unit.remote(unit)] = (handle, unit)

    def poll(self, timeout: float) -> list[Event]:
        if not self.futures:
            time.sleep(min(timeout, 0.05))
            return []
        ready, _ = self.ray.wait(list(self.futures), num_returns=1, timeout=timeout)
        events = []
        for future in ready:
            handle, unit = self.futures.pop(future)
            try:
                events.append(Event("result", handle, self.ray.get(future)))
            except self.ray.exceptions.RayError as exc:
                # The actor is gone, and every unit it had not answered fails with it. An actor runs
                # its units in the order they were sent, so the first unanswered one was running:
                # its jobs fail; what it answered is kept; the later ones go back to the queue.
                mine = [(f, u) for f, (h, u) in self.futures.items() if h is handle] + [(future, unit)]
                mine.sort(key=lambda item: handle.inflight.index(item[1]) if item[1] in handle.inflight else 0)
                running = None
                for other, other_unit in mine:
                    self.futures.pop(other, None)
                    try:
                        events.append(Event("result", handle, self.ray.get(other, timeout=1)))
                    except Exception:  # noqa: BLE001 - unanswered
                        running = running or other_unit
                events.append(Event("died", handle, reason=short_reason(exc, 160), unit=running or unit))
        return events

    def restart(self, handle: Handle) -> None:
        try:
            self.ray.kill(handle.impl)
        except Exception:  # noqa: BLE001 - it is already dead
            pass
        self._actor(handle)

    def close(self) -> None:
        for handle in self.handles:
            if handle.impl is not None:
                try:
                    self.ray.kill(handle.impl)
                except Exception:  # noqa: BLE001
                    pass
                handle.impl = None
        if self.owns:
            self.ray.shutdown()

    def describe(self) -> str:
        kind = f"{self.gpus_per_worker:g} GPU" if self.gpus_per_worker else f"{self.cpus_per_worker:g} CPU"
        where = self.address or "a local Ray instance"
        return f"{len(self.handles)} Ray workers ({kind} each) on {where}"


def make_backend(kind: str, out_dir: Path, *, workers: int | None = None, gpus: Sequence[int] | None = None,
                 device: str = "auto", score: bool = False, extra_modules: Sequence[str] = (),
                 ray_address: str | None = None, threads: int | None = None) -> Backend:
    config = WorkerConfig(str(Path(out_dir).resolve()), device=device, score=score, extra_modules=tuple(extra_modules),
                          threads=threads, cwd=os.getcwd())
    if kind == "ray":
        return RayBackend(config, workers=workers, address=ray_address,
                          gpus_per_worker=(1 if gpus else None) if device != "cpu" else 0)
    if kind != "local":
        raise InputError(f"unknown backend {kind!r}", "pass --backend local or --backend ray")
    if not gpus and (workers or 1) == 1:
        return InProcessBackend(config)
    return LocalProcessBackend(config, workers=workers or 1, gpus=gpus)
