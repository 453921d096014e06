"""Batch manifests: jobs in JSON lines or YAML, with sweeps, checked before anything runs.

Schema (``attncraft batch schema [COMMAND]`` prints every command's keys, types and defaults):

* **JSON lines** (``.jsonl``/``.ndjson``): one job a line; blank lines and lines starting with ``#``
  are skipped::

      {"command": "image", "prompt": "a red circle", "seed": 1, "steps": 4}
      {"command": "image", "prompt": "a blue star", "sweep": {"seed": {"start": 0, "stop": 8}, "guidance": [3, 5]}}

* **YAML** (``.yaml``/``.yml``): a list of jobs, or a mapping with ``jobs`` (the list) and optional
  ``defaults`` (per command, under every job of that command; the job's own keys win)::

      defaults:
        image: {steps: 4, guidance: 3}
      jobs:
        - command: image
          prompt: a red circle
          sweep: {seed: [0, 1, 2]}

A **job** is an object with ``command`` (a registered job type: ``image``, ``customize``, ``edit``,
``video``, ``mesh``, and those other command modules register) and that command's own options as keys, exactly as on its command line
without the dashes (``steps`` for ``--steps``, ``attention-backend`` or ``attention_backend``,
``geoloss: false`` for ``--no-geoloss``; positional arguments by name, e.g. ``prompt``). Values have
the option's type (a whole number for ``--steps``, true/false for flags, a list for repeatable
options) and pass the command's own checks. ``out``, ``overwrite`` and ``device`` are not job keys:
``attncraft batch run`` sets them for all jobs.

A **sweep** (``"sweep": {KEY: VALUES, ...}``) turns one line into the grid of every combination of
the listed values (the last key varies fastest); VALUES is a non-empty list or a range of whole
numbers ``{"start": A, "stop": B, "step": S}`` (``stop`` excluded, ``step`` 1 by default). Any
option can be swept: prompts, seeds, technique settings.

Every problem is reported before any job runs, each naming the manifest line and the field
(``jobs.jsonl:3: steps: --steps must be between 1 and 1000, got 0; pass e.g. --steps 25``): JSON or
YAML syntax, an unknown command or key (with the closest name), a value of the wrong type, a value
the command refuses, a missing required option, and two jobs with the same settings (they would
write the same output).

**Identity.** A job is identified by a SHA-256 of its command and the options that differ from the
command's defaults, in canonical JSON (sorted keys, no spaces, UTF-8; values in the option's type, so
``guidance: 3`` and ``guidance: 3.0`` are one job), so the same job has the same id on every machine
and in every run; its outputs are named ``<command>-<slug>-<first 12 hex digits>`` (:attr:`Job.stem`).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.batch.jobs import RUNNER_OPTIONS, JobOption, JobType, job_types
from attncraft.errors import InputError
from attncraft.validation import check_finite, check_input_file, check_int_range

JSONL_SUFFIXES = (".jsonl", ".ndjson")
YAML_SUFFIXES = (".yaml", ".yml")
MAX_JOBS = 100_000
MAX_PROBLEMS = 50
ID_DIGITS = 12
RESERVED = ("command", "sweep")
_SLUG_RE = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Problem:
    """One problem of a manifest: where (line, field) and what."""

    source: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ManifestError(InputError):
    """A manifest with problems; ``problems`` lists them all (the message names the first)."""

    def __init__(self, source: str, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.line is not None, p.line or 0))
        if len(problems) == 1:
            super().__init__(str(self.problems[0]), "fix the manifest; nothing was run")
        else:
            super().__init__(f"the manifest {source} has {len(problems)} problems, the first: {self.problems[0]}",
                             "fix them (attncraft batch check lists them all); nothing was run")


@dataclass
class Job:
    """One job of a manifest, checked and identified."""

    command: str
    spec: dict[str, Any]
    """The options that differ from the command's defaults, by manifest key, in canonical form."""
    options: dict[str, Any]
    """Every option by parameter name (defaults filled in), as the job type's functions get them."""
    line: int | None
    source: str
    """Where it came from, e.g. ``jobs.yaml:3 (seed=2)``."""
    id: str = ""
    stem: str = ""
    title: str = ""
    """The value of the job type's naming option (its prompt), for reports."""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "options": self.spec, "source": self.source, "stem": self.stem,
                "title": self.title}


