"""The ``attncraft`` command line: one Typer sub-module per command group, assembled in :mod:`.app`."""
