"""User-facing errors.

Every problem a user can cause (bad model reference, missing file, invalid size, a technique that
does not fit the loaded model, ...) is raised as an :class:`AttncraftError` whose message is one line
naming the problem *and* the fix. The CLI prints exactly that line and exits non-zero, without a
traceback; Python callers can catch the class or one of its subclasses.
"""

from __future__ import annotations


class AttncraftError(Exception):
    """A problem with the user's input or environment, with a one-line message and a fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem.rstrip(". ")
        self.fix = fix.rstrip(". ") if fix else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem if not self.fix else f"{self.problem}; {self.fix}"
        return " ".join(text.split())


class ModelLoadError(AttncraftError):
    """A model reference could not be resolved or loaded."""


class InputError(AttncraftError):
    """An argument or input file is invalid (size, steps, prompt, mesh, frame count...)."""


class TechniqueError(AttncraftError):
    """A technique cannot be applied to the loaded model or layers."""


def short_reason(exc: BaseException | str, limit: int = 160) -> str:
    """The gist of a library's exception message for a one-line error: its first line or sentence,
    whitespace collapsed, cut at a word boundary (never mid-word) with an ellipsis when longer."""
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if ". " in first:
        first = first.split(". ", 1)[0]
    first = " ".join(first.split()).rstrip(".:;, ")
    if not first:
        return type(exc).__name__ if isinstance(exc, BaseException) else ""
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0].rstrip(".:;, ") + "..."
    return first
