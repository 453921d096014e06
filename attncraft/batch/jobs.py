"""Job types: what a batch job of each command is, registered by the command's own module.

A job type joins the batch runner with one call in its command's module, next to the command::

    from attncraft.batch.jobs import register_job

    register_job(
        "image", image,                      # the job's name and the Typer command it mirrors
        check=check_options,                 # the command's own checks that need no model
        load=load_model,                     # (options, device) -> the loaded model
        run=run_jobs,                        # (model, [JobRun, ...]) -> writes each job's files
        model_options=("model", "config", "dtype", "attention_backend", "trust_pickle"),
        batch_options=("prompt", "negative", "seed", "count"),   # may differ inside one pipeline call
        prepare=prepare_job,                 # optional: (model, JobRun) -> per-job state, checks with the model
    )

The job's keys are the command's own option names, read from the command's signature: ``prompt``
(a positional argument, by its parameter name), ``steps`` for ``--steps``, ``attention-backend``
(or ``attention_backend``) for ``--attention-backend``, ``geoloss: false`` for ``--no-geoloss``. Their
types are the command's types, their defaults its defaults, and their checks the functions the
command itself calls (``check``), so a job is refused with the same message as the command line.
Options a batch decides for every job (``out``, ``overwrite``, ``device``) are not job keys.

``check(**options)`` and ``load(options, device)`` receive the options by parameter name
(``options["attention_backend"]``), every option present (defaults filled in). ``check`` runs in the
coordinating process before anything runs (it must not need a model or a GPU); ``load`` and ``run``
run in the workers. Jobs that have the same values for every option except ``batch_options`` (and
the same model) are handed to ``run`` together, up to the batch size; without ``batch_options``
``run`` always receives one job. A job type writes its files through :class:`JobRun` (atomic, named
after the job's hash); the runner writes the job's JSON sidecar after ``run`` returns.

Command modules are discovered by importing every module of :mod:`attncraft.cli` (and the modules
named in ``ATTNCRAFT_JOB_MODULES``, comma-separated, for job types outside the package), so a new
command joins with its ``register_job`` call alone.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.errors import InputError

RUNNER_OPTIONS = ("out", "overwrite", "device")
"""Options of every command that the batch sets for all jobs (``--out``, ``--device``/``--gpus``)."""
JOB_MODULES_ENV = "ATTNCRAFT_JOB_MODULES"
_SKIPPED_CLI_MODULES = {"app", "common", "batch"}


@dataclass(frozen=True)
class JobOption:
    """One option of a job type, read from its command's signature."""

    key: str
    """The manifest key: the long option name without dashes (``attention-backend``), or the
    parameter name of a positional argument (``prompt``)."""
    param: str
    """The command function's parameter name (``attention_backend``)."""
    flag: str
    """What the user types on the command line (``--attention-backend``, or ``PROMPT``)."""
    kind: Any
    """``str``, ``int``, ``float``, ``bool``, ``Path`` or ``list``."""
    default: Any
    required: bool
    help: str


@dataclass
class JobType:
    """A registered job type (see the module docstring)."""

    name: str
    command: Callable[..., Any]
    check: Callable[..., Any]
    load: Callable[[dict[str, Any], str], Any]
    run: Callable[[Any, list["JobRun"]], None]
    model_options: tuple[str, ...]
    batch_options: tuple[str, ...] | None = None
    prepare: Callable[[Any, "JobRun"], Any] | None = None
    name_option: str | None = "prompt"
    """The option whose value starts the output names (a readable slug), if any."""
    description: str = ""
    options: dict[str, JobOption] = field(default_factory=dict)

    def option(self, key: str) -> JobOption | None:
        return self.options.get(key.replace("_", "-")) or self.options.get(key)

    def by_param(self) -> dict[str, JobOption]:
        return {o.param: o for o in self.options.values()}

    def defaults(self) -> dict[str, Any]:
        return {o.param: o.default for o in self.options.values()}

    def model_key(self, options: Mapping[str, Any]) -> tuple:
        return (self.name, *((p, _hashable(options[p])) for p in self.model_options))

    def batch_key(self, options: Mapping[str, Any]) -> tuple | None:
        """Jobs with equal keys may share one ``run`` call; None: this type never batches."""
        if self.batch_options is None:
            return None
        return tuple((p, _hashable(v)) for p, v in sorted(options.items()) if p not in self.batch_options)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


_REGISTRY: dict[str, JobType] = {}
_DISCOVERED = False


def _kind_of(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (list, Sequence, tuple):
        return list
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind_of(args[0]) if args else str
    if annotation in (str, int, float, bool):
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, os.PathLike):
        return Path
    return str


def options_of(command: Callable[..., Any], exclude: Sequence[str] = RUNNER_OPTIONS) -> dict[str, JobOption]:
    """The options of a Typer command, keyed by their manifest key (see :class:`JobOption`)."""
    hints = typing.get_type_hints(command)
    options: dict[str, JobOption] = {}
    for param in inspect.signature(command).parameters.values():
        if param.name in exclude:
            continue
        info = param.default
        decls = tuple(getattr(info, "param_decls", None) or ())
        default = getattr(info, "default", info)
        help_text = getattr(info, "help", "") or ""
        longs = [d for d in decls for d in d.split("/") if d.startswith("--")]
        positional = type(info).__name__ == "ArgumentInfo"
        if positional or not longs:
            key, flag = param.name, (param.name.upper() if positional else f"--{param.name.replace('_', '-')}")
        else:
            flag = longs[0]
            key = flag[2:]
        required = default is ... or default is inspect.Parameter.empty
        kind = _kind_of(hints.get(param.name, str))
        options[key] = JobOption(key=key, param=param.name, flag=flag, kind=kind,
                                 default=None if required else default, required=required, help=help_text)
    return options


