"""Fixtures of the CTGM tests."""

from __future__ import annotations

import pytest

import tiny_models as tm


@pytest.fixture(scope="module")
def unet():
    return tm.motion_unet().eval()


@pytest.fixture(scope="module")
def pipe():
    return tm.animatediff_pipeline()
