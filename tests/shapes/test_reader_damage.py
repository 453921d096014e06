"""The reader under mild damage, and against canvases made to fool it.

* Clean world renders are read exactly (every attribute of every object, the background, and no
  region refused); under Gaussian blur of radius 1, JPEG quality 75 and resizing 64 -> 48 -> 64
  (bicubic, bilinear) at least 97 % of them are still read exactly. JPEG 50's target (90 %) is
  stated on 500 renders, and 100 are too few to tell 90 % from 93 % (89 % of the first 100 here,
  90.2 % of all 500 of this seed, 91.6 % and 93.2 % on two other seeds' 500): it is checked on 500
  renders of its own, with a floor of 85 % on the first 100 beside the other damages. The misses are
  mostly shapes of small objects whose colour differs from the background in chroma far more than in
  luma (purple, red or blue on gray, blue on brown) and JPEG images that show too little evidence of
  their compression for the reader's JPEG step. Softness alone never makes a render implausible.
* A canvas that is no scene of the world (one colour, two halves, quadrants, a band, a ring, a
  region too big, shapes like none of the world's, noise, a gradient) is refused: ``plausible`` is 0,
  the reasons say what and why, and ``exact`` is 0 even for the prompt the canvas imitates best.
"""

from __future__ import annotations

import numpy as np
import pytest

from attncraft.shapes.damage import DAMAGES, damage, to_uint8
from attncraft.shapes.palette import BACKGROUND_RGB, COLOR_RGB, COLORS
from attncraft.shapes.reader import read_images
from attncraft.shapes.scoring import score_image
from attncraft.shapes.world import Scene, SceneObject, render_scenes, sample_scenes

N_RENDERS = 100
TARGET = {"clean": 1.0, "blur1": 0.97, "jpeg75": 0.97, "resize": 0.97, "resize-bilinear": 0.97, "jpeg50": 0.90}
"""Least share of renders read exactly under each damage (the reader's robustness targets)."""
FLOOR = {"jpeg50": 0.85}
"""Where 100 renders cannot check the target: the least share of them the reader must keep (it was
27.5 % at JPEG 50 before the reader was made robust, 75 % before its JPEG step)."""


@pytest.fixture(scope="module")
def clean_renders():
    scenes = sample_scenes(N_RENDERS, seed=41)
    return scenes, [to_uint8(t) for t in render_scenes(scenes, size=64).images]


def test_damages_are_what_they_say(clean_renders):
    _, images = clean_renders
    a = images[0]
    assert set(DAMAGES) == set(TARGET)
    assert np.array_equal(damage(a, "clean"), a)
    for name in DAMAGES:
        out = damage(a, name)
        assert out.dtype == np.uint8 and out.shape == a.shape, name
        if name != "clean":
            assert np.abs(out.astype(int) - a).mean() > 0.3, name  # it really is damaged
    with pytest.raises(ValueError, match="unknown damage"):
        damage(a, "sharpen")


@pytest.fixture(scope="module")
def damaged_scores(clean_renders):
    scenes, images = clean_renders
    out = {}
    for name in TARGET:
        reads = read_images([DAMAGES[name](a) for a in images])
        out[name] = [score_image(None, s, read=r) for s, r in zip(scenes, reads)]
    return out


def _exact(rows) -> tuple[float, list]:
    missed = [(i, {k: v for k, v in r.items() if v < 1}, r.reasons) for i, r in enumerate(rows) if r["exact"] < 1]
    return float(np.mean([r["exact"] for r in rows])), missed[:5]


@pytest.mark.slow  # 600 readings
@pytest.mark.parametrize("name", [n for n in TARGET if n not in FLOOR])
def test_damaged_renders_are_read_exactly(damaged_scores, name):
    exact, missed = _exact(damaged_scores[name])
    assert exact >= TARGET[name], (name, exact, missed)


@pytest.mark.slow  # 600 readings
@pytest.mark.parametrize("name", list(FLOOR))
def test_jpeg_renders_keep_their_floor(damaged_scores, name):
    exact, missed = _exact(damaged_scores[name])
    assert exact >= FLOOR[name], (name, exact, missed)


TARGET_RENDERS = 500
"""Renders on which a target is stated (the reader's robustness targets are shares of 500 renders)."""


@pytest.mark.slow  # 500 JPEG readings, about 25 s
@pytest.mark.parametrize("name", list(FLOOR))
def test_jpeg_renders_meet_the_target_on_500_renders(name):
    scenes = sample_scenes(TARGET_RENDERS, seed=41)  # the first 100 are the renders above
    images = [to_uint8(t) for t in render_scenes(scenes, size=64).images]
    reads = read_images([DAMAGES[name](a) for a in images])
    exact, missed = _exact([score_image(None, s, read=r) for s, r in zip(scenes, reads)])
    assert exact >= TARGET[name], (name, exact, missed)


@pytest.mark.slow  # 600 readings
def test_softness_alone_never_makes_a_render_implausible(damaged_scores):
    for name, rows in damaged_scores.items():
        assert all(r["plausible"] == 1.0 and not r.reasons for r in rows), (name, [r.reasons for r in rows if r.reasons][:3])


