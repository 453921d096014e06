"""Captions of the Shapes world: a small generative grammar and its parser.

:func:`caption_scene` turns a :class:`~attncraft.shapes.world.Scene` into English ("a big red circle
on the left and a striped blue square on the right, on a gray background"; for videos "a red circle
moves right, then turns blue"). Word order, synonyms, absolute positions vs. relations ("a small
yellow star above a green heart") and the place of the background vary with the ``seed``, so that
nouns, adjectives and relations appear in many orders; the same (scene, seed) always gives the same
text.

:func:`parse_caption` is the inverse used by the scorers (and by users' free prompts written in the
same vocabulary): it finds each object noun, the adjectives in front of it, and the phrases after it
(pattern, position, relation to the next object, motion clauses), and returns a
:class:`ParsedScene`. Attributes a caption does not mention come back as ``None`` (unconstrained).

Captions stay below CLIP's 77 tokens: a caption of more than 40 words (three moving objects) is
redrawn with the shortest wordings, which keeps every caption within about 60 tokens; the tests check
it with the real tokenizer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from attncraft.shapes.world import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    PATTERNS,
    POSITIONS,
    SHAPES,
    Motion,
    Scene,
    SceneObject,
)

__all__ = [
    "ParsedMotion", "ParsedObject", "ParsedScene", "CaptionError", "caption_scene", "relation_caption",
    "relation_holds_on_grid", "opposite_relation_word", "flip_relations", "parse_caption", "RELATION_WORDS",
    "RELATION_OF_WORD", "OPPOSITE_RELATION",
]


class CaptionError(ValueError):
    """A prompt that names no object of the Shapes vocabulary."""


# --------------------------------------------------------------------------------------------------
# Vocabulary (surface forms -> canonical values)
# --------------------------------------------------------------------------------------------------

SIZE_WORDS = {"big": ("big", "large"), "small": ("small", "little")}
PATTERN_ADJ = {
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot", "spotted"),
    "checkered": ("checkered", "checkerboard"),
}
PATTERN_PP = {
    "striped": ("with stripes",),
    "dotted": ("with dots", "with polka dots"),
    "checkered": ("with a checkered pattern", "with checks"),
}
POSITION_PP = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle", "at the center"),
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "bottom left": ("in the bottom left corner", "at the bottom left", "in the lower left corner"),
    "bottom right": ("in the bottom right corner", "at the bottom right", "in the lower right corner"),
}
BACKGROUND_PHRASES = ("on a {} background", "against a {} background")
"""How the background is stated. "over" is kept for the relation alone: with "over a navy background"
beside "a star over a heart", the word meant two things ("a triangle over a heart over a navy
background"), and 90 % of its training occurrences were the background phrase."""
RELATION_WORDS = {
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
}
"""Surface forms of each relation ("object i is <relation> object j")."""
RELATION_OF_WORD = {w: rel for rel, ws in RELATION_WORDS.items() for w in ws}
"""Relation of each surface form ("under" -> "below")."""
OPPOSITE_RELATION = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
RELATION_SHARE = 0.4
"""Default probability that a still scene of two or three objects is described with a relation
("a star above a heart") rather than with absolute positions."""
MOVE_VERBS = ("moves", "slides", "drifts")
GROW_PHRASES = ("grows", "gets bigger", "grows larger")
SHRINK_PHRASES = ("shrinks", "gets smaller")
ROTATE_VERBS = ("rotates", "spins")
RECOLOR_PHRASES = ("turns {to}", "becomes {to}", "changes color to {to}", "changes from {frm} to {to}")
APPEAR_PHRASES = ("appears", "pops up")
STATIC_PHRASES = ("stays still", "stays in place", "does not move")
THEN = (", then", " and then", ", then it")

_SIZE_OF = {w: s for s, ws in SIZE_WORDS.items() for w in ws}
_PATTERN_OF = {w: p for p, ws in PATTERN_ADJ.items() for w in ws} | {"plain": "plain", "solid": "plain"}
_DIRECTION_OF = {"left": "left", "right": "right", "up": "up", "down": "down", "upward": "up",
                 "upwards": "up", "downward": "down", "downwards": "down"}  # fmt: skip
_BG_OF = {b: b for b in BACKGROUNDS} | {"grey": "gray", "dark": None}


# --------------------------------------------------------------------------------------------------
# Parsed form
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedMotion:
    """A motion clause: ``kind`` in MOTIONS; ``direction`` (move: left/right/up/down; rotate:
    "clockwise"/"counterclockwise" or None), ``to_color``/``from_color`` (recolor)."""

    kind: str
    direction: str | None = None
    to_color: str | None = None
    from_color: str | None = None


@dataclass(frozen=True)
class ParsedObject:
    """An object as a caption describes it; ``None`` = not mentioned (any value is acceptable)."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    pattern: str | None = None
    motions: tuple[ParsedMotion, ...] = ()
    static: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("shape", "color", "size", "position", "pattern")}
        d["motions"] = [m.__dict__.copy() for m in self.motions]
        d["static"] = self.static
        return d


@dataclass(frozen=True)
class ParsedScene:
    """What a caption says: objects in caption order, background, relations ``(i, rel, j)`` with
    ``rel`` in ``above``/``below``/``left of``/``right of`` ("object i is <rel> object j")."""

    objects: tuple[ParsedObject, ...]
    background: str | None = None
    relations: tuple[tuple[int, str, int], ...] = field(default=())

    @property
    def is_video(self) -> bool:
        return any(o.motions or o.static for o in self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": [o.to_dict() for o in self.objects],
            "background": self.background,
            "relations": [list(r) for r in self.relations],
        }


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: SceneObject, rng: random.Random, size: bool, pattern: bool) -> str:
    """"a big striped red circle", "a red circle with stripes", "a striped big red circle"..."""
    size_w = rng.choice(SIZE_WORDS[obj.size]) if size else None
    has_pat = pattern and obj.pattern != "plain"
    form = rng.randrange(4) if has_pat else 0
    words: list[str] = []
    tail = ""
    if form == 0 or not has_pat:  # size pattern colour shape
        words = [w for w in (size_w, rng.choice(PATTERN_ADJ[obj.pattern]) if has_pat else None) if w]
        words += [obj.color, obj.shape]
    elif form == 1:  # pattern size colour shape
        words = [rng.choice(PATTERN_ADJ[obj.pattern])] + ([size_w] if size_w else []) + [obj.color, obj.shape]
    elif form == 2:  # size colour pattern shape
        words = ([size_w] if size_w else []) + [obj.color, rng.choice(PATTERN_ADJ[obj.pattern]), obj.shape]
    else:  # size colour shape with stripes
        words = ([size_w] if size_w else []) + [obj.color, obj.shape]
        tail = " " + rng.choice(PATTERN_PP[obj.pattern])
    return f"{_article(words[0])} {' '.join(words)}{tail}"


def relation_holds_on_grid(a: SceneObject, relation: str, b: SceneObject) -> bool:
    """Whether ``a`` is ``relation`` (above / below / left of / right of) ``b`` by their grid cells."""
    (ra, ca), (rb, cb) = a.cell, b.cell
    return {"above": ra < rb, "below": ra > rb, "left of": ca < cb, "right of": ca > cb}[relation]


def _relation(a: SceneObject, b: SceneObject, rng: random.Random, vertical: float) -> str:
    """A relation true of (a, b) on the grid; when a vertical and a horizontal one both hold (objects
    on a diagonal), the vertical one with probability ``vertical``."""
    options = [r for r in RELATION_WORDS if relation_holds_on_grid(a, r, b)]
    if len(options) == 2:
        return options[0] if rng.random() < vertical else options[1]  # (above|below, left of|right of)
    return options[0]


def _motion_phrase(m: Motion, color_before: str, rng: random.Random) -> str:
    if m.kind == "move":
        verb = rng.choice(MOVE_VERBS)
        if m.direction in ("left", "right") and rng.random() < 0.3:
            return f"{verb} to the {m.direction}"
        return f"{verb} {m.direction}"
    if m.kind == "grow":
        return rng.choice(GROW_PHRASES)
    if m.kind == "shrink":
        return rng.choice(SHRINK_PHRASES)
    if m.kind == "rotate":
        verb = rng.choice(ROTATE_VERBS)
        if rng.random() < 0.5:
            return f"{verb} {'counterclockwise' if m.amount > 0 else 'clockwise'}"
        return verb
    if m.kind == "recolor":
        return rng.choice(RECOLOR_PHRASES).format(to=m.to_color, frm=color_before)
    if m.kind == "appear":
        return rng.choice(APPEAR_PHRASES)
    raise ValueError(f"unknown motion {m.kind!r}")


def _video_clause(obj: SceneObject, rng: random.Random, size: bool, pattern: bool, position: bool) -> str:
    np_ = _noun_phrase(obj, rng, size, pattern)
    pos = rng.choice(POSITION_PP[obj.position]) if position else ""
    if not obj.motions:
        return " ".join(w for w in (np_, pos, rng.choice(STATIC_PHRASES)) if w)
    parts = []
    color = obj.color
    for m in obj.motions:
        parts.append(_motion_phrase(m, color, rng))
        if m.kind == "recolor" and m.to_color:
            color = m.to_color
    verbs = parts[0]
    for p in parts[1:]:
        verbs += f"{rng.choice(THEN)} {p}"
    if obj.motions[0].kind == "appear" and pos:  # "a red circle appears on the left"
        return f"{np_} {verbs} {pos}"
    return " ".join(w for w in (np_, pos, verbs) if w)


def _join(clauses: list[str], rng: random.Random, video: bool) -> str:
    if len(clauses) == 1:
        return clauses[0]
    if video:
        joiner = rng.choice((" and ", " while ", "; "))
        return joiner.join(clauses)
    if len(clauses) == 2:
        return f"{clauses[0]} and {clauses[1]}"
    return f"{clauses[0]}, {clauses[1]} and {clauses[2]}"


class _Compact(random.Random):
    """A generator that picks the shortest wording whenever it chooses among strings."""

    def choice(self, seq):  # type: ignore[override]
        if seq and all(isinstance(x, str) for x in seq):
            return min(seq, key=len)
        return super().choice(seq)


MAX_WORDS = 40
"""Captions longer than this are redrawn with the shortest wordings (CLIP reads 75 tokens)."""


def caption_scene(
    scene: Scene, seed: int | None = 0, omit: float = 0.0, relation: float = RELATION_SHARE, vertical: float = 0.5
) -> str:
    """Describe ``scene`` in one sentence, deterministically from ``seed``.

    With ``omit=0`` (default) every attribute is stated (size, colour, shape, non-plain pattern,
    position either absolutely or as a relation, background), so the caption pins the scene down
    up to jitter. ``omit`` in (0, 1] drops each optional attribute (size, pattern, position,
    background) with that probability, for captions of varying detail. ``relation`` is the
    probability that a still scene of two or three objects places its first two (in caption order)
    by a relation ("a star above a heart") instead of absolute positions; ``vertical`` the
    probability that the relation is the vertical one when both a vertical and a horizontal one hold.
    Videos (scenes with motion) describe each object's motion clauses in order.
    """
    text = _caption(scene, random.Random(seed), omit, relation, vertical)
    if len(text.split()) > MAX_WORDS:
        text = _caption(scene, _Compact(seed), omit, relation, vertical)
    return text


def relation_caption(scene: Scene, word: str, seed: int | None = 0) -> str:
    """A full caption of a still two-object scene that places the objects by the relation ``word``
    (a surface form of :data:`RELATION_WORDS`: "above", "over", "under", "to the left of"...), in
    the grammar's wording: "a big red circle under a striped blue star on a gray background".

    The objects are named in the order that makes the relation true; a scene on which it cannot
    hold either way (a vertical relation for two objects in the same row) is refused.
    """
    if word not in RELATION_OF_WORD:
        raise ValueError(f"unknown relation word {word!r}; expected one of {', '.join(RELATION_OF_WORD)}")
    if len(scene.objects) != 2 or scene.has_motion:
        raise ValueError("relation_caption describes still scenes of exactly two objects")
    rel = RELATION_OF_WORD[word]
    a, b = scene.objects
    if not relation_holds_on_grid(a, rel, b):
        a, b = b, a
    if not relation_holds_on_grid(a, rel, b):
        raise ValueError(f"{rel!r} holds neither way between {a.position!r} and {b.position!r}")
    rng = random.Random(seed)
    text = f"{_noun_phrase(a, rng, True, True)} {word} {_noun_phrase(b, rng, True, True)}"
    return _with_background(text, scene, rng, video=False)


def opposite_relation_word(word: str) -> str:
    """The surface form of the opposite relation, in the same construction: "above" -> "below",
    "under" -> "above", "to the left of" -> "to the right of", "right of" -> "left of"."""
    rel = RELATION_OF_WORD[word]
    if rel in ("left of", "right of"):
        return re.sub(r"left|right", lambda m: "right" if m.group() == "left" else "left", word)
    return RELATION_WORDS[OPPOSITE_RELATION[rel]][0]


_RELATION_PHRASE = re.compile(
    r"\b(" + "|".join(sorted(RELATION_OF_WORD, key=len, reverse=True)) + r") (?=an? )(?!an? \w+ background)"
)


def flip_relations(text: str) -> str:
    """``text`` with every relation word of the grammar ("A <word> a B") replaced by its opposite."""
    return _RELATION_PHRASE.sub(lambda m: opposite_relation_word(m.group(1)) + " ", text)


def _with_background(text: str, scene: Scene, rng: random.Random, video: bool) -> str:
    bg = rng.choice(BACKGROUND_PHRASES).format(scene.background)
    return f"{bg}, {text}" if rng.random() < 0.15 else f"{text}, {bg}" if video else f"{text} {bg}"


def _caption(scene: Scene, rng: random.Random, omit: float, relation: float, vertical: float) -> str:
    keep = (lambda: rng.random() >= omit) if omit > 0 else (lambda: True)
    objs = list(scene.objects)
    rng.shuffle(objs)
    video = scene.has_motion
    if video:
        clauses = [_video_clause(o, rng, keep(), keep(), keep()) for o in objs]
        text = _join(clauses, rng, True)
    else:
        nps = [_noun_phrase(o, rng, keep(), keep()) for o in objs]
        use_relation = len(objs) >= 2 and rng.random() < relation
        if use_relation:
            rel = _relation(objs[0], objs[1], rng, vertical)
            pair = f"{nps[0]} {rng.choice(RELATION_WORDS[rel])} {nps[1]}"
            if len(objs) == 3:
                third = nps[2] + (" " + rng.choice(POSITION_PP[objs[2].position]) if keep() else "")
                text = f"{pair} and {third}"
            else:
                text = pair
        else:
            clauses = []
            for o, np_ in zip(objs, nps):
                clauses.append(f"{np_} {rng.choice(POSITION_PP[o.position])}" if keep() else np_)
            if len(objs) == 1 and clauses[0] != nps[0] and rng.random() < 0.25:
                pos = clauses[0][len(nps[0]) + 1 :]
                text = f"{pos}, {nps[0]}"  # "on the left, a red circle"
            else:
                text = _join(clauses, rng, False)
    if keep():
        text = _with_background(text, scene, rng, video)
    return text


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z]+|[,;.]")
_SHAPE_SET = set(SHAPES)
_COLOR_SET = set(COLORS)
_ADJ = _COLOR_SET | set(_SIZE_OF) | set(_PATTERN_OF) | {"polka", "dot"}
_POS_WORDS = {"top", "upper", "bottom", "lower", "left", "right", "center", "centre", "middle"}
_POS_PREP = {"on", "at", "in", "near", "to"}


def _tokens(text: str) -> list[str]:
    text = text.lower().replace("-", " ").replace("grey", "gray").replace("colour", "color")
    text = text.replace("anticlockwise", "counterclockwise").replace("counter clockwise", "counterclockwise")
    return _TOKEN.findall(text)


def _position_at(tok: list[str], i: int) -> tuple[str | None, int]:
    """Parse a position phrase starting at ``tok[i]`` ("on the left", "in the top left corner"...).

    Returns (position, next index) or (None, i).
    """
    j = i
    if j < len(tok) and tok[j] in _POS_PREP:
        j += 1
        if j < len(tok) and tok[j] == "the":
            j += 1
    else:
        return None, i
    vert = horiz = None
    center = False
    while j < len(tok) and tok[j] in _POS_WORDS:
        w = tok[j]
        if w in ("top", "upper"):
            vert = "top"
        elif w in ("bottom", "lower"):
            vert = "bottom"
        elif w in ("left", "right"):
            horiz = w
        else:
            center = True
        j += 1
    if j < len(tok) and tok[j] == "of":  # "to the left of": a relation, not a position
        return None, i
    if not (vert or horiz or center):
        return None, i
    if j < len(tok) and tok[j] in ("corner", "side", "edge"):
        j += 1
    if vert and horiz:
        pos = f"{vert} {horiz}"
    else:
        pos = vert or horiz or "center"
    return pos, j


def _relation_at(tok: list[str], i: int) -> tuple[str | None, int]:
    w = tok[i]
    if w in ("above", "over"):
        return "above", i + 1
    if w in ("below", "under", "beneath", "underneath"):
        return "below", i + 1
    for start in (i, i + 2):
        # "left of" / "to the left of"
        if start == i + 2 and not (w == "to" and i + 1 < len(tok) and tok[i + 1] == "the"):
            continue
        if start + 1 < len(tok) and tok[start] in ("left", "right") and tok[start + 1] == "of":
            return f"{tok[start]} of", start + 2
    return None, i


def _color_after(tok: list[str], j: int) -> tuple[str | None, int]:
    if j < len(tok) and tok[j] in _COLOR_SET:
        return tok[j], j + 1
    return None, j


def _motion_at(tok: list[str], i: int) -> tuple[ParsedMotion | str | None, int]:
    """Parse a motion clause at ``tok[i]``; returns (motion | "static" | None, next index)."""
    w = tok[i]
    nxt = tok[i + 1] if i + 1 < len(tok) else ""
    if w in ("moves", "slides", "drifts", "goes", "travels", "move", "slide"):
        j = i + 1
        if j + 1 < len(tok) and tok[j] == "to" and tok[j + 1] == "the":
            j += 2
        if j < len(tok) and tok[j] in _DIRECTION_OF:
            return ParsedMotion("move", direction=_DIRECTION_OF[tok[j]]), j + 1
        return None, i + 1
    if w in ("grows", "grow", "expands"):
        j = i + 2 if nxt in ("bigger", "larger") else i + 1
        return ParsedMotion("grow"), j
    if w in ("shrinks", "shrink"):
        return ParsedMotion("shrink"), i + 1
    if w in ("gets", "becomes") and nxt in ("bigger", "larger"):
        return ParsedMotion("grow"), i + 2
    if w in ("gets", "becomes") and nxt == "smaller":
        return ParsedMotion("shrink"), i + 2
    if w in ("rotates", "spins", "rotate", "spin") or (w == "turns" and nxt == "around"):
        j = i + 2 if w == "turns" else i + 1
        if j < len(tok) and tok[j] in ("clockwise", "counterclockwise"):
            return ParsedMotion("rotate", direction=tok[j]), j + 1
        return ParsedMotion("rotate"), j
    if w in ("turns", "becomes") and nxt in _COLOR_SET:
        return ParsedMotion("recolor", to_color=nxt), i + 2
    if w in ("changes", "change"):
        j = i + 1
        frm = None
        if j < len(tok) and tok[j] in ("color", "colors"):
            j += 1
        if j < len(tok) and tok[j] == "from":
            frm, j = _color_after(tok, j + 1)
        if j < len(tok) and tok[j] in ("to", "into"):
            to, j = _color_after(tok, j + 1)
            if to:
                return ParsedMotion("recolor", to_color=to, from_color=frm), j
        return None, i + 1
    if w in ("appears", "appear") or (w == "pops" and nxt == "up"):
        return ParsedMotion("appear"), i + (2 if w == "pops" else 1)
    if w in ("stays", "sits", "remains") and nxt in ("still", "put", "in", "static", "there"):
        return "static", i + (3 if nxt == "in" else 2)
    if w == "does" and nxt == "not" and i + 2 < len(tok) and tok[i + 2] == "move":
        return "static", i + 3
    return None, i + 1


def _find_background(tok: list[str], used: list[bool]) -> str | None:
    bg = None
    for i, w in enumerate(tok):
        if w == "background" and i > 0 and tok[i - 1] in _BG_OF and _BG_OF[tok[i - 1]]:
            bg = _BG_OF[tok[i - 1]]
            used[i - 1] = used[i] = True
            # the article/preposition in front belongs to the phrase too
            k = i - 2
            while k >= 0 and tok[k] in ("a", "an", "the", "on", "against", "over", "with"):
                used[k] = True
                k -= 1
    return bg


def parse_caption(text: str) -> ParsedScene:
    """Parse a caption of the Shapes grammar (or a free prompt in its vocabulary).

    Raises :class:`CaptionError` when the text names no shape.
    """
    tok = _tokens(text)
    used = [False] * len(tok)
    background = _find_background(tok, used)
    nouns = [i for i, w in enumerate(tok) if w in _SHAPE_SET and not used[i]]
    if not nouns:
        raise CaptionError(f"no shape named in {text!r}; name one of: {', '.join(SHAPES)}")
    # adjectives in front of each noun
    spans = []
    for n in nouns:
        j = n - 1
        color = size = pattern = None
        while j >= 0 and tok[j] in _ADJ and not used[j]:
            w = tok[j]
            if w in _COLOR_SET:
                color = color or w
            elif w in _SIZE_OF:
                size = size or _SIZE_OF[w]
            elif w in _PATTERN_OF:
                pattern = pattern or _PATTERN_OF[w]
            elif w == "dot" and j > 0 and tok[j - 1] == "polka":
                pattern = pattern or "dotted"
            j -= 1
        spans.append([j + 1, n + 1, dict(shape=tok[n], color=color, size=size, pattern=pattern)])
    # phrases after each noun, up to the next object's adjectives
    objects: list[dict[str, Any]] = []
    relations: list[tuple[int, str, int]] = []
    for k, (start, end, attrs) in enumerate(spans):
        stop = spans[k + 1][0] if k + 1 < len(spans) else len(tok)
        attrs = dict(attrs, position=None, motions=[], static=False)
        i = end
        # "with stripes" / "with polka dots" / "with a checkered pattern"
        if i < stop and tok[i] == "with" and not used[i]:
            rest = tok[i + 1 : min(stop, i + 5)]
            if "stripes" in rest or "striped" in rest:
                attrs["pattern"] = "striped"
            elif "dots" in rest or "spots" in rest:
                attrs["pattern"] = "dotted"
            elif any(w in rest for w in ("checks", "checkered", "checkerboard")):
                attrs["pattern"] = "checkered"
        while i < stop:
            if used[i]:
                i += 1
                continue
            pos, j = _position_at(tok, i)
            if pos is not None:
                if attrs["position"] is None:
                    attrs["position"] = pos
                i = j
                continue
            rel, j = _relation_at(tok, i)
            if rel is not None:
                if k + 1 < len(spans):
                    relations.append((k, rel, k + 1))
                i = j
                continue
            motion, j = _motion_at(tok, i)
            if motion == "static":
                attrs["static"] = True
            elif motion is not None:
                attrs["motions"].append(motion)
            i = j
        objects.append(attrs)
    # a leading position phrase belongs to the first object: "on the left, a red circle"
    i = 0
    while i < spans[0][0]:
        pos, j = _position_at(tok, i)
        if pos is not None and not used[i]:
            if objects[0]["position"] is None:
                objects[0]["position"] = pos
            i = j
        else:
            i += 1
    parsed = tuple(
        ParsedObject(
            shape=o["shape"],
            color=o["color"],
            size=o["size"],
            position=o["position"],
            pattern=o["pattern"],
            motions=tuple(o["motions"]),
            static=o["static"],
        )
        for o in objects
    )
    return ParsedScene(objects=parsed, background=background, relations=tuple(relations))


def check_vocabulary() -> None:
    """Every canonical value has surface forms (a guard for edits of the tables above; run by the tests)."""
    assert set(POSITION_PP) == set(POSITIONS)
    assert set(PATTERN_ADJ) | {"plain"} == set(PATTERNS)
    assert set(_DIRECTION_OF.values()) == set(DIRECTIONS)