def register_job(
    name: str,
    command: Callable[..., Any],
    *,
    check: Callable[..., Any],
    load: Callable[[dict[str, Any], str], Any],
    run: Callable[[Any, list["JobRun"]], None],
    model_options: Sequence[str],
    batch_options: Sequence[str] | None = None,
    prepare: Callable[[Any, "JobRun"], Any] | None = None,
    name_option: str | None = "prompt",
    exclude: Sequence[str] = RUNNER_OPTIONS,
) -> JobType:
    """Register the job type ``name`` (see the module docstring); returns it.

    Registering a name twice replaces the earlier type (a module imported again re-registers).
    """
    options = options_of(command, exclude)
    params = {o.param for o in options.values()}
    for what, names in (("model_options", model_options), ("batch_options", batch_options or ())):
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"job type {name!r}: {what} {unknown} are not parameters of {command.__name__}")
    doc = (inspect.getdoc(command) or "").splitlines()
    job_type = JobType(name=name, command=command, check=check, load=load, run=run,
                       model_options=tuple(model_options), batch_options=None if batch_options is None else tuple(batch_options),
                       prepare=prepare, name_option=name_option if name_option in params else None,
                       description=doc[0] if doc else "", options=options)
    _REGISTRY[name] = job_type
    return job_type


def job_modules_from_env() -> list[str]:
    return [m.strip() for m in os.environ.get(JOB_MODULES_ENV, "").split(",") if m.strip()]


def discover(extra_modules: Sequence[str] = ()) -> None:
    """Import the command modules (and ``extra_modules``) so that their job types register."""
    global _DISCOVERED
    if not _DISCOVERED:
        import attncraft.cli as cli_package

        for info in pkgutil.iter_modules(cli_package.__path__):
            if info.name not in _SKIPPED_CLI_MODULES and not info.name.startswith("_"):
                importlib.import_module(f"attncraft.cli.{info.name}")
        _DISCOVERED = True
    for module in (*job_modules_from_env(), *extra_modules):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError(f"cannot import the job module {module!r}: {exc}",
                             f"check the module name (and PYTHONPATH), or unset {JOB_MODULES_ENV}") from None


def job_types(extra_modules: Sequence[str] = ()) -> dict[str, JobType]:
    """Every registered job type, by name."""
    discover(extra_modules)
    return dict(sorted(_REGISTRY.items()))


def get_job_type(name: str, extra_modules: Sequence[str] = ()) -> JobType | None:
    discover(extra_modules)
    return _REGISTRY.get(name)


class JobRun:
    """One job as a job type's ``run`` sees it: its options and where its files go.

    Files are named after the job (``<stem><suffix>`` or ``<stem>_<part><suffix>``) in the batch's
    output folder, each written under a temporary name and renamed when complete. A name is owned by
    its job (the hash of its settings), so a file a killed run left half-done is replaced.
    """

    def __init__(self, job_id: str, command: str, options: dict[str, Any], stem: str, out_dir: Path,
                 score: bool = False, line: int | None = None):
        self.id = job_id
        self.command = command
        self.options = options
        self.stem = stem
        self.out_dir = Path(out_dir)
        self.score = score
        """Whether the batch asked for reader metrics (``--score``)."""
        self.line = line
        self.state: Any = None
        """What ``prepare`` returned for this job."""
        self.settings: dict[str, Any] = {}
        """The settings the job resolved (model defaults filled in): stored in its sidecar."""
        self.metrics: dict[str, Any] = {}
        self.files: list[str] = []

    def path(self, suffix: str, part: str | int | None = None) -> Path:
        name = self.stem if part is None else f"{self.stem}_{part}"
        return self.out_dir / f"{name}{suffix}"

    def _record(self, path: Path) -> Path:
        rel = path.relative_to(self.out_dir).as_posix()
        if rel not in self.files:
            self.files.append(rel)
        return path

    @contextlib.contextmanager
    def file(self, suffix: str, part: str | int | None = None) -> Iterator[Path]:
        """A temporary path that becomes this job's ``suffix`` file when the block succeeds."""
        from attncraft.outputs import atomic_path

        final = self.path(suffix, part)
        with atomic_path(final) as tmp:
            yield tmp
        self._record(final)

    def save_png(self, image, settings: Mapping[str, Any], part: str | int | None = None) -> Path:
        """Save ``image`` with ``settings`` in its text chunk (see :func:`save_png_with_settings`)."""
        from attncraft.outputs import save_png_with_settings

        return self._record(save_png_with_settings(image, self.path(".png", part), settings, overwrite=True))

    def folder(self) -> Path:
        """This job's result folder (``<stem>/``), for results of several files; created if needed."""
        from attncraft.outputs import clean_stale_temporaries

        path = self.out_dir / self.stem
        path.mkdir(exist_ok=True)
        clean_stale_temporaries(path)
        return self._record(path)
