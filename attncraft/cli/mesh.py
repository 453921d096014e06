"""``attncraft mesh``: X-Mesh text-driven mesh stylisation and the MIT-30 benchmark runner.

* ``attncraft mesh stylize [MESH] [PROMPT]`` -- MESH is a .obj/.ply/.glb/.gltf/.off/.stl file or
  ``default`` (a procedural torus); with a single argument that is a prompt (not path-like: it has
  spaces, or no separator and no mesh extension), the default mesh is stylised. A path-like argument
  that does not exist is an error, never a prompt. Writes GLB/PLY/OBJ with vertex colours, a
  turntable video, a 24-view contact sheet and a JSON sidecar into a result folder
  ``--out/<name>-<prompt>`` reserved for this run (``-2``, ``-3``... if taken; ``--overwrite`` reuses it).
* ``attncraft mesh bench DIR`` -- runs every mesh/prompt of a MIT-30-style folder and writes MES/ITS
  tables (Markdown and CSV); interrupted runs resume, results are kept per content key.

Every argument, the mesh file and the output folder are checked before CLIP is loaded or anything
is optimised; the memory a run needs is estimated from the mesh size and refused if it does not fit
(``--skip-memory-check`` runs it anyway).

torch and the mesh modules are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import typer

from attncraft.batch.jobs import register_job
from attncraft.errors import InputError
from attncraft.validation import check_finite, check_input_file, check_int_range, check_seed, check_text, looks_like_path

from attncraft.cli.common import DeviceOption, DtypeOption, TrustPickleOption, console, quiet_libraries

app = typer.Typer(help="Text-driven mesh stylisation (X-Mesh) and its MIT-30 benchmark.", no_args_is_help=True)

MAX_ITERATIONS = 100_000
AllowPartialOption = typer.Option(
    False, "--allow-partial", help="Use a mesh file that looks truncated (fewer faces than it declares), noting what was dropped.")
SkipMemoryOption = typer.Option(
    False, "--skip-memory-check", help="Run even if the estimated memory exceeds what the device has available.")

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")
CLIP_HELP = ("CLIP for guidance: 'default' (the shapes CLIP, or a random stand-in until it exists), "
             "'random:tiny|test|vit-b-32', a local CLIPModel folder, or a Hub id (needs network).")


def _slug(text: str, limit: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (slug[:limit].rstrip("-")) or "prompt"


def _split_args(mesh: str | None, prompt: str | None) -> tuple[str, str | None]:
    """``stylize "a red vase"`` means the default mesh with that prompt; a path-like argument
    (``chair.obj``, ``path/to/Sofa``) is a mesh, checked to exist by :func:`_check_mesh_path`."""
    if mesh is None:
        return "default", prompt
    if prompt is None and mesh.strip().lower() != "default":
        if not looks_like_path(mesh, MESH_SUFFIXES):
            return "default", mesh
    return mesh, prompt


def _check_mesh_path(mesh_ref: str, prompt_given: bool) -> None:
    if mesh_ref == "default":
        return
    path = Path(mesh_ref).expanduser()
    if not path.exists():
        fix = "check the path" if prompt_given else (
            f'check the path; to stylise the default mesh with this text as the prompt, pass: mesh stylize default "{mesh_ref}"')
        raise InputError(f"the mesh file {mesh_ref!r} does not exist", fix)
    check_input_file(path, "mesh file")


def _echo(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "gray": (0.5, 0.5, 0.5), "grey": (0.5, 0.5, 0.5), "black": (0.0, 0.0, 0.0)}


def _background(text: str) -> tuple[float, float, float]:
    """``white``/``gray``/``black`` or ``R,G,B`` in [0, 1]."""
    if text.lower() in _BACKGROUNDS:
        return _BACKGROUNDS[text.lower()]
    try:
        rgb = tuple(float(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= v <= 1.0 for v in rgb):  # NaN fails the comparison too
        raise InputError(f"--background {text!r} is not a colour", "pass white, gray, black or R,G,B with values in 0-1")
    return rgb  # type: ignore[return-value]


def _check_run_options(iterations: int, views: int, resolution: int, seed: int, lr: float | None = None) -> None:
    """The options both commands share, under the names the user typed (before anything is loaded)."""
    check_int_range("--iterations", iterations, 1, MAX_ITERATIONS, example=1200)
    check_int_range("--views", views, 1, 64, example=5)
    check_int_range("--resolution", resolution, 8, 4096, example=224)
    check_seed(seed)
    if lr is not None:
        check_finite("--lr", lr, 0, low_inclusive=False, example=5e-4)


@dataclass
class StylizePlan:
    """The checked arguments of ``mesh stylize`` (what the checks derived from the options)."""

    mesh: str
    prompt: str
    background: tuple[float, float, float]
    formats: list[str]
    turntable: str
    stem: str


def check_stylize_options(mesh=None, prompt=None, *, iterations=1200, views=5, resolution=224, lr=5e-4, seed=23,
                          field="xmesh", background="white", target_edge=None, max_vertices=None, name=None,
                          formats="glb,ply,obj", turntable="mp4", frames=48, **_other) -> StylizePlan:
    """Every check of ``mesh stylize`` that needs no CLIP (the mesh job runs them too)."""
    from attncraft.mesh.stylize import DEFAULT_PROMPT

    mesh_ref, prompt_text = _split_args(mesh, prompt)
    _check_mesh_path(mesh_ref, prompt is not None)
    prompt_text = check_text("prompt", DEFAULT_PROMPT if prompt_text is None else prompt_text)
    _check_run_options(iterations, views, resolution, seed, lr)
    if target_edge is not None:
        check_finite("--target-edge", target_edge, 0, low_inclusive=False, example=0.03)
    if max_vertices is not None:
        check_int_range("--max-vertices", max_vertices, 3)
    if name is not None:
        check_text("--name", name)
        if Path(name).name != name or name in (".", ".."):
            raise InputError(f"--name {name!r} is not a file name", "pass a name without folders, e.g. --name chair")
    turntable_kind = turntable.lower().strip(".")
    if turntable_kind not in ("mp4", "gif", "none"):
        raise InputError(f"unknown turntable format {turntable!r}", "pass --turntable mp4, gif or none")
    fmt_list = [f.strip().lower().lstrip(".") for f in formats.split(",") if f.strip()]
    bad = [f for f in fmt_list if f not in ("glb", "ply", "obj")]
    if bad:
        raise InputError(f"unknown mesh format(s) {', '.join(bad)}", "pass --formats with glb, ply and/or obj")
    if field not in ("xmesh", "text2mesh"):
        raise InputError(f"unknown style field {field!r}", "pass --field xmesh or --field text2mesh")
    if turntable_kind != "none":
        check_int_range("--frames", frames, 1, 1000, example=48)
    rgb = _background(background)
    stem = "default" if mesh_ref == "default" else Path(mesh_ref).stem
    return StylizePlan(mesh_ref, prompt_text, rgb, fmt_list, turntable_kind, name or stem)


@app.command("stylize")
def stylize(
    mesh: str = typer.Argument(None, help="Mesh file (.obj/.ply/.glb/.gltf/.off/.stl) or 'default' (procedural torus)."),
    prompt: str = typer.Argument(None, help="Text prompt (default: a frosted-donut prompt)."),
    clip: str = typer.Option("default", "--clip", help=CLIP_HELP),
    iterations: int = typer.Option(1200, "--iterations", "-n", help="Optimisation steps (X-Mesh: 1200)."),
    views: int = typer.Option(5, "--views", help="Rendered views per iteration."),
    resolution: int = typer.Option(224, "--resolution", help="Render resolution in pixels."),
    lr: float = typer.Option(5e-4, "--lr", help="Adam learning rate (x0.9 every 100 iterations)."),
    seed: int = typer.Option(23, "--seed", help="Seed of the field, views and augmentations."),
    field: str = typer.Option("xmesh", "--field", help="Style field: xmesh (TDAM + LayerNorm) or text2mesh."),
    renderer: str = typer.Option("auto", "--renderer", help="auto/torch (built-in) or kaolin (if a real kaolin is installed)."),
    geoloss: bool = typer.Option(True, "--geoloss/--no-geoloss", help="Add the geometry-only (grey) render loss."),
    background: str = typer.Option("white", "--background", help="Render background: white, gray, black or R,G,B in 0-1."),
    refine: str = typer.Option(None, "--refine", help="Refine coarse meshes first: split, subdivide or isotropic (pymeshlab)."),
    target_edge: float = typer.Option(None, "--target-edge", help="Target edge length for --refine split/isotropic (unit sphere)."),
    max_vertices: int = typer.Option(None, "--max-vertices", help="Largest mesh accepted (default: 200k on CPU, 2M on CUDA)."),
    out: Path = typer.Option(Path("outputs") / "mesh", "--out", "-o",
                             help="Folder in which the result folder <name>-<prompt> is created (-2, -3... if taken)."),
    name: str = typer.Option(None, "--name", help="Base name of the output files (default: the mesh name)."),
    formats: str = typer.Option("glb,ply,obj", "--formats", help="Mesh formats to write, comma-separated."),
    turntable: str = typer.Option("mp4", "--turntable", help="Turntable video: mp4, gif or none."),
    frames: int = typer.Option(48, "--frames", help="Turntable frames."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Reuse the result folder <name>-<prompt> if it exists, replacing its files."),
    allow_partial: bool = AllowPartialOption,
    skip_memory_check: bool = SkipMemoryOption,
    trust_pickle: bool = TrustPickleOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Stylise a mesh from a text prompt (colour + displacement per vertex, guided by CLIP)."""
    quiet_libraries()
    from attncraft.mesh.stylize import stylize_mesh
    from attncraft.outputs import prepare_output_dir, reserve_dir

    plan = check_stylize_options(mesh, prompt, iterations=iterations, views=views, resolution=resolution, lr=lr,
                                 seed=seed, field=field, background=background, target_edge=target_edge,
                                 max_vertices=max_vertices, name=name, formats=formats, turntable=turntable, frames=frames)
    mesh_ref, prompt_text, rgb, fmt_list, turntable_kind, stem = (
        plan.mesh, plan.prompt, plan.background, plan.formats, plan.turntable, plan.stem)
    parent = prepare_output_dir(out)  # before any work: a file, a read-only folder or a full disk fails now
    result = stylize_mesh(mesh_ref, prompt_text, clip=clip, device=device, dtype=dtype, renderer=renderer,
                          max_vertices=max_vertices, refine=refine, target_edge=target_edge, log=_echo,
                          allow_partial=allow_partial, memory_check=not skip_memory_check, trust_pickle=trust_pickle,
                          iterations=iterations, views=views, resolution=resolution, learning_rate=lr, seed=seed,
                          field=field, geoloss=geoloss, background=rgb)
    from attncraft.mesh.metrics import stylize_summary

    for line in stylize_summary(result):
        _echo(line)
    dev = result.settings["device"]
    out_dir = reserve_dir(parent, f"{name or stem}-{_slug(prompt_text)}", overwrite=overwrite)
    paths = result.save(out_dir, name or stem, formats=fmt_list, turntable=None if turntable_kind == "none" else turntable_kind,
                        frames=frames, device=dev, overwrite=overwrite)
    _echo(f"wrote {len(paths)} files to {out_dir}/")
    for path in paths.values():
        typer.echo(str(path))


