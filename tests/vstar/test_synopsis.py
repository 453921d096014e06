"""Video synopsis prompting: the rule-based splitter on a fixed table, the parser of language-model
answers (well-formed and malformed), the language-model path on tiny causal LMs built from configs,
loading errors, and precedence (explicit states win)."""

from __future__ import annotations

import pytest

from attncraft.errors import InputError, ModelLoadError
from attncraft.shapes.captions import parse_caption
from attncraft.video import synopsis as vsp
from attncraft.video.synopsis import (
    SynopsisError,
    build_instruction,
    llm_states,
    load_language_model,
    make_synopsis,
    parse_answer,
    rule_states,
)
from tiny_lm import scripted_lm, tiny_lm, tiny_tokenizer

RULE_TABLE = [
    ("a red circle moves right, then turns blue",
     ["a red circle moves right", "a red circle on the right turns blue", "a blue circle on the right"]),
    ("a big red circle on the left moves right, then turns blue, on a gray background",
     ["a big red circle on the left moves right, on a gray background",
      "a big red circle on the right turns blue, on a gray background",
      "a big blue circle on the right, on a gray background"]),
    ("a small striped green star at the top grows and then rotates clockwise and a blue square stays still",
     ["a small striped green star at the top grows and a blue square stays still",
      "a big striped green star at the top rotates clockwise and a blue square stays still",
      "a big striped green star at the top and a blue square"]),
    ("a yellow heart appears on the left", ["a yellow heart on the left appears", "a yellow heart on the left"]),
    ("a red triangle in the top left corner slides down", [
        "a red triangle in the top left corner moves down", "a red triangle in the bottom left corner"]),
    ("a cat sleeps on a sofa, then wakes up, then it runs to the door",
     ["a cat sleeps on a sofa", "a cat wakes up", "a cat runs to the door"]),
    ("First, a man walks along the beach and then sits down", ["a man walks along the beach", "a man sits down"]),
    ("a caterpillar turns into a butterfly", ["a caterpillar", "a butterfly"]),
    ("a small seed becomes a tall tree", ["a small seed", "a tall tree"]),
    ("the sky becomes dark", ["the sky", "the dark sky"]),
    ("the leaves turn red", ["the leaves", "the red leaves"]),
    ("a traffic light changes from red to green", ["a red traffic light", "a green traffic light"]),
    ("a frog goes from a tadpole to a frog", ["a tadpole", "a frog"]),
    ("the car turns left", ["the car turns left"]),
    ("a dog runs on the grass", ["a dog runs on the grass"]),
    ("a blue square in the center", ["a blue square in the center"]),
]  # fmt: skip


@pytest.mark.parametrize("prompt, states", RULE_TABLE)
def test_rule_based_splitter(prompt, states):
    assert rule_states(prompt) == states


def test_shapes_states_are_shapes_captions_with_the_updated_object():
    states = rule_states("a big red circle on the left moves right, then turns blue, on a gray background")
    parsed = [parse_caption(s) for s in states]
    assert [p.objects[0].color for p in parsed] == ["red", "red", "blue"]
    assert [p.objects[0].position for p in parsed] == ["left", "right", "right"]
    assert [[m.kind for m in p.objects[0].motions] for p in parsed] == [["move"], ["recolor"], []]
    assert all(p.background == "gray" for p in parsed)


PARSE_TABLE = [
    ("1. a red circle\n2. a blue circle", None, ["a red circle", "a blue circle"]),
    ("Here are the states:\n\n1) A red circle.\n2) A blue circle.\nI hope this helps!", None,
     ["A red circle", "A blue circle"]),
    ("Step 1: a seed\nStep 2: a sprout\nStep 3: a flower", None, ["a seed", "a sprout", "a flower"]),
    ("- a seed\n* a sprout\n\u2022 a flower", None, ["a seed", "a sprout", "a flower"]),
    ("1. a seed 2. a sprout 3. a flower", None, ["a seed", "a sprout", "a flower"]),
    ("a seed; a sprout; a flower", None, ["a seed", "a sprout", "a flower"]),
    ('```\n1. "a seed"\n2. "a seed"\n3. `a flower`\n```', None, ["a seed", "a flower"]),
    ("1. a seed\x07 in soil\n2. a flower", None, ["a seed in soil", "a flower"]),
    ("1. a\n2. b\n3. c\n4. d\n5. e", 3, ["a", "c", "e"]),  # too many: thinned, first and last kept
    ("1. a\n2. b", 4, ["a", "a", "b", "b"]),  # too few: stretched by holding
    ("1 . a red circle 2 . a blue circle", None, ["a red circle", "a blue circle"]),
]  # fmt: skip


@pytest.mark.parametrize("text, count, states", PARSE_TABLE)
def test_parse_states(text, count, states):
    assert parse_answer(text, num_states=count) == states


