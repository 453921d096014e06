"""Running the ``attncraft`` CLI in-process in tests: exit code, stdout and stderr of one call."""

from __future__ import annotations

import pytest

from attncraft.cli.app import main


def run_cli(args, capsys):
    """``attncraft ARGS`` in this process (arguments as strings): (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(map(str, args)))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err
