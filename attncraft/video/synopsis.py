"""VSTAR Video Synopsis Prompting: a prompt becomes K ordered visual states for per-frame prompts.

A video prompt ("a red circle moves right, then turns blue") describes change; a text-to-video
model conditioned on one embedding for every frame tends to show too little of it. Video synopsis
prompting (VSTAR, ICLR 2025) rewrites the prompt as K ordered *states*, the stages of the video,
whose text embeddings are then spread over the frames (state ``k`` at anchor frame
``linspace(0, F-1, K)[k]``, linear interpolation between anchors; the per-frame prompt schedule of
the text-to-video pipeline does that part). Three sources, in order of precedence
(:func:`make_synopsis`):

1. **Explicit states** (``--state`` repeated): used as given, always.
2. **A local language model** (``--llm PATH_OR_ID``): any transformers causal LM, from a folder, a
   Hub id in the local cache, or a single GGUF file (read through transformers' ``gguf_file``, which
   needs the ``gguf`` package: ``pip install 'attncraft[llm]'``). The instruction is ours (:data:`INSTRUCTION`, VSTAR's own is not
   public); decoding is greedy, so the same model and prompt give the same states; the answer is
   parsed by :func:`parse_answer`.
3. **The rule-based splitter** (:func:`rule_states`), deterministic, for the usual forms.

The rule-based splitter:

* **Shapes captions** (text the Shapes caption parser reads, with motion clauses: "a red circle on
  the left moves right, then turns blue"): the states are the scene at successive moments, each
  followed by the clause that happens next, and a final state without clause::

      a red circle on the left moves right
      a red circle on the right turns blue
      a blue circle on the right

  An object's colour, size and position are updated by its clauses (a move ends at the edge of the
  grid in its direction: captions do not say whether it goes one cell or two); an object that
  appears is left out of the states before it appears; objects with fewer clauses than the longest
  sequence keep their clause over several states. Each state is itself a Shapes caption.
* **"X, then Y"** (also "and then", "; then", "after that", "afterwards", "finally"): one state per
  clause; a clause without subject ("then wakes up", "then it runs") gets the first clause's subject.
* **"X turns into Y"**, "X changes / transforms / morphs / grows into Y", **"X becomes Y"**, "X turns
  <colour>": ``[X, Y]`` when Y is a noun phrase (starts with an article), else ``[X, X with Y]``
  ("the leaves turn red" -> "the leaves", "the red leaves").
* **"from X to Y"** ("a traffic light changes from red to green"): ``[X, Y]`` for noun phrases, else
  the subject with each of X and Y ("a red traffic light", "a green traffic light").
* Anything else is one state: the prompt itself.

Parsing a language model's answer (:func:`parse_answer`): numbered lines ("1.", "2)", "Step 3:"),
bullets, inline numbering on one line, or one state per line; preambles ("Here are the states:"),
code fences, quotes and control characters are dropped; consecutive duplicates merged; states cut to
:data:`MAX_STATE_WORDS` words. With ``num_states`` asked, too many states are thinned evenly (first
and last kept) and too few (at least two) stretched by holding states; fewer than two usable states
is a :class:`SynopsisError` that says what to do instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attncraft.errors import InputError, ModelLoadError
from attncraft.validation import check_int_range, check_text

__all__ = [
    "INSTRUCTION",
    "MAX_STATES",
    "MAX_STATE_WORDS",
    "Synopsis",
    "SynopsisError",
    "build_instruction",
    "llm_states",
    "load_language_model",
    "make_synopsis",
    "parse_answer",
    "rule_states",
]

MAX_STATES = 16
MAX_STATE_WORDS = 40
"""About the most words a CLIP text encoder (75 content tokens) reads."""

INSTRUCTION = (
    "Split a video description into its visual states: {count} short descriptions of what the video shows "
    "at successive moments, in order, from the first frame to the last. Each state describes one still "
    "moment completely (the subject, how it looks, where it is) in the words of the description, in at "
    "most 20 words. Write one state per line, numbered 1., 2., 3., and nothing else.\n\n"
    "Video: {prompt}\nStates:\n"
)
"""The instruction given to the language model; ``{count}`` is "exactly K" or "between 2 and 6"."""


class SynopsisError(InputError):
    """No usable states could be made from the prompt or the language model's answer."""


