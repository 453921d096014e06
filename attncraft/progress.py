"""Progress display for long work: a rich bar with elapsed time and ETA.

:func:`progress_bar` wraps an iterable; it renders to stderr and disappears when stderr is not a
terminal and ``ATTNCRAFT_PROGRESS`` is unset (so logs and tests stay clean), or when ``enabled`` is
false. A ``postfix`` callback lets the caller show a live metric (e.g. the current CLIP score).
:func:`progress_task` is the same bar for work that reports its own progress through a callback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_enabled(enabled: bool | None = None) -> bool:
    if enabled is not None:
        return enabled
    env = os.environ.get("ATTNCRAFT_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_task(
    description: str, total: int | None, enabled: bool | None = None
) -> Iterator[Callable[[int, str], None]]:
    """A bar for work that reports its own progress: yields ``update(completed, postfix="")``.

    For callbacks (e.g. a diffusers pipeline's ``callback_on_step_end``); when the bar is disabled
    ``update`` does nothing.
    """
    if not progress_enabled(enabled):
        yield lambda completed, postfix="": None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[postfix]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, postfix="")
        yield lambda completed, postfix="": progress.update(task, completed=completed, postfix=postfix)


def progress_bar(
    iterable: Iterable[T],
    description: str,
    total: int | None = None,
    enabled: bool | None = None,
    postfix: Callable[[], str] | None = None,
) -> Iterator[T]:
    """Iterate ``iterable`` while showing a bar with count, elapsed time, ETA and optional postfix."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress_task(description, total, enabled) as update:
        for done, item in enumerate(iterable, start=1):
            yield item
            update(done, postfix() if postfix else "")


def step_counter(on_step: Callable[[int, int], None] | None, total: int) -> Callable:
    """A diffusers ``callback_on_step_end`` that counts the steps of every call it is passed to and
    reports ``on_step(done, total)`` after each (nothing when ``on_step`` is None); it returns the
    callback kwargs unchanged. One counter may serve several denoising loops (e.g. two stages)."""
    done = 0

    def callback(pipeline, step, timestep, kwargs):
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, total)
        return kwargs

    return callback