@pytest.mark.parametrize("text", ["", "   \n  ", "1. a red circle", "12345 ... !!!", "States:\n1.\n2."])
def test_malformed_answers_are_a_clear_error(text):
    with pytest.raises(SynopsisError, match="usable state.*--state.*--synopsis rule"):
        parse_answer(text)


def test_long_answers_are_capped():
    states = parse_answer("\n".join(f"{i}. state number {i}" for i in range(1, 31)))
    assert len(states) == vsp.MAX_STATES and states[0] == "state number 1" and states[-1] == "state number 30"
    (long,) = parse_answer(f"1. {'word ' * 80}\n2. x", num_states=None)[:1]
    assert len(long.split()) == vsp.MAX_STATE_WORDS


# --------------------------------------------------------------------------------------------------
# The language-model path on tiny causal LMs built from configs
# --------------------------------------------------------------------------------------------------

def test_the_llm_path_generates_greedily_and_parses_the_answer():
    tokenizer = tiny_tokenizer()
    prompt = "a red circle moves right then turns blue"
    length = len(tokenizer(build_instruction(prompt, tokenizer)).input_ids)
    model = scripted_lm(tokenizer, length, "1 . a red circle 2 . a blue circle")
    states, raw = llm_states(prompt, model, tokenizer)
    assert raw == "1 . a red circle 2 . a blue circle"
    assert states == ["a red circle", "a blue circle"]
    synopsis = make_synopsis(prompt, "llm", language_model=(model, tokenizer), num_states=3)
    assert synopsis.source == "llm" and synopsis.states == ["a red circle", "a red circle", "a blue circle"]


def test_a_random_lm_gives_parsed_states_or_the_clear_error_and_always_the_same(tmp_path):
    tokenizer = tiny_tokenizer()
    tiny_lm().save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model, tok = load_language_model(str(tmp_path / "lm"))
    results = []
    for _ in range(2):
        try:
            states, raw = llm_states("a red circle moves right", model, tok, num_states=2, max_new_tokens=24)
            assert states == parse_answer(raw, num_states=2) and len(states) == 2
            results.append(states)
        except SynopsisError as exc:
            results.append(str(exc))
    assert results[0] == results[1]


def test_the_instruction_goes_through_a_chat_template_when_there_is_one():
    tokenizer = tiny_tokenizer()
    plain = build_instruction("a cat", tokenizer, 3)
    assert plain == vsp.INSTRUCTION.format(count="exactly 3", prompt="a cat")
    tokenizer.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<assistant>"
    assert build_instruction("a cat", tokenizer) == f"<user>{vsp.INSTRUCTION.format(count='between 2 and 6', prompt='a cat')}</user><assistant>"


def test_loading_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="--llm path 'models/missing/model' does not exist"):
        load_language_model("models/missing/model")
    with pytest.raises(InputError, match="does not exist"):
        load_language_model(str(tmp_path / "model.gguf"))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(InputError, match="not a .gguf file"):
        load_language_model(str(text))
    with pytest.raises(ModelLoadError, match="'some-org/some-model': it is not in the local cache"):
        load_language_model("some-org/some-model")  # a Hub id, offline in the tests


def test_a_gguf_file_is_read_through_transformers_gguf_file(tmp_path, monkeypatch):
    import sys
    import types

    import transformers

    gguf = tmp_path / "tiny-q8.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.delitem(sys.modules, "gguf", raising=False)
    if not _has_gguf():
        with pytest.raises(InputError, match=r"needs the 'gguf' package; install it with pip install 'attncraft\[llm\]'"):
            load_language_model(str(gguf))
        monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))
    seen = []

    def fake(source, **kwargs):
        seen.append((source, kwargs.get("gguf_file")))
        return tiny_tokenizer() if len(seen) == 1 else tiny_lm()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    load_language_model(str(gguf))
    assert seen == [(str(tmp_path), "tiny-q8.gguf")] * 2


def _has_gguf():
    import importlib.util

    return importlib.util.find_spec("gguf") is not None


def test_explicit_states_always_win_and_bad_choices_are_refused():
    s = make_synopsis("a red circle moves right, then turns blue", "llm", states=["a red circle", " a  blue circle"],
                      llm="does/not/exist")  # fmt: skip
    assert s.source == "user" and s.states == ["a red circle", "a blue circle"]
    assert make_synopsis("a cat sleeps, then wakes up").states == ["a cat sleeps", "a cat wakes up"]
    with pytest.raises(InputError, match="unknown synopsis method"):
        make_synopsis("a cat", "gpt")
    with pytest.raises(InputError, match="needs a language model"):
        make_synopsis("a cat", "llm")
    with pytest.raises(InputError, match="--llm path 'does/not/exist' does not exist"):
        make_synopsis("a cat", "llm", llm="does/not/exist")
    with pytest.raises(InputError, match="state contains a control character"):
        make_synopsis("a cat", states=["a\x00cat"])
