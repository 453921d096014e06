"""Where the project's shipped assets (tokenizer, Shapes models) live.

In a source checkout or editable install they are the repository's top-level ``assets/`` folder; in
a built wheel the same folder is packaged as ``attncraft/_assets`` (see ``pyproject.toml``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def assets_dir() -> Path:
    for candidate in (_PACKAGE_DIR.parent / "assets", _PACKAGE_DIR / "_assets"):
        if (candidate / "tokenizer" / "vocab.json").is_file():
            return candidate
    raise FileNotFoundError("attncraft assets folder not found; reinstall attncraft (pip install attncraft)")


def tokenizer_dir() -> Path:
    return assets_dir() / "tokenizer"


def models_dir() -> Path:
    return assets_dir() / "models"
