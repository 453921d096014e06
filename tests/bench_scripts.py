"""The scripts of ``benchmarks/`` and ``tools/`` are not a package: their tests load them by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """A fresh module run from the script at ``path`` (a name alone is a script of ``benchmarks/``),
    named ``name`` (default: the file's stem)."""
    path = Path(path)
    if not path.suffix:
        path = BENCHMARKS / f"{path}.py"
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
