"""Exports round-trip through trimesh with their colours; videos and the contact sheet are written."""

from __future__ import annotations

import numpy as np
import pytest

from attncraft.mesh.exports import export_mesh, save_contact_sheet, save_turntable


@pytest.fixture()
def coloured():
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=1)
    colors = np.random.default_rng(0).random((len(mesh.vertices), 3)).astype(np.float32)
    return mesh.vertices.astype(np.float32), mesh.faces, colors


@pytest.mark.parametrize("ext", ["glb", "ply", "obj"])
def test_mesh_exports_round_trip_with_colours(tmp_path, coloured, ext):
    import trimesh

    verts, faces, colors = coloured
    path = export_mesh(tmp_path / f"m.{ext}", verts, faces, colors)
    back = trimesh.load(str(path), force="mesh", process=False)
    assert back.vertices.shape == verts.shape and back.faces.shape == faces.shape
    assert np.abs(back.vertices - verts).max() < 1e-5
    got = np.asarray(back.visual.vertex_colors)[:, :3].astype(int)
    assert np.abs(got - np.rint(colors * 255).astype(int)).max() <= 1
    assert not list(tmp_path.glob(".m.*"))  # no temporary file left behind
    if ext == "obj":
        text = path.read_text()
        assert "\nvn " in text and len(text.split("\nv ")[1].split()) == 6  # v x y z r g b


def test_turntable_and_contact_sheet(tmp_path, coloured):
    from PIL import Image

    from attncraft.outputs import read_png_settings

    verts, faces, colors = coloured
    gif = save_turntable(tmp_path / "t.gif", verts, faces, colors, frames=4, resolution=32)
    with Image.open(gif) as im:
        assert im.n_frames == 4
    mp4 = save_turntable(tmp_path / "t.mp4", verts, faces, colors, frames=4, resolution=32)
    assert mp4.stat().st_size > 0
    sheet = save_contact_sheet(tmp_path / "s.png", verts, faces, colors, {"prompt": "x"}, resolution=16)
    with Image.open(sheet) as im:
        assert im.size == (8 * 18 + 2, 3 * 18 + 2)
    assert read_png_settings(sheet)["prompt"] == "x"
