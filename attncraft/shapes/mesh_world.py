"""The 3-D side of the Shapes world: painted procedural meshes, their captions and a prompt parser.

What it is: the vocabulary and the seeded descriptions of single painted meshes, the grammar that
captions them ("a red torus", "a blue and white striped sphere", "a cube, green on top and gray
below, on a white background") and the inverse, :func:`parse_mesh_prompt`, which reads the colour,
pattern and background a stylisation prompt asks for (the ground-truth metrics of X-Mesh compare
the stylised mesh with it). Geometry, painting and rendering live in :mod:`attncraft.mesh.procedural`;
this module is pure Python, like :mod:`attncraft.shapes.captions`.

Why it looks like this:

* the **colours and pattern words are the 2-D world's** (the palette of :mod:`attncraft.shapes.palette`,
  ``striped`` / ``dotted`` / ``checkered`` with their synonyms), so one CLIP reads both worlds and a
  2-D prompt ("a red circle on a gray background") still parses to its colour;
* a pattern is drawn either in the colour's **pattern shade** (as in 2-D: "a striped red sphere") or
  in a **second palette colour** ("a red and white striped sphere");
* a **split painting** (one colour on top, another below) is what a half-finished stylisation looks
  like; captioning it differently from a fully painted mesh teaches the CLIP that "a red torus" means
  red all over. ``gray`` is the colour of an unpainted mesh (the style field's prior 0.5 grey);
* **generic nouns** ("object", "mesh") let a prompt ask for a colour without naming a shape, for
  meshes that are none of the six (a horse of MIT-30);
* backgrounds: the 2-D world's four plus ``white`` (X-Mesh renders on white).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Any

from attncraft.shapes.captions import BACKGROUND_PHRASES, PATTERN_ADJ, PATTERN_PP
from attncraft.shapes.palette import BACKGROUND_RGB, COLORS
from attncraft.shapes.world import PATTERNS, SHAPES

__all__ = [
    "MESH_SHAPES", "GENERIC_NOUNS", "VARIANTS", "MESH_BACKGROUNDS", "MESH_BACKGROUND_RGB", "UNPAINTED",
    "UNPAINTED_RGB", "MeshScene", "ParsedMeshPrompt", "sample_mesh_scenes", "caption_mesh_scene",
    "parse_mesh_prompt", "zero_shot_mesh_prompts",
]

MESH_SHAPES: tuple[str, ...] = ("sphere", "torus", "cube", "cone", "cylinder", "capsule")
GENERIC_NOUNS: tuple[str, ...] = ("object", "mesh")
VARIANTS: tuple[str, ...] = ("smooth", "blobby", "bumpy")
VARIANT_WORDS = {"blobby": ("blobby", "lumpy"), "bumpy": ("bumpy", "rough")}
MESH_BACKGROUNDS: tuple[str, ...] = ("white", "gray", "black", "navy", "brown")
MESH_BACKGROUND_RGB: dict[str, tuple[float, float, float]] = {"white": (1.0, 1.0, 1.0), **BACKGROUND_RGB}
"""Named backgrounds (renders jitter them a little, so the CLI's 0.5 gray reads as gray too)."""
UNPAINTED = "gray"
UNPAINTED_RGB = (0.5, 0.5, 0.5)
"""The colour of an unpainted mesh: the X-Mesh style field's prior colour."""

UNPAINTED_WORDS = ("gray", "unpainted")
PATTERN_NOUNS = {"striped": ("stripes",), "dotted": ("dots", "spots"), "checkered": ("checks", "squares")}
TWO_COLOUR_FORMS = ("{c1} and {c2} {adj} {n}", "{n} with {c1} and {c2} {nouns}", "{c1} {n} with {c2} {nouns}")
SHADE_FORMS = ("{adj} {c1} {n}", "{c1} {adj} {n}", "{c1} {n} {pp}")
SPLIT_FORMS = ("{n}, {c1} on top and {c2} below", "{n} that is {c1} on top and {c2} at the bottom",
               "{c1} {n} with a {c2} bottom")
_SHAPE_NOUNS = set(MESH_SHAPES) | set(SHAPES)


@dataclass(frozen=True)
class MeshScene:
    """One painted procedural mesh on a background, and the randomness of its render.

    ``color``: a palette colour or ``gray`` (unpainted). ``pattern`` is drawn in ``color2`` (a palette
    colour) or, when ``color2`` is None, in the colour's pattern shade. ``bottom``: the colour of the
    lower part of a *split* painting (then the pattern is plain). ``variant``: ``smooth``, ``blobby``
    (low-frequency bulges) or ``bumpy`` (fine bumps). ``seed`` drives the geometry noise, the pose,
    the camera, the lighting and the pattern frequencies.
    """

    shape: str
    color: str
    pattern: str = "plain"
    color2: str | None = None
    bottom: str | None = None
    variant: str = "smooth"
    background: str = "white"
    seed: int = 0

    def __post_init__(self) -> None:
        colors = (*COLORS, UNPAINTED)
        checks = ((self.shape, MESH_SHAPES, "shape"), (self.color, colors, "color"), (self.pattern, PATTERNS, "pattern"),
                  (self.variant, VARIANTS, "variant"), (self.background, MESH_BACKGROUNDS, "background"))
        for value, allowed, what in checks:
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
        for value, what in ((self.color2, "color2"), (self.bottom, "bottom")):
            if value is not None and value not in colors:
                raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(colors)}")
        if self.bottom is not None and self.pattern != "plain":
            raise ValueError("a split painting (bottom colour) has no pattern")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("shape", "color", "pattern", "color2", "bottom", "variant", "background", "seed")}


