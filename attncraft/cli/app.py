"""Root of the ``attncraft`` command line.

Each command group lives in its own module (``image.py``, ``video.py``, ``world.py``, ``mesh.py``, ...) and is
registered here. Command modules import torch/diffusers inside their functions so that ``--help``
stays fast.

Errors: an :class:`~attncraft.errors.AttncraftError` is printed as one line ``error: ...`` on stderr
with exit code 2; any other exception is printed as one line too (exit 1), with the traceback only
when ``ATTNCRAFT_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys

import typer

from attncraft.cli import convert as convert_cmd
from attncraft.cli import edit as edit_cmd
from attncraft.cli import image as image_cmd
from attncraft.cli import video as video_cmd
from attncraft.cli import realcustom as realcustom_cmd
from attncraft.errors import AttncraftError

app = typer.Typer(
    name="attncraft",
    help="Attention-level generation techniques for images, video and 3D, on diffusers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Attention-level generation techniques for images, video and 3D, on diffusers."""


app.command("image")(image_cmd.image)
app.command("edit")(edit_cmd.edit)
app.command("video")(video_cmd.video)
app.command("customize")(realcustom_cmd.customize)
app.add_typer(convert_cmd.app, name="convert")

# Optional command groups: each registers itself only if its module exists, so the CLI keeps
# working while a group is being developed.
for _module_name, _group_name in (("world", "world"), ("mesh", "mesh"), ("batch", "batch")):
    try:
        _module = __import__(f"attncraft.cli.{_module_name}", fromlist=["app"])
    except ModuleNotFoundError as _exc:  # pragma: no cover - only while a group is absent
        if _exc.name != f"attncraft.cli.{_module_name}":
            raise
        continue
    app.add_typer(_module.app, name=_group_name)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turning errors into one clean line."""
    try:
        app(args=argv, standalone_mode=False)
    except AttncraftError as exc:
        typer.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the CLI must never show a raw traceback by default
        # Usage errors (typer vendors click, so match by interface rather than by class)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            typer.echo(f"error: {' '.join(exc.format_message().split())} (see --help)", err=True)
            sys.exit(exc.exit_code)
        if os.environ.get("ATTNCRAFT_DEBUG") == "1":
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        typer.echo(f"error: {type(exc).__name__}: {msg} (set ATTNCRAFT_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