def canonical_json(command: str, spec: Mapping[str, Any]) -> str:
    """The text a job's id is the SHA-256 of (see the module docstring)."""
    return json.dumps({"command": command, "options": dict(spec)}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)


def job_id(command: str, spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(command, spec).encode("utf-8")).hexdigest()


def job_title(job_type: JobType, spec: Mapping[str, Any]) -> str:
    """The value of the job type's naming option (e.g. the prompt), or ``""``."""
    if job_type.name_option is None:
        return ""
    opt = job_type.by_param()[job_type.name_option]
    name = spec.get(opt.key, opt.default)
    return "" if name is None else str(name)


def job_stem(command: str, title: str, ident: str) -> str:
    """``<command>-<slug of the title>-<first digits of the id>``."""
    slug = _SLUG_RE.sub("-", title.lower()).strip("-")[:40].rstrip("-")
    return "-".join(p for p in (command, slug, ident[:ID_DIGITS]) if p)


# --------------------------------------------------------------------------------------------------
# Reading the file: JSON lines or YAML, with the line of every job and field
# --------------------------------------------------------------------------------------------------


@dataclass
class _RawJob:
    data: Any
    line: int | None
    key_lines: dict[str, int] = field(default_factory=dict)
    defaults: dict[str, tuple[Any, int | None]] = field(default_factory=dict)


class _Collector:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[Problem] = []
        self._seen: set[tuple] = set()

    def add(self, line: int | None, field_name: str | None, message: str) -> None:
        key = (line, field_name, message)
        if key not in self._seen and len(self.problems) < MAX_PROBLEMS:
            self._seen.add(key)
            self.problems.append(Problem(self.source, line, field_name, message))

    def full(self) -> bool:
        return len(self.problems) >= MAX_PROBLEMS


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _read_jsonl(text: str, problems: _Collector) -> list[_RawJob]:
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            data = json.loads(line, object_pairs_hook=_no_duplicate_keys)
        except json.JSONDecodeError as exc:
            problems.add(number, None, f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        except ValueError as exc:
            problems.add(number, None, f"not valid JSON: {exc}")
            continue
        jobs.append(_RawJob(data, number))
    return jobs


def _yaml_mapping_lines(node) -> dict[str, int]:
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value") and isinstance(k.value, str)}


def _yaml_duplicates(node, problems: _Collector) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = getattr(key, "value", None)
            if isinstance(name, str) and name in seen:
                problems.add(key.start_mark.line + 1, name, f"the key {name!r} appears twice")
            seen.add(name)
            _yaml_duplicates(value, problems)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _yaml_duplicates(item, problems)


def _read_yaml(text: str, problems: _Collector, commands: Iterable[str] = ()) -> list[_RawJob]:
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return []
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        problems.add(mark.line + 1 if mark else None, None, f"not valid YAML: {what}")
        return []
    finally:
        loader.dispose()
    _yaml_duplicates(root, problems)
    defaults: dict[str, dict[str, tuple[Any, int | None]]] = {}
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"jobs", "defaults"})
        lines = _yaml_mapping_lines(root)
        for key in unknown:
            problems.add(lines.get(key), str(key), "unknown top-level key; a YAML manifest has 'jobs' and optional 'defaults'")
        nodes = dict((k.value, v) for k, v in root.value if isinstance(getattr(k, "value", None), str))
        if "defaults" in data:
            defaults = _yaml_defaults(data["defaults"], nodes["defaults"], problems, commands)
        if "jobs" not in data:
            problems.add(None, None, "a YAML manifest that is a mapping needs a 'jobs' list")
            return []
        items, items_node = data["jobs"], nodes["jobs"]
    else:
        items, items_node = data, root
    if not isinstance(items, list):
        problems.add(items_node.start_mark.line + 1, "jobs", "must be a list of jobs")
        return []
    jobs = []
    for item, node in zip(items, items_node.value):
        line = node.start_mark.line + 1
        key_lines = _yaml_mapping_lines(node) if isinstance(item, dict) else {}
        command = item.get("command") if isinstance(item, dict) else None
        jobs.append(_RawJob(item, line, key_lines, defaults.get(command, {}) if isinstance(command, str) else {}))
    return jobs