def sample_mesh_scenes(n: int, seed: int = 0, *, patterns: bool = True, two_colour: bool = True, splits: bool = True,
                       unpainted: bool = True, shapes=None, backgrounds=None, variants=None) -> list[MeshScene]:
    """``n`` mesh scenes, deterministically from ``seed`` (the draw is sequential: a prefix property).

    Proportions: 10 % unpainted (gray); of the painted ones 40 % plain, 20 % each pattern; 40 % of the
    patterns in a second colour; 15 % of the plain ones split top/bottom; variants 50 % smooth, 25 %
    each noisy kind. The keyword switches turn parts of the vocabulary off (evaluation splits).
    """
    rng = random.Random(seed)
    shape_set = tuple(shapes) if shapes else MESH_SHAPES
    bg_set = tuple(backgrounds) if backgrounds else MESH_BACKGROUNDS
    variant_set = tuple(variants) if variants else VARIANTS
    bg_weights = [{"white": 0.35, "gray": 0.25, "black": 0.1, "navy": 0.15, "brown": 0.15}[b] for b in bg_set]
    v_weights = [{"smooth": 0.5, "blobby": 0.25, "bumpy": 0.25}[v] for v in variant_set]
    out = []
    for _ in range(n):
        shape = shape_set[int(rng.random() * len(shape_set))]
        variant = rng.choices(variant_set, v_weights)[0]
        background = rng.choices(bg_set, bg_weights)[0]
        pattern, color2, bottom = "plain", None, None
        if unpainted and rng.random() < 0.1:
            color = UNPAINTED
        else:
            color = rng.choice(COLORS)
            if patterns and rng.random() >= 0.4:
                pattern = rng.choice(PATTERNS[1:])
                if two_colour and rng.random() < 0.4:
                    color2 = rng.choice([c for c in COLORS if c != color])
            elif splits and rng.random() < 0.15:
                bottom = rng.choice([c for c in (*COLORS, UNPAINTED) if c != color])
        out.append(MeshScene(shape, color, pattern, color2, bottom, variant, background, rng.randrange(1 << 30)))
    return out


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _colour_word(color: str, rng: random.Random) -> str:
    return rng.choice(UNPAINTED_WORDS) if color == UNPAINTED else color


def caption_mesh_scene(scene: MeshScene, seed: int | None = 0, omit: float = 0.0) -> str:
    """Describe ``scene`` in one phrase, deterministically from ``seed``.

    ``omit`` in [0, 1] drops each optional part with that probability: the background, the shape
    name (a generic noun instead), the variant adjective, and a pattern drawn in the colour's own
    shade. The colours of a split painting and of a two-colour pattern are always stated.
    """
    rng = random.Random(seed)
    keep = (lambda: rng.random() >= omit) if omit > 0 else (lambda: True)
    noun = scene.shape if keep() and rng.random() >= 0.1 else rng.choice(GENERIC_NOUNS)
    if scene.variant != "smooth" and keep():
        noun = f"{rng.choice(VARIANT_WORDS[scene.variant])} {noun}"
    c1 = _colour_word(scene.color, rng)
    if scene.bottom is not None:
        text = rng.choice(SPLIT_FORMS).format(n=noun, c1=c1, c2=_colour_word(scene.bottom, rng))
    elif scene.pattern != "plain" and (scene.color2 is not None or keep()):
        forms = TWO_COLOUR_FORMS if scene.color2 is not None else SHADE_FORMS
        words = dict(n=noun, c1=c1, c2=scene.color2, adj=rng.choice(PATTERN_ADJ[scene.pattern]),
                     nouns=rng.choice(PATTERN_NOUNS[scene.pattern]), pp=rng.choice(PATTERN_PP[scene.pattern]))
        text = rng.choice(forms).format(**words)
    else:
        text = f"{c1} {noun}"
    text = f"{_article(text)} {text}"
    if keep():
        text += (", " if "," in text else " ") + rng.choice(BACKGROUND_PHRASES).format(scene.background)
    return text


