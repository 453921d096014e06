"""Shared pieces of the batch tests: call counting, manifests, the CLI in-process or in a fresh process."""

from __future__ import annotations

import json
import os
from pathlib import Path


HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


class Calls:
    """The ``load``/``run`` calls the fake job type made (across processes)."""

    def __init__(self, path: Path):
        self.path = path

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []

    def runs(self) -> list[list[str]]:
        return [line.split()[1:] for line in self.lines() if line.startswith("run ")]

    def loads(self) -> list[str]:
        return [line.split()[1] for line in self.lines() if line.startswith("load ")]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def subprocess_env() -> dict[str, str]:
    """The environment of a CLI run in a fresh process that knows the fake job type."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), *filter(None, [env.get("PYTHONPATH")])])
    env["ATTNCRAFT_JOB_MODULES"] = "fake_jobs"
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_jsonl(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def solid_jobs(labels, **options) -> list[dict]:
    return [{"command": "solid", "label": label, **options} for label in labels]


def records(out: Path) -> list[dict]:
    """The status records (a torn line a test wrote itself is left out)."""
    rows = []
    for line in (out / "batch-status.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "attncraft-tmp-" in p.name]