@dataclass
class Synopsis:
    """The states and where they come from (``user``, ``llm`` or ``rule``), for sidecars."""

    states: list[str]
    source: str
    model: str | None = None
    raw: str | None = None
    """The language model's answer, as generated (``llm`` only)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"states": list(self.states), "source": self.source}
        if self.model is not None:
            out["model"] = self.model
        if self.raw is not None:
            out["raw"] = self.raw
        return out


# --------------------------------------------------------------------------------------------------
# Rule-based splitter: Shapes captions
# --------------------------------------------------------------------------------------------------


def _shapes_states(text: str) -> list[str] | None:
    """Visual states of a Shapes video caption, or None if ``text`` is not one."""
    from attncraft.shapes.captions import PATTERN_ADJ, POSITION_PP, CaptionError, parse_caption

    try:
        scene = parse_caption(text)
    except CaptionError:
        return None
    longest = max((len(o.motions) for o in scene.objects), default=0)
    if longest == 0:
        return None

    def describe(obj, done: int) -> tuple[str | None, str | None]:
        color, size, position, visible = obj.color, obj.size, obj.position, True
        if obj.motions and obj.motions[0].kind == "appear":
            visible = done >= 1
        for m in obj.motions[:done]:
            if m.kind == "recolor":
                color = m.to_color or color
            elif m.kind == "grow":
                size = "big"
            elif m.kind == "shrink":
                size = "small"
            elif m.kind == "move":
                position = _moved(position, m.direction)
        words = [w for w in (size, PATTERN_ADJ[obj.pattern][0] if obj.pattern not in (None, "plain") else None, color, obj.shape) if w]
        noun = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
        if position is not None:
            noun += " " + POSITION_PP[position][0]
        return (noun if visible else None), noun

    states = []
    for k in range(longest + 1):
        parts = []
        for obj in scene.objects:
            n = len(obj.motions)
            done = (k * n) // longest
            seen, noun = describe(obj, done)
            clause = None
            if k < longest:
                if done < n:
                    clause = _clause_text(obj.motions[done])
                elif obj.static:
                    clause = "stays still"
            if clause == "appears":
                parts.append(f"{noun} appears")
            elif seen is not None:
                parts.append(f"{seen} {clause}" if clause else seen)
        state = " and ".join(parts) if parts else ""
        if scene.background:
            state = f"{state}, on a {scene.background} background" if state else f"a {scene.background} background"
        states.append(state)
    return states


_EDGE = {"left": (None, 0), "right": (None, 2), "up": (0, None), "down": (2, None)}


def _moved(position: str | None, direction: str | None) -> str | None:
    """Grid position after a move to the edge in ``direction`` (captions do not give its length)."""
    from attncraft.shapes.world import POSITIONS

    if direction not in _EDGE:
        return position
    row_to, col_to = _EDGE[direction]
    if position is None:  # only the moved axis is known
        return {"left": "left", "right": "right", "up": "top", "down": "bottom"}[direction]
    index = POSITIONS.index(position)
    row, col = divmod(index, 3)
    row = row if row_to is None else row_to
    col = col if col_to is None else col_to
    return POSITIONS[3 * row + col]


def _clause_text(motion) -> str:
    if motion.kind == "move":
        return f"moves {motion.direction}"
    if motion.kind == "grow":
        return "grows"
    if motion.kind == "shrink":
        return "shrinks"
    if motion.kind == "rotate":
        return f"rotates {motion.direction}" if motion.direction else "rotates"
    if motion.kind == "recolor":
        return f"turns {motion.to_color}"
    if motion.kind == "appear":
        return "appears"
    raise ValueError(f"unknown motion {motion.kind!r}")


# --------------------------------------------------------------------------------------------------
# Rule-based splitter: general English
# --------------------------------------------------------------------------------------------------

_SEQUENCE = re.compile(
    r"\s*(?:[,;]\s*and\s+then|[,;]\s*then|\s+and\s+then|[,;]\s*after\s+that,?|[,;]\s*afterwards,?"
    r"|[,;]\s*and\s+finally,?|[,;]\s*finally,?|\s+then)\s+",
    re.IGNORECASE,
)
_LEAD = re.compile(r"^(?:first(?:ly)?|at first|in the beginning|initially)\s*,?\s+", re.IGNORECASE)
_INTO = re.compile(r"^(?P<x>.+?)\s+(?:turns?|changes?|transforms?|morphs?|grows?)\s+into\s+(?P<y>.+)$", re.IGNORECASE)
_COLOR_WORDS = ("red|orange|yellow|green|blue|purple|violet|pink|brown|black|white|gray|grey|gold|golden|silver"
                "|dark|bright|pale")
_BECOMES = re.compile(
    rf"^(?P<x>.+?)\s+(?:becomes?\s+(?P<y>.+)|turns?\s+(?P<c>(?:{_COLOR_WORDS})\b.*))$", re.IGNORECASE
)
_FROM_TO = re.compile(
    r"^(?P<p>.*?)\s*(?:\b(?:goes|go|changes|change|turns|turn|shifts|shift|transitions|transition|fades|fade"
    r"|moves|move)\s+)?\bfrom\s+(?P<x>.+?)\s+to\s+(?P<y>.+)$",
    re.IGNORECASE,
)
_DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "one", "two", "three", "some", "many",
                "its", "his", "her", "their", "my", "our", "your"}  # fmt: skip
_PRONOUNS = {"it", "he", "she", "they"}
_ARTICLE = re.compile(r"^(?:a|an|the)\s", re.IGNORECASE)


def _verb_like(word: str) -> bool:
    w = word.lower()
    return w in ("is", "are") or (len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")) and w.isalpha())


def _subject(clause: str) -> str | None:
    """The words before the first verb-like word of ``clause`` ("a cat" of "a cat sleeps")."""
    words = clause.split()
    for i, w in enumerate(words[1:], start=1):
        if _verb_like(w) and words[i - 1].lower() not in _DETERMINERS:
            return " ".join(words[:i])
    return None


def _with_subject(clause: str, subject: str | None) -> str:
    words = clause.split()
    if subject is None or not words:
        return clause
    if words[0].lower() in _PRONOUNS:
        return " ".join([subject, *words[1:]])
    if _verb_like(words[0]):
        return f"{subject} {clause}"
    return clause


def _with_attribute(noun: str, attribute: str) -> str:
    """"the leaves" + "red" -> "the red leaves"; without a determiner, "leaves, red"."""
    words = noun.split()
    if words and words[0].lower() in _DETERMINERS:
        return " ".join([words[0], attribute, *words[1:]])
    return f"{noun}, {attribute}"


def _pair(x: str, y: str, subject: str | None = None) -> list[str]:
    """Two states from the X and Y of a change: as they are when they are noun phrases (or there is
    no subject to attach them to), else attached to the subject ("a red traffic light")."""
    x, y = x.strip(" ,."), y.strip(" ,.")
    if not x or not y:
        return []
    if subject is None or _ARTICLE.match(x):
        return [x, y]
    return [_with_attribute(subject, x), _with_attribute(subject, y)]


def _generic_states(text: str) -> list[str]:
    body = _LEAD.sub("", text.strip().rstrip("."))
    clauses = [c.strip(" ,;.") for c in _SEQUENCE.split(body) if c.strip(" ,;.")]
    if len(clauses) >= 2:
        subject = _subject(clauses[0])
        return [clauses[0], *(_with_subject(c, subject) for c in clauses[1:])]
    match = _INTO.match(body)
    if match:
        states = _pair(match["x"], match["y"])
        if states:
            return states
    match = _FROM_TO.match(body)
    if match:
        subject = match["p"].strip(" ,") or None
        states = _pair(match["x"], match["y"], subject)
        if states:
            return states
    match = _BECOMES.match(body)
    if match:
        x, y = match["x"].strip(" ,"), (match["y"] or match["c"]).strip(" ,.")
        if x and y:
            return [x, y] if _ARTICLE.match(y) else [x, _with_attribute(x, y)]
    return [text.strip()]


def rule_states(prompt: str) -> list[str]:
    """States of ``prompt`` by the deterministic rules of the module docstring (one state if none fits)."""
    text = " ".join(check_text("prompt", prompt).split())
    states = _shapes_states(text)
    if states is None:
        states = _generic_states(text)
    return [s for s in states if s]


# --------------------------------------------------------------------------------------------------
# Parsing a language model's answer
# --------------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"^\s*(?:\(?\s*(?:step|state|stage|scene|frame|moment)?\s*\d{1,2}\s*[.):\]-]|(?:step|state|stage|scene|frame|moment)\s+\d{1,2}\b\s*[:.-]?)\s*", re.IGNORECASE)
_INLINE_NUMBER = re.compile(r"(?:^|\s)\(?\d{1,2}\s*[.)]\s+")
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u00b7>]+|#+)\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _clean_state(line: str) -> str:
    line = _NUMBERED.sub("", line, count=1)
    line = _BULLET.sub("", line, count=1)
    line = line.strip().strip("\"'`\u201c\u201d\u2018\u2019").strip()
    line = line.rstrip(" .;,")
    words = line.split()
    return " ".join(words[:MAX_STATE_WORDS])


def _thin(states: list[str], count: int) -> list[str]:
    """``count`` states spread evenly over ``states`` (first and last kept when thinning)."""
    n = len(states)
    if count == n:
        return list(states)
    if count > n:  # stretch: hold states
        return [states[(i * n) // count] for i in range(count)]
    if count == 1:
        return [states[0]]
    return [states[round(i * (n - 1) / (count - 1))] for i in range(count)]


def parse_answer(text: str, num_states: int | None = None, max_states: int = MAX_STATES) -> list[str]:
    """The states in a language model's answer (see the module docstring for what is repaired)."""
    text = _CONTROL.sub(" ", text or "").replace("\r", "\n")
    lines = [ln for ln in text.split("\n") if ln.strip() and not ln.strip().startswith("```")]
    if len(lines) == 1 and len(_INLINE_NUMBER.findall(lines[0])) >= 2:
        lines = [p for p in _INLINE_NUMBER.split(lines[0]) if p.strip()]
    elif len(lines) == 1 and ";" in lines[0]:
        lines = lines[0].split(";")
    numbered = [ln for ln in lines if _NUMBERED.match(ln)]
    if len(numbered) >= 2:
        lines = numbered
    states: list[str] = []
    for line in lines:
        if line.strip().endswith(":"):  # "Here are the states:"
            continue
        state = _clean_state(line)
        if not re.search(r"[^\W\d_]", state):  # no letter at all
            continue
        if states and states[-1].lower() == state.lower():
            continue
        states.append(state)
    if len(states) < 2:
        raise SynopsisError(
            f"the language model gave {len(states)} usable state{'s' if len(states) != 1 else ''} (at least 2 needed)",
            "try another --llm, give the states with --state, or use --synopsis rule",
        )
    if num_states is not None:
        return _thin(states, num_states)
    return _thin(states, max_states) if len(states) > max_states else states