def zero_shot_mesh_prompts() -> tuple[list[str], tuple[int, int, int]]:
    """The 8 x 4 x 6 prompts ``"a {pattern} {colour} {shape}"`` ("a red torus" for plain) of the
    zero-shot evaluation, colour-major; and their dimensions."""
    prompts = []
    for c in COLORS:
        for p in PATTERNS:
            for s in MESH_SHAPES:
                prompts.append(f"a {c} {s}" if p == "plain" else f"a {PATTERN_ADJ[p][0]} {c} {s}")
    return prompts, (len(COLORS), len(PATTERNS), len(MESH_SHAPES))


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedMeshPrompt:
    """What a prompt asks of a mesh; ``None`` = not stated. ``shape`` is a 3-D or 2-D shape noun
    (``None`` for a generic noun); ``color`` is a palette colour or ``gray``."""

    shape: str | None = None
    color: str | None = None
    pattern: str | None = None
    color2: str | None = None
    bottom: str | None = None
    background: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("shape", "color", "pattern", "color2", "bottom", "background")}


_TOKEN = re.compile(r"[a-z]+|[,;.]")
_PATTERN_OF = {w: p for p, ws in PATTERN_ADJ.items() for w in ws} | {w: p for p, ws in PATTERN_NOUNS.items() for w in ws}
_PATTERN_OF |= {"stripe": "striped", "dot": "dotted", "polka": "dotted", "check": "checkered", "checkerboard": "checkered"}
_COLOUR_OF = {c: c for c in COLORS} | {w: UNPAINTED for w in UNPAINTED_WORDS} | {"uncolored": UNPAINTED}
_BOTTOM_WORDS = ("below", "bottom", "underneath", "beneath")


def parse_mesh_prompt(text: str) -> ParsedMeshPrompt:
    """Read the colour / pattern / split / background that ``text`` asks for.

    Understands the captions of :func:`caption_mesh_scene` and free prompts in the same vocabulary,
    including the 2-D world's ("a striped red circle on a gray background"). Colour words are taken
    in order: the first is the colour, a second one is the pattern's colour (with a pattern word) or
    the bottom colour of a split painting ("red on top and blue below", "with a blue bottom").
    """
    text = text.lower().replace("-", " ").replace("grey", "gray").replace("colour", "color")
    tok = _TOKEN.findall(text)
    used = [False] * len(tok)
    background = None
    for i, w in enumerate(tok):
        if w == "background" and i > 0 and tok[i - 1] in MESH_BACKGROUND_RGB:
            background = tok[i - 1]
            used[i - 1] = used[i] = True
    shape = next((w for w in tok if w in _SHAPE_NOUNS), None)
    pattern = next((_PATTERN_OF[w] for w in tok if w in _PATTERN_OF), None)
    colours = [(i, _COLOUR_OF[w]) for i, w in enumerate(tok) if w in _COLOUR_OF and not used[i]]
    color = colours[0][1] if colours else None
    color2 = bottom = None
    if len(colours) >= 2:
        second_at, second = colours[1]
        after = tok[second_at + 1: second_at + 4]
        if any(w in _BOTTOM_WORDS for w in after) or ("top" in tok and any(w in _BOTTOM_WORDS for w in tok)):
            bottom = second
        elif pattern is not None:
            color2 = second
    return ParsedMeshPrompt(shape, color, pattern, color2, bottom, background)


def scene_as_parsed(scene: MeshScene) -> ParsedMeshPrompt:
    """The parse a full caption of ``scene`` should give (for tests and the evaluation)."""
    return ParsedMeshPrompt(scene.shape, scene.color, None if scene.pattern == "plain" else scene.pattern,
                            scene.color2, scene.bottom, scene.background)


def with_seed(scene: MeshScene, seed: int) -> MeshScene:
    return replace(scene, seed=seed)
