"""Mesh loading: normalisation, repairs, refinement, and one-line errors for bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from attncraft.errors import AttncraftError, InputError
from attncraft.mesh.io import load_mesh, prepare_mesh, refine_mesh

TRI = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n"


def write(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_load_normalises_to_unit_sphere_at_vertex_mean(tmp_path):
    data = load_mesh(write(tmp_path, "tet.obj", TRI.replace("v 0 0 1", "v 0 0 5")))
    assert np.abs(data.vertices.mean(0)).max() <= 1e-6
    assert abs(np.linalg.norm(data.vertices, axis=1).max() - 1.0) <= 1e-6
    assert data.num_faces == 4 and data.faces.dtype == np.int64
    assert np.allclose(np.linalg.norm(data.normals, axis=1), 1.0, atol=1e-5)


def test_default_mesh_is_procedural():
    data = load_mesh("default")
    assert data.num_vertices == 2304 and "procedural" in data.source
    assert load_mesh(None).num_vertices == 2304


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.obj", "", "empty"),
        ("nan.obj", "v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
        ("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
        ("lines.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nl 1 2 3\n", "no faces"),
        ("flat.obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate"),
        ("garbage.obj", "this is not\na mesh at all\n", "no faces"),
        ("corrupt.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n", "could not read"),
        ("model.fbx", "whatever", "unsupported mesh format"),
    ],
)
def test_bad_meshes_raise_one_line_input_errors(tmp_path, name, content, fragment):
    with pytest.raises(InputError) as info:
        load_mesh(write(tmp_path, name, content))
    message = info.value.one_line()
    assert fragment.lower() in message.lower() and "\n" not in message and "; " in message  # problem; fix


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_mesh(tmp_path / "nope.obj")
    with pytest.raises(InputError, match="folder"):
        load_mesh(tmp_path)
    with pytest.raises(AttncraftError, match="cannot use"):
        load_mesh(42)


def test_array_validation_and_repairs():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [9, 9, 9]], float)
    with pytest.raises(InputError, match="not triangles"):
        prepare_mesh(verts, np.array([[0, 1, 2, 3]]))
    with pytest.raises(InputError, match="do not exist"):
        prepare_mesh(verts, np.array([[0, 1, 7]]))
    data = prepare_mesh(verts, np.array([[0, 1, 2], [0, 0, 1], [0, 2, 3]]))
    assert data.num_faces == 2 and data.num_vertices == 4  # repeated-index face and unused vertex dropped
    assert any("degenerate" in n for n in data.notes) and any("not used" in n for n in data.notes)


def test_vertex_limit_depends_on_device(tmp_path):
    path = write(tmp_path, "tet.obj", TRI)
    with pytest.raises(InputError, match="more than the 3 allowed"):
        load_mesh(path, max_vertices=3)
    assert load_mesh(path, device="cuda", max_vertices=None).num_vertices == 4


def test_refinement_adds_vertices(tmp_path):
    data = load_mesh(write(tmp_path, "tet.obj", TRI))
    split = refine_mesh(data, "split", target_edge=0.5)
    edges = split.vertices[split.faces[:, [0, 1, 2]]] - split.vertices[split.faces[:, [1, 2, 0]]]
    assert split.num_vertices > data.num_vertices and np.linalg.norm(edges, axis=-1).max() <= 0.5 + 1e-6
    sub = refine_mesh(data, "subdivide", subdivisions=2)
    assert sub.num_faces == data.num_faces * 16
    assert load_mesh(write(tmp_path, "t2.obj", TRI), refine="subdivide").num_faces == 16
    with pytest.raises(InputError):
        refine_mesh(data, "magic")


def test_mit30_horse_loads_with_its_counts(mit30):
    path = mit30 / "meshes" / "horse.obj"
    if not path.is_file():
        pytest.skip("horse.obj not in the local MIT-30 copy")
    data = load_mesh(path)
    assert (data.num_vertices, data.num_faces) == (26_906, 53_808)
    assert abs(np.linalg.norm(data.vertices, axis=1).max() - 1) < 1e-6


def test_counts_stated_twice_in_one_object_are_one_count(tmp_path):
    """MeshLab states the counts in its header and again after the records: not a truncation.
    Two objects that each state their counts are summed, and a cut is still found."""
    from attncraft.mesh.io import load_mesh, mesh_file_problems

    body = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n"
    meshlab = tmp_path / "meshlab.obj"
    meshlab.write_text("# Vertices: 4\n# Faces: 2\n" + body + "# 4 vertices, 0 vertices normals\n# 2 faces, 0 coords texture\n")
    assert mesh_file_problems(meshlab, 4, 2) == [] and load_mesh(meshlab).num_faces == 2
    two = tmp_path / "two.obj"
    second = body.replace("f 1 2 3", "f 5 6 7").replace("f 1 2 4", "f 5 6 8")
    two.write_text("o a\n# 4 vertices\n# 2 faces\n" + body + "o b\n# 4 vertices\n# 2 faces\n" + second)
    assert mesh_file_problems(two, 8, 4) == []
    (tmp_path / "cut.obj").write_text(two.read_text().rsplit("f ", 1)[0])
    assert any("declares 4 faces but holds 3" in p for p in mesh_file_problems(tmp_path / "cut.obj", 8, 3))
