"""Loading, validating, normalising and refining triangle meshes.

X-Mesh works on the raw vertices of a triangle mesh: the style field predicts one colour and one
displacement per vertex, so the stylisation resolution *is* the vertex resolution. This module turns
whatever the user passes (an OBJ/PLY/GLB/GLTF/OFF/STL file, a trimesh object, or ``"default"``) into
a validated :class:`MeshData` (float32 vertices normalised to the unit bounding sphere, int64
triangle faces), or raises an :class:`~attncraft.errors.InputError` whose one-line message says what
is wrong and how to fix it.

Normalisation follows the reference (``Normalization/Normalizer.py``): centre = **vertex mean** (not
the bounding-box centre), scale = maximum vertex radius, so that afterwards the mean is 0 and the
largest radius is 1.

Refinement: coarse meshes (large triangles) give the style field few degrees of freedom. The
reference advises isotropic remeshing with pymeshlab; pymeshlab is not a dependency here, so
:func:`refine_mesh` splits every edge longer than a target length (trimesh's ``subdivide_to_size``,
which keeps the original vertices and yields near-uniform edge lengths on meshes whose triangles are
large) and can apply plain midpoint subdivision a number of times. If pymeshlab happens to be
importable, ``method="isotropic"`` uses its explicit isotropic remeshing.

trimesh is imported lazily so that the renderer and the field do not depend on it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attncraft.errors import InputError

MESH_EXTENSIONS = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")

DEFAULT_MAX_VERTICES = {"cpu": 200_000, "cuda": 2_000_000, "mps": 500_000}
"""Largest vertex count accepted per device type. The field + TDAM forward/backward alone takes
several seconds per iteration on a 2-core CPU at 27k vertices (spec §6), so CPU runs beyond 200k are
not useful; on a GPU the limit is about memory (10 views x 224^2 renders are independent of V)."""

DEGENERATE_AREA = 1e-12
"""Faces with an area below this (in the units of the normalised mesh) count as degenerate."""


@dataclass
class MeshData:
    """A validated, normalised triangle mesh.

    ``vertices`` (V, 3) float32 in the unit bounding sphere; ``faces`` (F, 3) int64;
    ``normals`` (V, 3) float32 unit area-weighted vertex normals (always recomputed: trimesh does not
    hand back the file's ``vn`` reliably; they are used only by the Text2Mesh field and the reference
    evaluation geometry, and MeshLab's normals are area-weighted too);
    ``source`` describes where it came from; ``notes`` lists repairs applied (e.g. degenerate faces
    removed) so the CLI can report them.
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    source: str = "arrays"
    notes: list[str] = field(default_factory=list)
    center: np.ndarray | None = None
    scale: float = 1.0

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to_trimesh(self, colors: np.ndarray | None = None) -> Any:
        import trimesh

        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        if colors is not None:
            mesh.visual.vertex_colors = colors_to_uint8(colors)
        return mesh


def colors_to_uint8(colors: np.ndarray) -> np.ndarray:
    """(V, 3|4) floats in [0, 1] (or uint8) -> (V, 4) uint8 RGBA with opaque alpha."""
    colors = np.asarray(colors)
    if colors.dtype != np.uint8:
        colors = np.clip(np.rint(np.asarray(colors, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    if colors.shape[1] == 3:
        colors = np.concatenate([colors, np.full((colors.shape[0], 1), 255, np.uint8)], axis=1)
    return colors


def area_weighted_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals as the area-weighted sum of incident face normals (spec decision 9)."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # |cross| = 2 * area
    normals = np.zeros_like(v)
    for k in range(3):
        np.add.at(normals, faces[:, k], cross)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    fallback = np.tile(np.array([[0.0, 0.0, 1.0]]), (len(v), 1))
    normals = np.where(length > 1e-20, normals / np.maximum(length, 1e-30), fallback)
    return normals.astype(np.float32)


def normalize_to_unit_sphere(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the vertex mean and divide by the largest radius; returns (vertices, center, scale)."""
    v = np.asarray(vertices, dtype=np.float64)
    center = v.mean(axis=0)
    v = v - center
    scale = float(np.linalg.norm(v, axis=1).max())
    if not np.isfinite(scale) or scale <= 0.0:
        raise InputError("the mesh has zero extent (all vertices coincide)", "pass a mesh with a non-degenerate shape")
    return (v / scale).astype(np.float32), center.astype(np.float32), scale


def default_mesh() -> Any:
    """The embedded procedural mesh used when no MESH is given: a subdivided torus (2,304 vertices).

    A torus has curvature of both signs, a hole and no natural "front", which makes a readable
    turntable, and it is small enough for CPU demos.
    """
    import trimesh

    # Axis along +x, so the front training view (camera on +x) looks through the hole.
    turn = trimesh.transformations.rotation_matrix(np.pi / 2, [0.0, 1.0, 0.0])
    return trimesh.creation.torus(major_radius=1.0, minor_radius=0.42, major_sections=64, minor_sections=36,
                                  transform=turn)


_OBJ_FACE = re.compile(rb"(?m)^[ \t]*f[ \t]")
_OBJ_VERTEX = re.compile(rb"(?m)^[ \t]*v[ \t]")
_OBJ_SHORT_FACE = re.compile(rb"(?m)^[ \t]*f(?:[ \t]+[^\s]+){0,2}[ \t]*\r?$")
_OBJ_COMMENT = re.compile(rb"(?m)^[ \t]*#[^\n]*")
_OBJ_OBJECT = re.compile(rb"(?m)^[ \t]*o[ \t][^\n]*")
_DECLARED = (re.compile(rb"(?i)(\d[\d,]*)\s+(vertices|verts|faces|triangles|polygons)\b"),
             re.compile(rb"(?i)\b(vertices|verts|faces|triangles|polygons)\s*[:=]\s*(\d[\d,]*)"))
_FACE_WORDS = (b"faces", b"triangles", b"polygons")
_NUMBER = re.compile(rb"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_FACE_REF = re.compile(rb"^-?\d+(/(-?\d+)?){0,2}$")


def _obj_last_record_cut(data: bytes) -> str | None:
    """The last line, if the file stops inside it (no final newline and an incomplete v/f record)."""
    if not data or data.endswith(b"\n"):
        return None
    line = data.rsplit(b"\n", 1)[-1]
    parts = line.split()
    if not parts:
        return None
    kind, values = parts[0], parts[1:]
    if kind == b"f":
        cut = len(values) < 3 or not all(_FACE_REF.match(v) for v in values)
    elif kind in (b"v", b"vn"):
        cut = len(values) < 3 or not all(_NUMBER.match(v) for v in values)
    elif kind == b"vt":
        cut = len(values) < 1 or not all(_NUMBER.match(v) for v in values)
    else:
        cut = False
    return line.decode("utf-8", "replace").strip() if cut else None


def _declared_obj_counts(data: bytes) -> tuple[int | None, int | None]:
    """Vertex and face counts stated in an OBJ's comments (``# 8 vertices``, ``# Faces: 12``); None
    where nothing is stated. Within one object (the text between ``o`` records) a count stated twice
    is one count (MeshLab states each in its header and again after the records), so the largest
    statement counts; the objects' counts are summed."""
    totals: dict[str, int] = {}
    for section in _OBJ_OBJECT.split(data):
        counts: dict[str, int] = {}
        for comment in _OBJ_COMMENT.findall(section):
            for pattern in _DECLARED:
                for match in pattern.finditer(comment):
                    a, b = match.groups()
                    number, word = (a, b) if a[:1].isdigit() else (b, a)
                    kind = "faces" if word.lower() in _FACE_WORDS else "vertices"
                    counts[kind] = max(counts.get(kind, 0), int(number.replace(b",", b"")))
        for kind, number in counts.items():
            totals[kind] = totals.get(kind, 0) + number
    return totals.get("vertices"), totals.get("faces")


def _ply_header_counts(data: bytes) -> tuple[int | None, int | None]:
    end = data.find(b"end_header")
    header = data[: end if end >= 0 else 4096]
    vertex = re.search(rb"(?m)^element\s+vertex\s+(\d+)", header)
    face = re.search(rb"(?m)^element\s+face\s+(\d+)", header)
    return (int(vertex[1]) if vertex else None), (int(face[1]) if face else None)


def _off_header_counts(data: bytes) -> tuple[int | None, int | None]:
    tokens: list[bytes] = []
    for line in data[:4096].splitlines():
        line = line.split(b"#", 1)[0].strip()
        if line:
            tokens += line.split()
        if len(tokens) >= 3:
            break
    if tokens and tokens[0].upper().endswith(b"OFF"):
        tokens = tokens[1:]
    try:
        return int(tokens[0]), int(tokens[1])
    except (IndexError, ValueError):
        return None, None


def mesh_file_problems(path: str | Path, vertices: int, faces: int) -> list[str]:
    """What shows that a mesh file is incomplete, given the ``vertices``/``faces`` a loader read.

    Loaders (trimesh among them) read a truncated OBJ, ASCII PLY or OFF without a word, keeping the
    faces before the cut. Detected here: a file that stops inside a record (OBJ), face records with
    fewer than three corners (OBJ), fewer vertices or faces than the file declares (PLY/OFF headers,
    the counts some OBJ exporters write in comments, a binary STL's triangle count), and face
    records the loader could not use. A cut exactly between two records of a file that declares no
    counts cannot be detected (attncraft's own OBJ exports declare their counts).
    """
    path = Path(path)
    ext = path.suffix.lower()
    data = path.read_bytes()
    problems: list[str] = []

    def fewer(kind: str, declared: int | None, found: int) -> None:
        if declared is not None and found < declared:
            problems.append(f"it declares {declared:,} {kind} but holds {found:,}")

    if ext == ".obj":
        cut = _obj_last_record_cut(data)
        if cut is not None:
            problems.append(f"it ends inside a record (last line {cut[:40]!r})")
        records = len(_OBJ_FACE.findall(data))
        short = len(_OBJ_SHORT_FACE.findall(data)) - (1 if cut is not None and cut.split()[0] == "f" else 0)
        if short > 0:
            problems.append(f"{short:,} face record{' has' if short == 1 else 's have'} fewer than 3 corners")
        declared_v, declared_f = _declared_obj_counts(data)
        fewer("vertices", declared_v, len(_OBJ_VERTEX.findall(data)))
        fewer("faces", declared_f, records)
        usable = records - short - (1 if cut is not None and cut.split()[0] == "f" else 0)
        if not problems and faces < usable:
            problems.append(f"only {faces:,} of its {usable:,} faces could be read")
    elif ext == ".ply":
        declared_v, declared_f = _ply_header_counts(data)
        fewer("vertices", declared_v, vertices)
        fewer("faces", declared_f, faces)
    elif ext == ".off":
        declared_v, declared_f = _off_header_counts(data)
        fewer("vertices", declared_v, vertices)
        fewer("faces", declared_f, faces)
    elif ext == ".stl":
        declared = int.from_bytes(data[80:84], "little") if len(data) >= 84 else None
        binary = declared is not None and len(data) == 84 + 50 * declared
        if not binary and data[:5].lower() == b"solid" and b"facet" in data[:4096]:  # ASCII STL
            if b"endsolid" not in data[-512:]:
                problems.append("it has no 'endsolid' line")
        elif declared is not None:
            fewer("triangles", declared, (len(data) - 84) // 50)
    return problems


def _load_trimesh(path: Path, allow_partial: bool = False) -> tuple[Any, list[str]]:
    """The trimesh of ``path`` and notes on what was dropped (an incomplete file is an error unless
    ``allow_partial``)."""
    import trimesh

    if not path.exists():
        raise InputError(f"the mesh file {str(path)!r} does not exist", "check the path, or pass 'default' for the built-in mesh")
    if path.is_dir():
        raise InputError(f"mesh path is a folder, not a file: {path}", "pass a .obj/.ply/.glb/.off file")
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise InputError(
            f"unsupported mesh format {ext or '(no extension)'!r} for {path.name}",
            f"convert it to one of {', '.join(MESH_EXTENSIONS)}",
        )
    if path.stat().st_size == 0:
        raise InputError(f"mesh file is empty: {path}", "re-export the mesh; the file has 0 bytes")
    logging.getLogger("trimesh").setLevel(logging.ERROR)
    try:
        loaded = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many unrelated types on bad files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"could not read mesh {path.name} ({type(exc).__name__}: {reason[:160]})",
                         "the file is corrupt or not a mesh; re-export it as a triangle OBJ or PLY") from exc
    if not hasattr(loaded, "faces") or not hasattr(loaded, "vertices"):
        raise InputError(f"{path.name} contains no triangle surface (got {type(loaded).__name__})",
                         "pass a surface mesh with faces, not a point cloud or curves")
    problems = mesh_file_problems(path, len(loaded.vertices), len(loaded.faces))
    if problems and not allow_partial:
        usable = f", or pass --allow-partial to use the {len(loaded.faces):,} faces that could be read" if len(loaded.faces) else ""
        raise InputError(f"the mesh file {path.name} looks truncated or damaged: {'; '.join(problems)}", f"re-export it{usable}")
    notes = [f"incomplete file ({'; '.join(problems)}): using the {len(loaded.faces):,} faces that could be read"] if problems else []
    return loaded, notes


def validate_arrays(vertices: Any, faces: Any, name: str = "mesh") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check raw arrays and repair what is safe to repair; raise :class:`InputError` otherwise.

    Errors: no vertices, no faces, faces that are not triangles, indices out of range, non-finite
    coordinates, or no non-degenerate face at all. Repairs (reported in the returned notes): faces
    with a repeated vertex index or (near-)zero area are dropped, since they carry no surface and
    would only produce zero-area triangles in the rasteriser.
    """
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if f.size == 0 or f.shape[0] == 0:
        raise InputError(f"{name} has no faces (it is empty, a point cloud or only lines)",
                         "pass a surface mesh with triangle faces")
    if v.size == 0 or v.ndim != 2 or v.shape[0] == 0:
        raise InputError(f"{name} has no vertices", "pass a non-empty triangle mesh")
    if v.shape[1] != 3:
        raise InputError(f"{name} vertices have {v.shape[1]} coordinates, expected 3", "pass 3-D vertices")
    if f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"{name} faces are not triangles (faces have {f.shape[-1] if f.ndim == 2 else '?'} corners)",
                         "triangulate the mesh first (e.g. trimesh or MeshLab 'Triangulate')")
    if not np.issubdtype(f.dtype, np.integer):
        raise InputError(f"{name} face indices are not integers", "pass integer vertex indices")
    v = v.astype(np.float64)
    f = f.astype(np.int64)
    bad = ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise InputError(f"{name} has {int(bad.sum())} vertices with NaN or infinite coordinates",
                         "repair the mesh (remove or fix those vertices) and retry")
    if f.min() < 0 or f.max() >= v.shape[0]:
        raise InputError(f"{name} faces reference vertices that do not exist (index {int(f.max())} >= {v.shape[0]})",
                         "the file is corrupt; re-export the mesh")
    notes: list[str] = []
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    tri = v[f]
    extent = float(np.linalg.norm(v - v.mean(axis=0), axis=1).max()) or 1.0
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1) / extent**2
    degenerate = repeated | (area < DEGENERATE_AREA)
    if degenerate.all():
        raise InputError(f"all {len(f)} faces of {name} are degenerate (zero area or repeated vertices)",
                         "pass a mesh with a real surface")
    if degenerate.any():
        notes.append(f"removed {int(degenerate.sum())} degenerate faces (zero area or repeated vertices)")
        f = f[~degenerate]
    return v, f, notes


def prepare_mesh(
    vertices: Any,
    faces: Any,
    *,
    normals: Any | None = None,
    name: str = "mesh",
    source: str = "arrays",
    device: str = "cpu",
    max_vertices: int | None = None,
    drop_unreferenced: bool = True,
) -> MeshData:
    """Validate, drop unreferenced vertices, check the size limit and normalise to the unit sphere."""
    v, f, notes = validate_arrays(vertices, faces, name)
    n = None if normals is None else np.asarray(normals, dtype=np.float64)
    if drop_unreferenced:
        used = np.zeros(len(v), bool)
        used[f.ravel()] = True
        if not used.all():
            remap = np.cumsum(used) - 1
            notes.append(f"removed {int((~used).sum())} vertices not used by any face")
            v, f = v[used], remap[f]
            if n is not None and len(n) == len(used):
                n = n[used]
    limit = max_vertices if max_vertices is not None else DEFAULT_MAX_VERTICES.get(str(device).split(":")[0], 2_000_000)
    if len(v) > limit:
        raise InputError(
            f"{name} has {len(v):,} vertices, more than the {limit:,} allowed on device {device}",
            "decimate the mesh, use a GPU (--device cuda), or raise the limit with --max-vertices",
        )
    unit, center, scale = normalize_to_unit_sphere(v)
    if n is None or n.shape != v.shape or not np.isfinite(n).all():
        normals_out = area_weighted_normals(unit, f)
    else:
        length = np.linalg.norm(n, axis=1, keepdims=True)
        normals_out = np.where(length > 1e-12, n / np.maximum(length, 1e-12), area_weighted_normals(unit, f))
        normals_out = normals_out.astype(np.float32)
    return MeshData(unit, f, normals_out, source=source, notes=notes, center=center, scale=scale)


def load_mesh(
    mesh: Any = "default",
    *,
    device: str = "cpu",
    max_vertices: int | None = None,
    refine: str | None = None,
    target_edge: float | None = None,
    subdivisions: int = 1,
    allow_partial: bool = False,
) -> MeshData:
    """Load ``mesh`` (a path, ``"default"``/``None``, a ``trimesh.Trimesh`` or a :class:`MeshData`).

    ``refine``: ``None`` (reference behaviour: no remeshing), ``"split"`` (split edges longer than
    ``target_edge``, default 0.03 of the unit sphere), ``"subdivide"`` (``subdivisions`` rounds of
    midpoint subdivision) or ``"isotropic"`` (pymeshlab, if installed). Refinement happens after
    normalisation and before the vertex limit is checked again. A file that looks truncated
    (:func:`mesh_file_problems`) is an error unless ``allow_partial``; then what was dropped is noted.
    """
    if isinstance(mesh, MeshData):
        data = mesh
    else:
        if mesh is None or (isinstance(mesh, str) and mesh.strip().lower() == "default"):
            tm, name, source, file_notes = default_mesh(), "default mesh", "default (procedural torus)", []
        elif isinstance(mesh, (str, Path)):
            path = Path(mesh).expanduser()
            (tm, file_notes), name, source = _load_trimesh(path, allow_partial), path.name, str(path)
        elif hasattr(mesh, "vertices") and hasattr(mesh, "faces"):
            tm, name, source, file_notes = mesh, "mesh", "trimesh object", []
        else:
            raise InputError(f"cannot use {type(mesh).__name__} as a mesh", "pass a file path, 'default' or a trimesh.Trimesh")
        data = prepare_mesh(np.asarray(tm.vertices), np.asarray(tm.faces), name=name,
                            source=source, device=device, max_vertices=max_vertices if refine is None else 10**12)
        data.notes[:0] = file_notes
    if refine:
        data = refine_mesh(data, method=refine, target_edge=target_edge, subdivisions=subdivisions)
        data = prepare_mesh(data.vertices, data.faces, name="refined mesh", source=data.source + f" (refined: {refine})",
                            device=device, max_vertices=max_vertices)
    return data


def refine_mesh(data: MeshData, method: str = "split", target_edge: float | None = None, subdivisions: int = 1) -> MeshData:
    """Refine a coarse mesh so the style field has enough vertices (see module docstring)."""
    import trimesh

    v, f = data.vertices.astype(np.float64), data.faces
    if method == "split":
        edge = 0.03 if target_edge is None else float(target_edge)
        if edge <= 0:
            raise InputError(f"target edge length must be positive, got {edge}", "pass e.g. --target-edge 0.03")
        try:
            v, f = trimesh.remesh.subdivide_to_size(v, f, max_edge=edge, max_iter=20)
        except ValueError as exc:
            raise InputError(f"edge splitting did not converge at target edge {edge}",
                             "pass a larger --target-edge") from exc
    elif method == "subdivide":
        if subdivisions < 0 or subdivisions > 6:
            raise InputError(f"subdivisions must be in 0..6, got {subdivisions}", "pass a smaller --subdivisions")
        for _ in range(subdivisions):
            v, f = trimesh.remesh.subdivide(v, f)
    elif method == "isotropic":
        try:
            import pymeshlab  # type: ignore[import-not-found]
        except ImportError as exc:
            raise InputError("isotropic remeshing needs pymeshlab, which is not installed",
                             "pip install pymeshlab, or use --refine split") from exc
        ms = pymeshlab.MeshSet()
        ms.add_mesh(pymeshlab.Mesh(v, f))
        kwargs = {} if target_edge is None else {"targetlen": pymeshlab.PureValue(float(target_edge))}
        ms.meshing_isotropic_explicit_remeshing(**kwargs)
        out = ms.current_mesh()
        v, f = out.vertex_matrix(), out.face_matrix()
    else:
        raise InputError(f"unknown refinement method {method!r}", "pass split, subdivide or isotropic")
    return MeshData(np.asarray(v, np.float32), np.asarray(f, np.int64), area_weighted_normals(v, f),
                    source=data.source, notes=list(data.notes))
