"""Helpers for the command-level defence tests: run the CLI in-process, and snapshot a folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attncraft.cli.app import main


def folder_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file (hidden ones included) under ``root`` with its size and mtime, and every folder.

    Folders are recorded by name only: the output-folder check writes and removes a probe file,
    which changes its folder's mtime and nothing else."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            state[str((Path(dirpath) / name).relative_to(root)) + "/"] = (-1, 0)
        for name in filenames:
            path = Path(dirpath) / name
            stat = path.lstat()
            state[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return state


@pytest.fixture
def cli(capsys):
    """``cli(*args)`` -> (exit code, stdout, stderr) of ``attncraft ARGS``."""

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def refused(cli):
    """``refused(root, *args, needles=(...))``: the command fails with exit code 2 and exactly one
    line ``error: ...`` on stderr containing every needle, no traceback, and nothing under ``root``
    changes (no file added, removed or touched). Returns the error line."""

    def check(root: Path, *args: str, needles=()) -> str:
        root.mkdir(parents=True, exist_ok=True)
        before = folder_state(root)
        code, out, err = cli(*args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err and out == ""
        for needle in needles:
            assert needle in lines[0], (needle, lines[0])
        assert folder_state(root) == before
        return lines[0]

    return check


@pytest.fixture(scope="session")
def tiny_guide():
    """A frozen random CLIP with 32x32 images on the CPU."""
    import torch

    from attncraft.mesh.clip_guidance import ClipGuide, load_clip

    model, tok, label = load_clip("random:test", torch.device("cpu"))
    return ClipGuide(model, tok, label)
