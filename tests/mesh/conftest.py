"""Fixtures for the X-Mesh tests: tiny meshes, a tiny random CLIP, and the local MIT-30 folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def mit30_dir() -> Path | None:
    env = os.environ.get("ATTNCRAFT_MIT30")
    folder = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "mit30"
    return folder if (folder / "prompts").is_dir() else None


@pytest.fixture(scope="session")
def mit30() -> Path:
    folder = mit30_dir()
    if folder is None:
        pytest.skip("MIT-30 data not found (set ATTNCRAFT_MIT30 or place it at ../shared/data/mit30)")
    return folder


@pytest.fixture(scope="session")
def test_guide():
    """A frozen random CLIP with 32x32 images (``random:test``) on the CPU."""
    import torch

    from attncraft.mesh.clip_guidance import ClipGuide, load_clip

    model, tok, label = load_clip("random:test", torch.device("cpu"))
    return ClipGuide(model, tok, label)


@pytest.fixture()
def sphere_mesh():
    import trimesh

    from attncraft.mesh.io import load_mesh

    return load_mesh(trimesh.creation.icosphere(subdivisions=1))  # 42 vertices, 80 faces


@pytest.fixture()
def tiny_settings():
    """Small but complete X-Mesh settings: every loss term, 2 views at 32 px, a narrow field."""
    from attncraft.mesh.stylize import StylizeSettings

    return StylizeSettings(iterations=2, views=2, resolution=32, width=32, n_normaugs=2, n_geoaugs=2)
