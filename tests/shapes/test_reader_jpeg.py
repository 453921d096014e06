"""The reader's JPEG step (step 7 of :mod:`attncraft.shapes.reader`) leaves every other image alone.

* ``regression/clean_renders.json`` holds the full reading (``ReadScene.to_dict``: every attribute,
  position, radius, angle, area and shape IoU of every object) of 100 held-out clean world renders
  (seed 43), written by the reader before it had a JPEG step; the reader must still read them exactly
  so, since every published measurement was read by that reader.
* :func:`jpeg_quality` finds no JPEG in clean, blurred or resized renders, and finds the quality of
  JPEG 75 and 50 renders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attncraft.shapes.damage import DAMAGES, to_uint8
from attncraft.shapes.reader import jpeg_quality, read_images
from attncraft.shapes.world import render_scenes, sample_scenes

RECORDED = json.loads((Path(__file__).parent / "regression" / "clean_renders.json").read_text())


@pytest.fixture(scope="module")
def renders():
    scenes = sample_scenes(len(RECORDED["readings"]), seed=RECORDED["seed"])
    return [to_uint8(t) for t in render_scenes(scenes, size=64).images]


def test_clean_renders_are_read_as_before(renders):
    reads = read_images(renders)
    for i, (scene, recorded) in enumerate(zip(reads, RECORDED["readings"])):
        assert scene.to_dict() == recorded, i


@pytest.mark.parametrize("name", ["clean", "blur1", "resize", "resize-bilinear"])
def test_no_jpeg_is_seen_where_there_is_none(renders, name):
    assert [jpeg_quality(DAMAGES[name](a)) for a in renders[:30]] == [None] * 30


@pytest.mark.parametrize("name, quality", [("jpeg75", 75), ("jpeg50", 50)])
def test_the_quality_of_a_jpeg_is_found(renders, name, quality):
    """About 90 % of JPEG 75 and 50 renders show their quality (500 renders); the rest are read
    without the JPEG step."""
    found = [jpeg_quality(DAMAGES[name](a)) for a in renders[:30]]
    assert found.count(quality) >= 24, found