# --------------------------------------------------------------------------------------------------
# canvases made to fool the reader
# --------------------------------------------------------------------------------------------------

S = 64
_YY, _XX = np.mgrid[0:S, 0:S] + 0.5
_R = np.hypot(_XX - S / 2, _YY - S / 2)
RED, BLUE, GRAY = COLOR_RGB["red"], COLOR_RGB["blue"], BACKGROUND_RGB["gray"]


def _canvas(rgb) -> np.ndarray:
    return np.tile(np.array(rgb, dtype=np.float32), (S, S, 1))


def _paint(base, where, rgb) -> np.ndarray:
    out = _canvas(base) if not isinstance(base, np.ndarray) else base.copy()
    out[where] = rgb
    return out


def _fools():
    """(id, image, the prompt it imitates, what a reason must say)."""
    cases = [(f"solid-{c}", _canvas(COLOR_RGB[c]), f"a big {c} square in the center", "fills 100 %") for c in COLORS]
    quadrants = _paint(_paint(_paint(_canvas(RED), (_YY < 32) & (_XX > 32), BLUE), (_YY > 32) & (_XX < 32), COLOR_RGB["green"]),
                       (_YY > 32) & (_XX > 32), COLOR_RGB["yellow"])  # fmt: skip
    gradient = np.stack([np.tile(np.linspace(0, 1, S), (S, 1)), np.zeros((S, S)), np.tile(np.linspace(1, 0, S), (S, 1))], -1)
    scene = to_uint8(render_scenes([Scene((SceneObject("circle", "green", "big", "left"),), "gray")]).images[0])
    cases += [
        ("halves-left-right", _paint(RED, _XX > 32, BLUE), "a red heart on the left and a blue heart on the right", "fills 50 %"),
        ("halves-top-bottom", _paint(RED, _YY > 32, BLUE), "a red square above a blue square", "fills 50 %"),
        ("half-on-background", _paint(GRAY, _XX < 32, RED), "a big red square on the left on a gray background", "cut by the canvas edge"),
        ("quadrants", quadrants, "a red square at the top left and a blue square at the top right", "fills 25 %"),
        ("band", _paint(GRAY, np.abs(_YY - 32) < 6, RED), "a big red square in the center on a gray background", "spans 100 %"),
        ("ring", _paint(GRAY, (_R < 10) & (_R > 6), RED), "a big red circle in the center on a gray background", "has a hole"),
        ("oversized-circle", _paint(GRAY, _R < 12, RED), "a big red circle in the center on a gray background", "fills 11 %"),
        ("L", _paint(GRAY, (np.abs(_XX - 32) < 10) & (np.abs(_YY - 32) < 10) & ~((_XX > 28) & (_YY < 36)), RED),
         "a big red square in the center on a gray background", "matches no shape"),  # fmt: skip
        ("crescent", _paint(GRAY, (_R < 9) & ~(np.hypot(_XX - 37, _YY - 30) < 8), RED),
         "a big red circle in the center on a gray background", "matches no shape"),  # fmt: skip
        ("bar", _paint(GRAY, (np.abs(_XX - 32) < 14) & (np.abs(_YY - 32) < 3), RED),
         "a big red square in the center on a gray background", "matches no shape"),  # fmt: skip
        ("noise", np.random.default_rng(0).random((S, S, 3)), "a big red square in the center", "of the canvas is background"),
        ("gradient", gradient, "a red square on the left and a blue square on the right", "of the canvas is background"),
        ("scene-and-a-strip", _paint(scene.astype(np.float32) / 255, _XX > 54, RED),
         "a big green circle on the left on a gray background", "cut by the canvas edge"),  # fmt: skip
    ]
    return cases


FOOLS = _fools()


@pytest.mark.parametrize("image, prompt, reason", [c[1:] for c in FOOLS], ids=[c[0] for c in FOOLS])
def test_fooling_canvases_are_refused_with_a_reason(image, prompt, reason):
    scores = score_image(image, prompt)
    assert scores["plausible"] == 0.0 and scores["exact"] == 0.0, (dict(scores), scores.reasons)
    assert any(reason in r for r in scores.reasons), scores.reasons
    assert all(isinstance(v, float) for v in scores.values())  # the mapping stays floats only
    assert scores.rejected or "background" in reason


def test_a_refusal_names_the_region():
    scores = score_image(_paint(RED, _XX > 32, BLUE), "a red heart on the left and a blue heart on the right")
    rejected = {r["color"]: r for r in scores.rejected}
    assert set(rejected) == {"red", "blue"}
    assert rejected["red"]["x"] == pytest.approx(0.25) and rejected["blue"]["x"] == pytest.approx(0.75)
    assert rejected["red"]["area"] == rejected["blue"]["area"] == S * S // 2
    assert scores["count"] == 0.0  # the halves are not taken for the two hearts


def test_an_empty_background_is_a_scene_without_objects():
    """A canvas of a background colour is plausible (an empty scene) and matches no prompt object."""
    scores = score_image(_canvas(GRAY), "a big gray square in the center on a gray background")
    assert scores["plausible"] == 1.0 and not scores.reasons
    assert scores["count"] == 0.0 and scores["exact"] == 0.0