def _yaml_defaults(data: Any, node, problems: _Collector, commands: Iterable[str]) -> dict[str, dict[str, tuple[Any, int | None]]]:
    if not isinstance(data, dict):
        problems.add(node.start_mark.line + 1, "defaults", "must map command names to their default options, e.g. {image: {steps: 4}}")
        return {}
    commands = list(commands)
    out: dict[str, dict[str, tuple[Any, int | None]]] = {}
    for key_node, value_node in node.value:
        command = key_node.value
        if command not in commands:
            problems.add(key_node.start_mark.line + 1, f"defaults.{command}",
                         f"unknown command {command!r}{_suggest(str(command), commands)}; pass one of {', '.join(commands)}")
            continue
        values = data.get(command)
        if not isinstance(values, dict):
            problems.add(key_node.start_mark.line + 1, f"defaults.{command}", "must be a mapping of options, e.g. {steps: 4}")
            continue
        lines = _yaml_mapping_lines(value_node)
        out[command] = {k: (v, lines.get(k)) for k, v in values.items()}
    return out


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data:
        raise InputError(f"the manifest {str(path)!r} is a binary file, not text", "pass a UTF-8 JSON-lines or YAML file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"the manifest {str(path)!r} is not valid UTF-8 (line {line})", "save it as UTF-8 text") from None


# --------------------------------------------------------------------------------------------------
# Checking one job: command, keys, types, sweeps, the command's own checks
# --------------------------------------------------------------------------------------------------


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def convert_value(option: JobOption, value: Any) -> Any:
    """``value`` in ``option``'s type, as the command line would have it; one-line error otherwise."""
    kind, flag = option.kind, option.flag
    if value is None:
        return option.default
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{option.key} must be true or false, got {value!r}", f"write {option.key}: true or false")
        return value
    if kind is int:
        return check_int_range(flag, value)
    if kind is float:
        # NaN and infinity pass here: the command's own check refuses them with its own message
        # (and :func:`_expand` refuses any the command lets through)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"{flag} must be a number, got {value!r}", f"pass a number to {option.key}")
        try:
            return float(value)
        except ValueError:
            raise InputError(f"{flag} must be a number, got {value!r}", f"pass a number to {option.key}") from None
    if kind is list:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise InputError(f"{option.key} must be text or a list of texts, got {value!r}", f"write e.g. {option.key}: [\"...\"]")
        return list(items)
    if not isinstance(value, str):
        raise InputError(f"{option.key} must be text, got {type(value).__name__} {value!r}",
                         f"write the value of {option.key} in quotes")
    return Path(value) if kind is Path else value


def _canonical(option: JobOption, value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _field_of(message: str, job_type: JobType, given: Iterable[str]) -> str | None:
    """The option a command's error message is about: the first ``--flag`` or option name it names."""
    flags = {o.flag: o.key for o in job_type.options.values()}
    for match in re.finditer(r"--[a-z0-9][a-z0-9-]*", message):
        if match.group(0) in flags:
            return flags[match.group(0)]
    best: tuple[int, str] | None = None
    for option in job_type.options.values():
        for word in {option.key, option.param, option.key.replace("-", " ")}:
            found = re.search(rf"\b{re.escape(word)}\b", message)
            if found and (best is None or found.start() < best[0]):
                best = (found.start(), option.key)
    if best is not None:
        return best[1]
    given = list(given)
    return given[0] if len(given) == 1 else None


def _sweep_values(value: Any) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise InputError("the list of values is empty", "give at least one value")
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"start", "stop", "step"})
        if unknown or "stop" not in value:
            raise InputError("a range is {start: A, stop: B, step: S} (stop excluded)", "write e.g. {start: 0, stop: 8}")
        start = check_int_range("start", value.get("start", 0))
        stop = check_int_range("stop", value["stop"])
        step = check_int_range("step", value.get("step", 1))
        if step == 0:
            raise InputError("the step of a range cannot be 0", "write e.g. step: 1")
        values = list(range(start, stop, step))
        if not values:
            raise InputError(f"the range from {start} to {stop} (step {step}) is empty", "make stop larger than start")
        return values
    raise InputError(f"sweep values must be a list or a range, got {value!r}", "write e.g. [0, 1, 2] or {start: 0, stop: 8}")