@app.command("bench")
def bench(
    folder: Path = typer.Argument(..., help="Folder with meshes/NAME.obj and prompts/NAME.txt (MIT-30 layout)."),
    out: Path = typer.Option(Path("outputs") / "mesh-bench", "--out", "-o", help="Results folder (resumable)."),
    clip: str = typer.Option("default", "--clip", help=CLIP_HELP),
    score_clip: str = typer.Option(None, "--score-clip", help="CLIP for MES/ITS (reference: open_clip ViT-B-32 laion400m_e31 as a transformers folder). Default: the training CLIP."),
    iterations: int = typer.Option(1200, "--iterations", "-n", help="Optimisation steps per prompt."),
    mesh_names: list[str] = typer.Option(None, "--mesh", help="Only these meshes (repeatable)."),
    max_prompts: int = typer.Option(None, "--max-prompts", help="Only the first N prompts of each mesh."),
    threshold: float = typer.Option(0.22, "--threshold", help="ITS target similarity (raw cosine; 0.22 belongs to open_clip ViT-B-32: for another CLIP calibrate it, as benchmarks/bench_xmesh_claim.py does)."),
    eval_every: int = typer.Option(10, "--eval-every", help="ITS evaluation interval in iterations."),
    its: bool = typer.Option(True, "--its/--no-its", help="Compute ITS (costs a 24-view scoring every --eval-every)."),
    reference_quirks: bool = typer.Option(False, "--reference-quirks", help="Reproduce the reference's unnormalised ITS images."),
    reference_geometry: bool = typer.Option(False, "--reference-eval-geometry", help="Evaluate v + n*d like the reference (not the trained v + d)."),
    views: int = typer.Option(5, "--views", help="Rendered views per iteration."),
    resolution: int = typer.Option(224, "--resolution", help="Training render resolution."),
    eval_resolution: int = typer.Option(224, "--eval-resolution", help="Resolution of the 24 evaluation views."),
    seed: int = typer.Option(23, "--seed", help="Seed of every run."),
    max_vertices: int = typer.Option(None, "--max-vertices", help="Largest mesh accepted."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Recompute results already in --out and replace them."),
    allow_partial: bool = AllowPartialOption,
    skip_memory_check: bool = SkipMemoryOption,
    trust_pickle: bool = TrustPickleOption,
    device: str = DeviceOption,
    dtype: str = DtypeOption,
) -> None:
    """Run the MIT-30 benchmark (MES and ITS) over a folder; finished mesh/prompt pairs are not recomputed."""
    quiet_libraries()
    from attncraft.mesh.benchmark import run_benchmark

    _check_run_options(iterations, views, resolution, seed)
    if max_vertices is not None:
        check_int_range("--max-vertices", max_vertices, 3)
    report = run_benchmark(folder, out, clip=clip, score_clip=score_clip, meshes=mesh_names or None,
                           overwrite=overwrite, allow_partial=allow_partial, memory_check=not skip_memory_check,
                           trust_pickle=trust_pickle,
                           max_prompts=max_prompts, threshold=threshold, eval_every=eval_every, compute_its=its,
                           reference_quirks=reference_quirks, reference_eval_geometry=reference_geometry,
                           eval_resolution=eval_resolution, device=device, dtype=dtype, max_vertices=max_vertices,
                           log=_echo, iterations=iterations, views=views, resolution=resolution, seed=seed)
    _echo(f"{report.computed} computed, {report.cached} reused, {len(report.skipped)} meshes skipped (missing)")
    typer.echo(report.paths["markdown"].read_text())


# --------------------------------------------------------------------------------------------------
# The ``mesh`` batch job: ``mesh stylize`` with its options; the CLIP is loaded once per worker
# --------------------------------------------------------------------------------------------------


@dataclass
class _LoadedGuide:
    guide: object
    device: object
    dtype: object


def _load_guide(options: dict, device: str = "auto") -> _LoadedGuide:
    quiet_libraries()
    from attncraft.devices import resolve_device, resolve_dtype
    from attncraft.mesh.stylize import make_guide

    dev = resolve_device(device)
    autocast = resolve_dtype(options["dtype"], dev)
    return _LoadedGuide(make_guide(options["clip"], dev, autocast, options["trust_pickle"]), dev, autocast)


def _run_mesh_jobs(loaded: _LoadedGuide, jobs) -> None:
    from attncraft.mesh.stylize import stylize_mesh

    for job in jobs:
        o = job.options
        plan = check_stylize_options(**o)
        result = stylize_mesh(plan.mesh, plan.prompt, clip=loaded.guide, device=loaded.device, dtype=loaded.dtype,
                              renderer=o["renderer"], max_vertices=o["max_vertices"], refine=o["refine"],
                              target_edge=o["target_edge"], allow_partial=o["allow_partial"],
                              memory_check=not o["skip_memory_check"], iterations=o["iterations"], views=o["views"],
                              resolution=o["resolution"], learning_rate=o["lr"], seed=o["seed"], field=o["field"],
                              geoloss=o["geoloss"], background=plan.background, progress=False)
        result.save(job.folder(), plan.stem, formats=plan.formats,
                    turntable=None if plan.turntable == "none" else plan.turntable, frames=o["frames"],
                    device=result.settings["device"], overwrite=True)
        score = result.final_score_or_none
        if score is not None:
            job.metrics["clip_score"] = score
        if result.eval_score is not None:
            job.metrics["eval_score"] = result.eval_score
        job.metrics.update({k: v for k, v in (result.ground_truth or {}).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        job.settings = {**result.settings, "prompt": result.prompt, "clip": result.clip_label, "mesh": result.mesh_source}


register_job(
    "mesh", stylize,
    check=check_stylize_options,
    load=_load_guide,
    run=_run_mesh_jobs,
    model_options=("clip", "dtype", "trust_pickle"),
)
