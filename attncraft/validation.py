"""Input checks shared by every command and pipeline: numbers, seeds, text, input files.

Each check returns the value it accepted, or raises :class:`~attncraft.errors.InputError` with one
line that names the problem and the fix, before any model is loaded or any work is done:

* :func:`check_finite` / :func:`check_int_range` - no NaN or infinity reaches a sampler or a sidecar
  (``--guidance nan`` would give an unguided image and invalid JSON), and values stay in range;
* :func:`check_seed` - the whole range of seeds a batch uses (``seed .. seed + count - 1``) fits
  torch's 64-bit generator;
* :func:`check_text` - prompts are valid UTF-8 without control characters. Python decodes
  command-line bytes that are not UTF-8 into lone surrogates (``surrogateescape``), which the
  tokenizers reject with an unreadable ``TypeError``; this says what is wrong instead;
* :func:`read_text_lines` - prompt and state files: UTF-8 text, one item a line, blank lines and
  ``#`` comments skipped, a binary or mis-encoded file refused with the line that is wrong;
* :func:`check_input_file` and :func:`looks_like_path` - an input path that does not exist is an
  error, also where an argument may be either a path or a prompt (``mesh stylize path/to/Sofa``);
* :func:`check_token_count` - the prompt fits the text encoder, counted the same way everywhere
  (content tokens, without the start and end tokens the tokenizer adds).
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attncraft.errors import InputError

MAX_SEED = 2**64 - 1
"""Largest seed torch's generator takes (``manual_seed`` accepts unsigned 64-bit values)."""

_ALLOWED_CONTROL = frozenset("\t")


def _number_text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value}"


def _range_fix(name: str, low: float | None, high: float | None, example: Any = None) -> str:
    if example is not None:
        return f"pass e.g. {name} {example}"
    if low is not None and high is not None:
        return f"pass a value of {name} between {low:g} and {high:g}"
    if low is not None:
        return f"pass a value of {name} of at least {low:g}"
    if high is not None:
        return f"pass a value of {name} of at most {high:g}"
    return f"pass a finite number to {name}"