def _options_of_entry(job_type: JobType, values: Mapping[str, tuple[Any, int | None, str]],
                      problems: _Collector, line: int | None, label: str) -> dict[str, Any] | None:
    """Convert every given value; None when something failed (problems recorded)."""
    options = job_type.defaults()
    ok = True
    for key, (value, key_line, origin) in values.items():
        option = job_type.option(key)
        try:
            options[option.param] = convert_value(option, value)
        except InputError as exc:
            problems.add(key_line or line, f"{origin}{option.key}", f"{exc.one_line()}{label}")
            ok = False
    for option in job_type.options.values():
        if option.required and option.key not in values and options.get(option.param) is None:
            problems.add(line, option.key, f"is required ({option.flag} of attncraft {job_type.name}){label}")
            ok = False
    return options if ok else None


def _check_keys(job_type: JobType, keys: Iterable[tuple[str, int | None, str]], problems: _Collector, line: int | None) -> bool:
    ok = True
    known = sorted({o.key for o in job_type.options.values()})
    for key, key_line, origin in keys:
        if not isinstance(key, str) or job_type.option(key) is None:
            if isinstance(key, str) and key.replace("_", "-") in RUNNER_OPTIONS:
                flag = "--device or --gpus" if key == "device" else f"--{key}"
                problems.add(key_line or line, f"{origin}{key}", f"is set for the whole batch, not per job; pass {flag} to attncraft batch run")
            else:
                problems.add(key_line or line, f"{origin}{key}",
                             f"unknown key for command {job_type.name}{_suggest(str(key), known)} (attncraft batch schema {job_type.name} lists them)")
            ok = False
    return ok


def _expand(raw: _RawJob, types: Mapping[str, JobType], problems: _Collector, source: str) -> list[Job]:
    data, line = raw.data, raw.line
    if not isinstance(data, dict):
        problems.add(line, None, f"a job must be an object with a 'command' key, got {type(data).__name__}")
        return []
    command = data.get("command")
    if command is None:
        problems.add(line, "command", f"missing; pass one of {', '.join(types)}")
        return []
    if not isinstance(command, str) or command not in types:
        problems.add(raw.key_lines.get("command", line), "command",
                     f"unknown command {command!r}{_suggest(str(command), types)}; pass one of {', '.join(types)}")
        return []
    job_type = types[command]
    sweep = data.get("sweep", {})
    sweep_line = raw.key_lines.get("sweep", line)
    if not isinstance(sweep, dict):
        problems.add(sweep_line, "sweep", "must map option names to lists of values, e.g. {\"seed\": [0, 1, 2]}")
        return []
    own = {k: v for k, v in data.items() if k not in RESERVED}
    keys = [(k, raw.defaults[k][1], f"defaults.{command}.") for k in raw.defaults if k not in own and k not in sweep]
    keys += [(k, raw.key_lines.get(k), "") for k in own] + [(k, sweep_line, "sweep.") for k in sweep]
    if not _check_keys(job_type, keys, problems, line):
        return []
    axes = []
    for key, values in sweep.items():
        try:
            axes.append((key, _sweep_values(values)))
        except InputError as exc:
            problems.add(sweep_line, f"sweep.{key}", exc.one_line())
            return []
    total = 1
    for _key, values in axes:
        total *= len(values)
    if total > MAX_JOBS:
        problems.add(sweep_line, "sweep", f"expands to {total:,} jobs, more than {MAX_JOBS:,}; split it into several lines")
        return []
    base: dict[str, tuple[Any, int | None, str]] = {}
    for key, (value, key_line) in raw.defaults.items():
        if key not in own:
            base[job_type.option(key).key] = (value, key_line, f"defaults.{command}.")
    for key, value in own.items():
        canonical = job_type.option(key).key
        if canonical in base and base[canonical][2] == "":
            problems.add(raw.key_lines.get(key, line), canonical, f"is given twice (as {key!r} and another spelling)")
            return []
        base[canonical] = (value, raw.key_lines.get(key), "")
    jobs = []
    for combo in itertools.product(*(values for _key, values in axes)):
        values = dict(base)
        chosen = []
        for (key, _values), value in zip(axes, combo):
            values[job_type.option(key).key] = (value, sweep_line, "sweep.")
            chosen.append(f"{key}={value}")
        label = f" (sweep {', '.join(chosen)})" if chosen else ""
        options = _options_of_entry(job_type, values, problems, line, label)
        if options is None:
            if problems.full():
                break
            continue
        try:
            job_type.check(**options)
        except InputError as exc:
            message = exc.one_line()
            key = _field_of(message, job_type, values)
            _value, key_line, origin = values.get(key, (None, None, "")) if key else (None, None, "")
            problems.add(key_line or line, f"{origin}{key}" if key else None, f"{message}{label}")
            if problems.full():
                break
            continue
        for key in values:
            option = job_type.option(key)
            if option.kind is float and options[option.param] is not None:
                try:
                    check_finite(option.flag, options[option.param])
                except InputError as exc:
                    problems.add(values[key][1] or line, f"{values[key][2]}{key}", f"{exc.one_line()}{label}")
                    options = None
                    break
        if options is None:
            continue
        spec = {}
        for key in values:
            option = job_type.option(key)
            value = _canonical(option, options[option.param])
            if value != _canonical(option, option.default):
                spec[option.key] = value
        where = f"{source}:{line}{label}" if line is not None else f"{source}{label}"
        job = Job(command=command, spec=spec, options=options, line=line, source=where)
        job.id = job_id(command, spec)
        job.title = job_title(job_type, spec)
        job.stem = job_stem(command, job.title, job.id)
        jobs.append(job)
    return jobs


