"""Writing stylisation results: coloured meshes, a turntable video, a contact sheet and a sidecar.

* Meshes with per-vertex colours: GLB (``COLOR_0``), PLY (vertex red/green/blue/alpha) and OBJ with
  ``v x y z r g b`` lines plus ``vn`` normals (the reference's output format, spec §12). All three
  read back through trimesh with their colours.
* Turntable: a full turn of the stylised mesh rendered with the showcase camera (fovy 45 deg, r 2.5),
  as MP4 (H.264 through imageio-ffmpeg) or GIF.
* Contact sheet: the 24 MES views (3 elevations x 8 azimuths) in one PNG, with the settings in a PNG
  text chunk.
* A JSON sidecar beside the GLB with the settings, the CLIP used and the score history.

Every file is published atomically through :func:`attncraft.outputs.unique_output` (never replacing
a file unless ``overwrite``). :func:`save_outputs` writes a whole result into one folder: the CLI
reserves a fresh folder for it (:func:`attncraft.outputs.reserve_dir`), and it refuses to replace
files already there unless ``overwrite``. imageio is imported only when a video is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attncraft.errors import InputError
from attncraft.mesh.camera import EVAL_FOVY, EVAL_RADIUS, make_cameras, mes_views, turntable_views
from attncraft.mesh.io import area_weighted_normals, colors_to_uint8
from attncraft.mesh.renderer import MeshRenderer, TorchRenderer
from attncraft.outputs import prepare_output_dir, save_png_with_settings, unique_output, write_sidecar

MESH_FORMATS = ("glb", "ply", "obj")


def export_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray | None = None,
                overwrite: bool = False) -> Path:
    """Write a (coloured) triangle mesh; the format follows the extension (.glb, .ply, .obj, .off).

    Published under ``path`` or, if that exists and not ``overwrite``, the next free name; returns it.
    OBJ files declare their vertex and face counts in the header, so a truncated copy is detected.
    """
    import trimesh

    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in (*MESH_FORMATS, "off"):
        raise InputError(f"cannot export a mesh as .{ext}", f"use one of {', '.join(MESH_FORMATS)}")
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    if colors is not None:
        mesh.visual.vertex_colors = colors_to_uint8(colors)
    with unique_output(path.parent, path.stem, path.suffix, overwrite=overwrite) as out:
        tmp = out.tmp
        if ext == "obj":
            # Give trimesh the normals so it does not compute them (it logs a traceback without scipy).
            mesh.vertex_normals = area_weighted_normals(vertices, faces)
            text = trimesh.exchange.obj.export_obj(mesh, include_normals=True, include_color=colors is not None,
                                                   include_texture=False,
                                                   header=f"attncraft X-Mesh: {len(vertices)} vertices, {len(faces)} faces")
            tmp.write_text(text)
        else:
            mesh.export(str(tmp), file_type=ext)
    return out.path


@torch.no_grad()
def render_views(vertices, faces, colors, elev, azim, resolution: int = 224, fovy: float = EVAL_FOVY,
                 radius: float = EVAL_RADIUS, renderer: MeshRenderer | None = None, device="cpu",
                 batch: int = 8, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Render views (elev/azim in radians) -> (N, H, W, 3) float images in [0, 1] on the CPU."""
    renderer = renderer or TorchRenderer()
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=device)
    c = None if colors is None else torch.as_tensor(np.asarray(colors), dtype=torch.float32, device=device)
    cams = make_cameras(elev, azim, radius, fovy, device=device)
    out = []
    for start in range(0, len(cams), batch):
        sub = type(cams)(cams.world_to_cam[start:start + batch], cams.fovy, cams.aspect)
        out.append(renderer.render(v, f, c, sub, resolution, background=background).image.float().cpu())
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def contact_sheet(images: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images into one (rows x columns) sheet on a white background."""
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, columns)
        sheet[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[k]
    return sheet


def save_contact_sheet(path, vertices, faces, colors, settings: dict[str, Any], resolution: int = 160,
                       renderer: MeshRenderer | None = None, device="cpu", overwrite: bool = False) -> Path:
    """The 24 MES views (rows: elevation -30, 0, +30 deg; columns: azimuth 0..315 deg) as a PNG."""
    from PIL import Image

    elev, azim = mes_views()
    images = to_uint8(render_views(vertices, faces, colors, elev, azim, resolution, renderer=renderer, device=device))
    return save_png_with_settings(Image.fromarray(contact_sheet(images, columns=8)), path, settings, overwrite=overwrite)


def save_turntable(path, vertices, faces, colors, frames: int = 48, fps: int = 16, resolution: int = 256,
                   elevation_deg: float = 15.0, renderer: MeshRenderer | None = None, device="cpu",
                   overwrite: bool = False) -> Path:
    """A full turn around the mesh as MP4 (libx264) or GIF, chosen by the extension."""
    from attncraft.video import write_video

    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise InputError(f"cannot write a turntable as {path.suffix.lower()}", "use .mp4 or .gif")
    if frames < 1:
        raise InputError(f"turntable needs at least one frame, got {frames}", "pass --frames 1 or more")
    elev, azim = turntable_views(frames, elevation_deg)
    images = to_uint8(render_views(vertices, faces, colors, elev, azim, resolution, renderer=renderer, device=device))
    return write_video(path, images, fps=fps, overwrite=overwrite)


def output_names(name: str = "stylized", formats=MESH_FORMATS, turntable: str | None = "mp4",
                 sheet: bool = True) -> dict[str, str]:
    """The file names :func:`save_outputs` writes, by kind (``sidecar`` beside the first mesh)."""
    names = {fmt.lower().lstrip("."): f"{name}.{fmt.lower().lstrip('.')}" for fmt in formats}
    if sheet:
        names["sheet"] = f"{name}_views.png"
    if turntable:
        names["turntable"] = f"{name}_turntable.{turntable.lower().lstrip('.')}"
    anchor = names.get("glb") or next(iter(names.values()), f"{name}.glb")
    names["sidecar"] = f"{anchor}.json"
    return names


def save_outputs(result, out_dir, name: str = "stylized", formats=MESH_FORMATS, turntable: str | None = "mp4",
                 frames: int = 48, sheet: bool = True, device="cpu", renderer: MeshRenderer | None = None,
                 overwrite: bool = False) -> dict[str, Any]:
    """Write all outputs of a :class:`~attncraft.mesh.stylize.StylizeResult`; returns {kind: path}.

    Files already in ``out_dir`` under these names are an error (checked before anything is
    written) unless ``overwrite``, which replaces them, each atomically.
    """
    out_dir = prepare_output_dir(out_dir)
    names = output_names(name, formats, turntable, sheet)
    taken = [n for n in names.values() if (out_dir / n).exists()]
    if taken and not overwrite:
        raise InputError(f"{out_dir / taken[0]} already exists", "pass --overwrite to replace it, or another --out/--name")
    paths: dict[str, Any] = {}
    for fmt in formats:
        fmt = fmt.lower().lstrip(".")
        paths[fmt] = export_mesh(out_dir / names[fmt], result.vertices, result.faces, result.colors, overwrite=True)
    settings = {**result.settings, "prompt": result.prompt, "clip": result.clip_label, "mesh": result.mesh_source}
    if sheet:
        paths["sheet"] = save_contact_sheet(out_dir / names["sheet"], result.vertices, result.faces, result.colors,
                                            settings, renderer=renderer, device=device, overwrite=True)
    if turntable:
        paths["turntable"] = save_turntable(out_dir / names["turntable"], result.vertices, result.faces,
                                            result.colors, frames=frames, renderer=renderer, device=device,
                                            overwrite=True)
    anchor = out_dir / names["sidecar"][: -len(".json")]
    paths["sidecar"] = write_sidecar(anchor, settings, result=result.metadata(),
                                     files={k: Path(v).name for k, v in paths.items()})
    return paths