def check_finite(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    example: Any = None,
) -> float:
    """``value`` as a finite float within ``[low, high]`` (bounds optional, inclusive by default).

    ``name`` is what the user typed (``--guidance``) or the field's name; ``example`` is a value to
    suggest in the fix.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {_number_text(value)}", _range_fix(name, low, high, example)) from None
    if not math.isfinite(number):
        raise InputError(f"{name} must be a finite number, got {number}", _range_fix(name, low, high, example))
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        lo = "" if low is None else f"{'>=' if low_inclusive else '>'} {low:g}"
        hi = "" if high is None else f"{'<=' if high_inclusive else '<'} {high:g}"
        bound = " and ".join(b for b in (lo, hi) if b)
        raise InputError(f"{name} must be {bound}, got {number:g}", _range_fix(name, low, high, example))
    return number


def check_int_range(name: str, value: Any, low: int | None = None, high: int | None = None, *, example: Any = None) -> int:
    """``value`` as an int within ``[low, high]``; refuses floats with a fractional part and bools."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{name} must be a whole number, got {_number_text(value)}", _range_fix(name, low, high, example))
    try:
        number = int(value) if not isinstance(value, float) else None
    except ValueError:
        number = None
    if number is None:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            number = int(value)
        else:
            raise InputError(f"{name} must be a whole number, got {_number_text(value)}", _range_fix(name, low, high, example))
    if (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            bound = f"between {low} and {high}"
        elif low is not None:
            bound = f"at least {low}"
        else:
            bound = f"at most {high}"
        raise InputError(f"{name} must be {bound}, got {number}", _range_fix(name, low, high, example))
    return number


def check_seed(seed: Any, count: int = 1, name: str = "--seed") -> int:
    """A seed such that every seed of the batch (``seed + i`` for ``i < count``) is a valid torch seed."""
    top = MAX_SEED - max(int(count), 1) + 1
    seed = check_int_range(name, seed, 0, top, example=0)
    return seed


def _bad_character(text: str, multiline: bool) -> tuple[int, str] | None:
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff" or "\ud800" <= char <= "\udfff":
            return index, "surrogate"
        if unicodedata.category(char) == "Cc" and char not in _ALLOWED_CONTROL and not (multiline and char in "\n\r"):
            return index, "control"
    return None


def check_text(name: str, value: Any, *, allow_empty: bool = False, multiline: bool = False) -> str:
    """``value`` as text a tokenizer can take: UTF-8, no control characters, not blank (unless allowed)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"the {name} is not valid UTF-8 text", f"pass the {name} as UTF-8 text") from None
    if not isinstance(value, str):
        raise InputError(f"the {name} must be text, got {type(value).__name__}", f"pass the {name} as a string")
    bad = _bad_character(value, multiline)
    if bad is not None:
        index, kind = bad
        if kind == "surrogate":
            raise InputError(
                f"the {name} is not valid UTF-8 text (undecodable byte at character {index + 1})",
                f"pass the {name} as UTF-8 (check the terminal's or the file's encoding)",
            )
        raise InputError(
            f"the {name} contains a control character (U+{ord(value[index]):04X} at character {index + 1})",
            f"remove it from the {name}",
        )
    if not allow_empty and not value.strip():
        raise InputError(f"the {name} is empty", f"pass a non-empty {name}")
    return value


def read_text_lines(path: str | os.PathLike, what: str = "prompt file", *, max_lines: int | None = None) -> list[str]:
    """Items of a UTF-8 text file, one a line; blank lines and lines starting with ``#`` are skipped.

    Refuses a missing or unreadable file, a binary file (NUL bytes), bytes that are not UTF-8, and
    lines with control characters, naming the line; a file with no items is an error too.
    """
    path = check_input_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the {what} {str(path)!r}: {exc.strerror or exc}", "check its permissions") from None
    if b"\x00" in data:
        raise InputError(f"the {what} {str(path)!r} is a binary file, not text", f"pass a UTF-8 text file with one {_item(what)} a line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"the {what} {str(path)!r} is not valid UTF-8 (line {line})",
            "save it as UTF-8 text",
        ) from None
    items = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        bad = _bad_character(line, multiline=False)
        if bad is not None:
            raise InputError(
                f"line {number} of the {what} {str(path)!r} contains a control character (U+{ord(line[bad[0]]):04X})",
                "remove it, one item a line",
            )
        items.append(line)
    if not items:
        raise InputError(f"the {what} {str(path)!r} has no {_item(what)}s", f"write one {_item(what)} a line")
    if max_lines is not None and len(items) > max_lines:
        raise InputError(f"the {what} {str(path)!r} has {len(items)} {_item(what)}s, more than {max_lines}", f"split it into files of at most {max_lines}")
    return items


def _item(what: str) -> str:
    word = what.split()[0] if what.split() else "item"
    return word if word not in ("input", "text") else "line"


def looks_like_path(text: str, suffixes: Iterable[str] = ()) -> bool:
    """True if ``text`` reads as a file path rather than a prompt: no whitespace and either a path
    separator or one of ``suffixes`` (e.g. ``path/to/Sofa``, ``horse.obj``); or an existing path."""
    if not text or Path(text).exists():
        return bool(text)
    if any(ch.isspace() for ch in text):
        return False
    if "/" in text or os.sep in text:
        return True
    lower = text.lower()
    return any(lower.endswith(s.lower()) for s in suffixes)


def check_input_file(path: str | os.PathLike, what: str = "input file", suffixes: Iterable[str] | None = None) -> Path:
    """``path`` as an existing, readable file (with one of ``suffixes`` if given)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"the {what} {str(path)!r} does not exist", "check the path")
    if path.is_dir():
        raise InputError(f"the {what} {str(path)!r} is a folder, not a file", "pass a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"the {what} {str(path)!r} is not readable", "check its permissions")
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if path.suffix.lower() not in allowed:
            raise InputError(
                f"the {what} {str(path)!r} has the extension {path.suffix or '(none)'!r}",
                f"pass a {', '.join(allowed)} file",
            )
    return path


def content_token_limit(tokenizer, max_length: int | None = None) -> int:
    """Tokens of text a CLIP-style tokenizer fits, not counting its start and end tokens.

    ``max_length`` is the encoder's whole sequence length when it is shorter than the tokenizer's
    ``model_max_length`` (e.g. a CLIP with fewer position embeddings).
    """
    special = len(tokenizer("", truncation=False).input_ids)  # bos/eos the tokenizer adds
    total = int(tokenizer.model_max_length) if max_length is None else int(max_length)
    return total - special


def check_token_count(tokenizer, text: str, what: str = "prompt", max_length: int | None = None) -> int:
    """Content tokens of ``text`` (without start/end tokens); refuses text the encoder would truncate.

    Every command counts the same way, so the same prompt gets the same limit everywhere (75 for
    CLIP's 77 positions); ``max_length`` as in :func:`content_token_limit`.
    """
    special = len(tokenizer("", truncation=False).input_ids)
    count = len(tokenizer(text, truncation=False).input_ids) - special
    limit = content_token_limit(tokenizer, max_length)
    if count > limit:
        raise InputError(f"the {what} is {count} tokens long; this text encoder reads at most {limit}", f"shorten the {what}")
    return count