def parse_manifest(text: str, kind: str, source: str = "manifest", extra_modules: Iterable[str] = ()) -> list[Job]:
    """Jobs of a manifest's text (``kind``: ``jsonl`` or ``yaml``); :class:`ManifestError` lists every problem."""
    problems = _Collector(source)
    types = job_types(tuple(extra_modules))
    raws = _read_jsonl(text, problems) if kind == "jsonl" else _read_yaml(text, problems, types)
    jobs: list[Job] = []
    for raw in raws:
        if problems.full():
            break
        jobs.extend(_expand(raw, types, problems, source))
        if len(jobs) > MAX_JOBS:
            problems.add(raw.line, None, f"the manifest holds more than {MAX_JOBS:,} jobs; split it into several manifests")
            break
    first: dict[str, Job] = {}
    stems: dict[str, Job] = {}
    for job in jobs:
        earlier = first.get(job.id)
        if earlier is not None:
            this = job.source.split(" ", 1)[1] + " " if " " in job.source else ""
            problems.add(job.line, None, f"the job {this}repeats the job of {earlier.source}: the same settings would write the "
                                         f"same output {job.stem}; remove one or change a setting such as its seed")
            continue
        clash = stems.get(job.stem)
        if clash is not None:  # two different settings whose ids share their first digits: never silently merged
            problems.add(job.line, None, f"its output name {job.stem} is also that of {clash.source}; change a setting")
        first[job.id] = job
        stems[job.stem] = job
    if not raws and not problems.problems:
        problems.add(None, None, "holds no jobs; write one job a line (JSON lines) or a 'jobs' list (YAML)")
    if problems.problems:
        raise ManifestError(source, problems.problems)
    return jobs


def load_manifest(path: str | Path, extra_modules: Iterable[str] = ()) -> list[Job]:
    """Read and check the manifest at ``path`` (see the module docstring); returns its jobs in order."""
    path = check_input_file(path, "manifest", suffixes=JSONL_SUFFIXES + YAML_SUFFIXES)
    kind = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "yaml"
    return parse_manifest(_read_text(path), kind, source=path.name, extra_modules=extra_modules)


def describe_schema(job_type: JobType) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for each option of ``job_type``: what ``batch schema`` prints."""
    rows = []
    for option in job_type.options.values():
        kind = {str: "text", int: "whole number", float: "number", bool: "true/false", Path: "path", list: "list of texts"}.get(option.kind, "text")
        default = "required" if option.required else json.dumps(_canonical(option, option.default))
        rows.append((option.key, kind, default, option.help))
    return rows