# --------------------------------------------------------------------------------------------------
# The language model
# --------------------------------------------------------------------------------------------------


def load_language_model(ref: str, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a transformers causal LM from a folder, a cached Hub id or a ``.gguf`` file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from attncraft.loading import _is_hub_error, hub_offline, reference_looks_like_path

    ref = str(ref).strip()
    if not ref:
        raise InputError("--llm is empty", "pass a model folder, a .gguf file or a Hub id")
    path = Path(ref).expanduser()
    kwargs: dict[str, Any] = {}
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise InputError(f"the --llm file {ref!r} is not a .gguf file", "pass a model folder or a .gguf file")
            try:
                import gguf  # noqa: F401
            except ImportError:
                raise InputError(f"reading the GGUF file {ref!r} needs the 'gguf' package",
                                 "install it with pip install 'attncraft[llm]', or pass a transformers model folder") from None
            source, kwargs = str(path.parent), {"gguf_file": path.name}
        else:
            source = str(path)
    elif reference_looks_like_path(ref, (".gguf",)):
        raise InputError(f"the --llm path {ref!r} does not exist", "check the path, or pass a Hub id in the local cache")
    else:
        source = ref
        kwargs["local_files_only"] = hub_offline()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001
        if source == ref and _is_hub_error(exc):
            raise ModelLoadError(
                f"cannot load language model {ref!r}: it is not in the local cache and the Hub is not reachable",
                "pass a local model folder or .gguf file with --llm, or use --synopsis rule",
            ) from exc
        raise ModelLoadError(f"cannot load language model {ref!r}: {' '.join(str(exc).split())[:200]}",
                             "pass a transformers causal LM folder or a .gguf file") from exc
    model.to(device)
    model.eval()
    return model, tokenizer


def build_instruction(prompt: str, tokenizer: Any = None, num_states: int | None = None) -> str:
    """The text given to the model: :data:`INSTRUCTION`, through the tokenizer's chat template if it has one."""
    count = f"exactly {num_states}" if num_states else "between 2 and 6"
    message = INSTRUCTION.format(count=count, prompt=prompt)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    return message


def llm_states(
    prompt: str,
    model: Any,
    tokenizer: Any,
    num_states: int | None = None,
    max_new_tokens: int | None = None,
) -> tuple[list[str], str]:
    """(states, raw answer) from a causal LM, greedy decoding, parsed by :func:`parse_answer`."""
    import torch

    prompt = " ".join(check_text("prompt", prompt).split())
    text = build_instruction(prompt, tokenizer, num_states)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not getattr(tokenizer, "chat_template", None))
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    budget = max_new_tokens or 32 * (num_states or 6) + 16
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=budget, do_sample=False, pad_token_id=pad)
    raw = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return parse_answer(raw, num_states=num_states), raw


