"""The shared input checks: numbers, seeds, text, text files, input paths and token counts."""

from __future__ import annotations

import math

import pytest

from attncraft.errors import InputError
from attncraft.tokenizer import load_clip_tokenizer
from attncraft.validation import (
    MAX_SEED,
    check_finite,
    check_input_file,
    check_int_range,
    check_seed,
    check_text,
    check_token_count,
    content_token_limit,
    looks_like_path,
    read_text_lines,
)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "nan", "inf"])
def test_non_finite_numbers_are_refused(bad):
    with pytest.raises(InputError, match=r"--guidance must be a finite number.*; pass e\.g\. --guidance 7\.5"):
        check_finite("--guidance", bad, 0, example=7.5)


def test_finite_range_and_messages():
    assert check_finite("--guidance", "3.5", 0) == 3.5
    with pytest.raises(InputError, match=r"--lr must be > 0, got 0$|--lr must be > 0, got 0;"):
        check_finite("--lr", 0, 0, low_inclusive=False)
    with pytest.raises(InputError, match=r"must be a number, got 'abc'"):
        check_finite("--lr", "abc")


def test_int_range():
    assert check_int_range("--count", 4, 1, 64) == 4
    assert check_int_range("--count", 4.0, 1, 64) == 4
    for bad in (0, 65):
        with pytest.raises(InputError, match=r"--count must be between 1 and 64, got "):
            check_int_range("--count", bad, 1, 64)
    for bad in (2.5, True, "x", math.nan):
        with pytest.raises(InputError, match="must be a whole number"):
            check_int_range("--count", bad, 1, 64)


def test_seed_range_covers_the_whole_batch():
    assert check_seed(MAX_SEED) == MAX_SEED
    assert check_seed(MAX_SEED - 3, count=4) == MAX_SEED - 3
    with pytest.raises(InputError, match="--seed must be between 0 and"):
        check_seed(MAX_SEED - 2, count=4)
    with pytest.raises(InputError, match="--seed must be between 0 and"):
        check_seed(2**64 + 5)
    with pytest.raises(InputError):
        check_seed(-1)


def test_text_checks():
    assert check_text("prompt", "a red circle") == "a red circle"
    undecodable = b"a red \xff circle".decode("utf-8", "surrogateescape")  # what argv gives
    with pytest.raises(InputError, match=r"the prompt is not valid UTF-8 text \(undecodable byte at character 7\)"):
        check_text("prompt", undecodable)
    with pytest.raises(InputError, match=r"control character \(U\+0007"):
        check_text("prompt", "a red\x07 circle")
    with pytest.raises(InputError, match="the prompt is empty"):
        check_text("prompt", "   ")
    with pytest.raises(InputError, match="not valid UTF-8"):
        check_text("prompt", b"\xff\xfe")
    assert check_text("prompt", "café ☕") == "café ☕"


def test_text_files(tmp_path):
    good = tmp_path / "prompts.txt"
    good.write_text("# my prompts\na red circle\n\n  a blue square  \n", encoding="utf-8")
    assert read_text_lines(good) == ["a red circle", "a blue square"]
    binary = tmp_path / "b.txt"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(InputError, match="is a binary file, not text"):
        read_text_lines(binary)
    latin = tmp_path / "l.txt"
    latin.write_bytes(b"a red circle\na caf\xe9\n")
    with pytest.raises(InputError, match=r"is not valid UTF-8 \(line 2\)"):
        read_text_lines(latin)
    ctrl = tmp_path / "c.txt"
    ctrl.write_text("fine\nbad\x1bline\n")
    with pytest.raises(InputError, match=r"line 2 of the prompt file .* control character \(U\+001B\)"):
        read_text_lines(ctrl)
    empty = tmp_path / "e.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(InputError, match="has no prompts"):
        read_text_lines(empty)
    with pytest.raises(InputError, match="does not exist"):
        read_text_lines(tmp_path / "missing.txt")


def test_input_files_and_path_detection(tmp_path):
    mesh = tmp_path / "horse.obj"
    mesh.write_text("v 0 0 0\n")
    assert check_input_file(mesh, "mesh", suffixes=(".obj", ".ply")) == mesh
    with pytest.raises(InputError, match="has the extension '.txt'"):
        check_input_file(_touch(tmp_path / "x.txt"), "mesh", (".obj",))
    with pytest.raises(InputError, match="is a folder, not a file"):
        check_input_file(tmp_path, "mesh")
    assert looks_like_path("path/to/Sofa")
    assert looks_like_path("Sofa.obj", suffixes=(".obj",))
    assert looks_like_path(str(mesh))
    assert not looks_like_path("a red circle on a gray background")
    assert not looks_like_path("a red/blue circle")
    assert not looks_like_path("torus", suffixes=(".obj",))


def test_token_count_is_counted_without_start_and_end_tokens():
    tok = load_clip_tokenizer()
    assert content_token_limit(tok) == 75
    assert check_token_count(tok, "a photo of a cat") == 5
    check_token_count(tok, " ".join(["cat"] * 75))
    with pytest.raises(InputError, match="is 76 tokens long; this text encoder reads at most 75"):
        check_token_count(tok, " ".join(["cat"] * 76))


def _touch(path):
    path.write_text("")
    return path


def test_token_limit_follows_a_shorter_encoder():
    tok = load_clip_tokenizer()
    assert content_token_limit(tok, max_length=16) == 14
    with pytest.raises(InputError, match="is 15 tokens long; this text encoder reads at most 14"):
        check_token_count(tok, " ".join(["cat"] * 15), max_length=16)


def test_short_reason_keeps_the_first_sentence_whole():
    from attncraft.errors import short_reason

    assert short_reason(ValueError("Bad header. More detail follows.\nline 2")) == "Bad header"
    long = "word " * 100
    cut = short_reason(long, limit=30)
    assert cut.endswith("...") and len(cut) <= 33 and " wor..." not in cut
    assert short_reason(OSError()) == "OSError"
