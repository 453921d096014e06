"""The reader agrees with the eye on a committed set of images (``tests/shapes/regression``).

24 images of the shipped Shapes SD (17 that show their prompt, 7 that do not: a relation drawn the
wrong way, a pattern on the wrong object, stripes for polka dots, an extra object), 8 world renders
(clean, blurred, resized, JPEG 75 and 50, one against a prompt with the wrong shape) and two canvases
made to fool a reader (solid red; red and blue halves). ``expected.json`` records, per image, the
prompt, where the image came from, what the eye saw, whether it passes (every stated attribute of
every object and every stated relation right) and, for a failure, which score keys must be below 1. ``readings.json`` records what the reader saw in
each image (objects' attributes, refused regions and their reasons), so that a change of the reader's
behaviour on any of them shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attncraft.shapes.reader import read_images
from attncraft.shapes.scoring import score_image

HERE = Path(__file__).parent / "regression"
CASES = json.loads((HERE / "expected.json").read_text())["cases"]


def _passes(scores) -> bool:
    return scores.get("objects", 0.0) == 1.0 and scores.get("relation", 1.0) == 1.0 and scores["plausible"] == 1.0


@pytest.fixture(scope="module")
def verdicts():
    images = [np.asarray(Image.open(HERE / c["file"]).convert("RGB")) for c in CASES]
    return [score_image(None, c["prompt"], read=r) for c, r in zip(CASES, read_images(images))]


def test_the_set_is_what_it_says():
    assert len(CASES) == 34
    assert sum(c["passes"] for c in CASES) == 24 and sum(c["file"].startswith("sd_") for c in CASES) == 24
    for c in CASES:
        with Image.open(HERE / c["file"]) as im:
            assert im.size == (64, 64), c["file"]
        assert c["passes"] == (not c["fails"]), c["file"]


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c["file"] for c in CASES])
def test_reader_gives_the_verdict_of_the_eye(verdicts, i):
    case, scores = CASES[i], verdicts[i]
    assert _passes(scores) == case["passes"], (case["prompt"], case["seen"], dict(scores), scores.reasons)
    for key in case["fails"]:
        assert scores[key] < 1.0, (key, case["seen"], dict(scores))
    if "plausible" in case["fails"]:
        assert scores.reasons, "a rejected image says why"
    else:
        assert scores["plausible"] == 1.0 and not scores.reasons, scores.reasons


def _reading(scene) -> dict:
    """What the reader saw, without the float geometry: the background, each object's attributes
    (largest first), and each refused region's colour and reasons."""
    return {
        "background": scene.background,
        "objects": [[o.color, o.shape, o.size, o.position, o.pattern] for o in scene.objects],
        "rejected": [[r.color, r.reasons] for r in scene.rejected],
        "issues": list(scene.issues),
    }


def test_the_reader_reads_the_set_as_it_did():
    """``readings.json`` holds the reading of every image by the reader the published measurements
    used (written with ``_reading(read_images(...))`` of this module); any change of the reader that
    changes one of them changes those measurements, and must be deliberate."""
    images = [np.asarray(Image.open(HERE / c["file"]).convert("RGB")) for c in CASES]
    recorded = json.loads((HERE / "readings.json").read_text())
    assert set(recorded) == {c["file"] for c in CASES}
    for c, scene in zip(CASES, read_images(images)):
        assert _reading(scene) == recorded[c["file"]], c["file"]