def make_synopsis(
    prompt: str,
    method: str = "rule",
    states: Sequence[str] | None = None,
    llm: str | None = None,
    num_states: int | None = None,
    language_model: tuple[Any, Any] | None = None,
) -> Synopsis:
    """The states of ``prompt``: explicit ``states`` win; else ``method`` "llm" (with ``llm`` a model
    reference, or ``language_model`` an already loaded (model, tokenizer)) or "rule"."""
    if states:
        given = [" ".join(check_text("state", s).split()) for s in states]
        return Synopsis(given, "user")
    if num_states is not None:
        num_states = check_int_range("--synopsis-states", num_states, 2, MAX_STATES, example=3)
    if method == "rule":
        found = rule_states(prompt)
        return Synopsis(_thin(found, num_states) if num_states and len(found) >= 2 else found, "rule")
    if method != "llm":
        raise InputError(f"unknown synopsis method {method!r}", "pass --synopsis rule or --synopsis llm")
    if language_model is None:
        if not llm:
            raise InputError("--synopsis llm needs a language model", "pass --llm PATH_OR_ID, or use --synopsis rule")
        language_model = load_language_model(llm)
    found, raw = llm_states(prompt, *language_model, num_states=num_states)
    return Synopsis(found, "llm", model=llm, raw=raw)
