"""MIT-30 benchmark runner with X-Mesh's two metrics, MES and ITS (spec §7-8).

The folder layout is the one of X-Mesh's ``Dataset/`` as provided locally: ``meshes/NAME.obj`` and
``prompts/NAME.txt`` (one prompt per line). Every prompt file defines a mesh; a mesh file that is
missing is reported as *skipped*. Prompts are used verbatim with whitespace collapsed (typos kept),
as ``train.sh`` passes them.

* **MES** (Multi-view Expert Score, the repository's "Test MSE"): render the stylised mesh from 24
  views (azimuth 0..315 deg step 45 x elevation -30/0/+30 deg, fovy 45 deg, r 2.5, 224^2, white
  background, SH lighting), pass them through the reference's PNG path (8-bit truncation as
  ``ToPILImage`` does, PIL bicubic resize to the CLIP's input size:
  :func:`attncraft.mesh.evaluation.reference_png_path`), and average ``100 * cos(image, text)`` (both
  L2-normalised) over the views; then average over the prompts of a mesh, then over meshes.
* **ITS** (Iteration for Target Score): during the optimisation, after updates 0, 10, 20, ...
  (the reference exports after ``optim.step()`` and labels the export with the iteration), the same
  24 views are scored as a raw mean cosine (no x100); ITS is the first label whose similarity exceeds
  ``threshold`` (0.22), or 2000 if none does. Averaged like MES. The score of the untouched mesh is
  kept separately (``its_initial`` in the run records).

Where this deviates from the released evaluation code (spec §9), on purpose:

* the per-iteration outputs that ITS needs are produced (they are commented out in the reference);
* the threshold is a float: the reference declares ``--threshold`` with ``type=int`` and default
  0.22, so its default works but argparse rejects any fractional value given on the command line
  (``int("0.25")`` fails: "invalid int value"); only whole numbers could be passed;
* ITS images are CLIP-normalised like MES images (the reference skips it); ``reference_quirks=True``
  restores the un-normalised ITS input;
* the evaluated geometry is the trained one (v + d); ``reference_eval_geometry=True`` uses the
  reference's v + n * d;
* the scoring CLIP is selectable (the reference uses open_clip ViT-B-32 laion400m_e31, which must be
  supplied locally as a transformers CLIP folder); by default it is the training CLIP.

Resumability: each mesh/prompt result is written atomically to ``runs/NAME/pNN-KEY.json`` (and the
stylised mesh to ``pNN-KEY.ply``), where KEY hashes everything the result depends on: the mesh
file's content, the prompt, every setting of the optimisation and the evaluation, the weights of
both CLIPs, the renderer, the device type and the compute dtype. A later run finds a result by its
key and loads it instead of recomputing; a changed mesh (even under the same name), prompt, setting
or model gets a new key and is computed, and results of other keys are kept, never replaced.
``overwrite=True`` (``--overwrite``) recomputes and replaces the results of the current keys.
Tables are derived from the results and (re)written after every finished run: ``results.csv`` (one
row per mesh/prompt), ``summary.csv`` and ``results.md`` (per mesh and overall).

Prompt files are UTF-8 text, one prompt a line (blank lines and ``#`` comments skipped); a binary or
mis-encoded file is refused before anything runs (:func:`attncraft.validation.read_text_lines`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attncraft.errors import AttncraftError, InputError
from attncraft.mesh.camera import EVAL_FOVY, EVAL_RADIUS, mes_views
from attncraft.mesh.clip_guidance import ClipGuide
from attncraft.outputs import atomic_path, prepare_output_dir, to_strict_json
from attncraft.validation import check_finite, check_int_range, read_text_lines

ITS_CAP = 2000
ITS_THRESHOLD = 0.22
MESH_SUFFIXES = (".obj", ".ply", ".glb", ".off")


# ----------------------------------------------------------------------------------------------
# Pure metric functions
# ----------------------------------------------------------------------------------------------


def mes_from_similarities(similarities: Sequence[float]) -> float:
    """MES of one result: 100 x the mean cosine over its views."""
    values = [float(s) for s in similarities]
    if not values:
        raise ValueError("MES needs at least one view")
    return 100.0 * sum(values) / len(values)


def its_from_curve(curve: Sequence[tuple[int, float]], threshold: float = ITS_THRESHOLD, cap: int = ITS_CAP) -> int:
    """First iteration whose similarity is strictly above ``threshold``; ``cap`` if none is."""
    for iteration, similarity in sorted(curve):
        if similarity > threshold:
            return int(iteration)
    return int(cap)


def aggregate(rows: Sequence[dict[str, Any]], key: str) -> tuple[dict[str, float], float]:
    """Mean of ``key`` over the prompts of each mesh, then over meshes: (per_mesh, overall)."""
    per_mesh: dict[str, list[float]] = {}
    for row in rows:
        value = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        per_mesh.setdefault(row["mesh"], []).append(float(value))
    means = {mesh: sum(v) / len(v) for mesh, v in per_mesh.items()}
    overall = sum(means.values()) / len(means) if means else float("nan")
    return means, overall


# ----------------------------------------------------------------------------------------------
# Dataset discovery
# ----------------------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[str]:
    """One prompt per non-empty line, whitespace collapsed (as ``train.sh``'s unquoted arguments);
    the file must be UTF-8 text (:func:`~attncraft.validation.read_text_lines`)."""
    return [" ".join(line.split()) for line in read_text_lines(path, "prompt file")]


@dataclass
class BenchmarkEntry:
    name: str
    mesh_path: Path | None
    prompts: list[str]


def discover(folder: str | Path, names: Sequence[str] | None = None) -> list[BenchmarkEntry]:
    folder = Path(folder)
    prompts_dir, meshes_dir = folder / "prompts", folder / "meshes"
    if not folder.exists():
        raise InputError(f"the benchmark folder {folder} does not exist", "check the path (a folder with meshes/ and prompts/)")
    if not folder.is_dir():
        raise InputError(f"the benchmark folder {folder} is a file, not a folder", "pass a folder with meshes/ and prompts/")
    if not prompts_dir.is_dir():
        raise InputError(f"{folder} has no prompts/ folder", "pass a folder laid out as meshes/NAME.obj + prompts/NAME.txt")
    entries = []
    for prompt_file in sorted(prompts_dir.glob("*.txt")):
        name = prompt_file.stem
        if names and name not in names:
            continue
        mesh_path = next((meshes_dir / f"{name}{s}" for s in MESH_SUFFIXES if (meshes_dir / f"{name}{s}").is_file()), None)
        entries.append(BenchmarkEntry(name, mesh_path, read_prompts(prompt_file)))
    if names:
        missing = sorted(set(names) - {e.name for e in entries})
        if missing:
            raise InputError(f"no prompt file for {', '.join(missing)} in {prompts_dir}", "check the --mesh names")
    if not entries:
        raise InputError(f"no prompt files (*.txt) in {prompts_dir}", "pass a folder laid out as meshes/NAME.obj + prompts/NAME.txt")
    return entries


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


class ViewScorer:
    """Scores a coloured mesh against a prompt over the 24 MES views with a (scoring) CLIP."""

    def __init__(self, guide: ClipGuide, renderer=None, resolution: int = 224, device="cpu"):
        from attncraft.mesh.renderer import TorchRenderer

        self.guide = guide
        self.renderer = renderer or TorchRenderer()
        self.resolution = resolution
        self.device = torch.device(device)
        self.elev, self.azim = mes_views()

    @torch.no_grad()
    def similarities(self, vertices, faces, colors, prompt: str, quantize: bool = True, normalize: bool = True) -> torch.Tensor:
        from attncraft.mesh.exports import render_views

        images = render_views(vertices, faces, colors, self.elev, self.azim, self.resolution, EVAL_FOVY, EVAL_RADIUS,
                              renderer=self.renderer, device=self.device, batch=24)
        text = self.guide.encode_text(prompt)
        if quantize:  # the reference's PNG files: 8-bit truncation, bicubic resize (module docstring)
            from attncraft.mesh.evaluation import reference_png_path

            return self.guide.view_scores(reference_png_path(images, self.guide.image_size), text,
                                          normalize_images=normalize).cpu()
        return self.guide.view_scores(images.permute(0, 3, 1, 2), text, normalize_images=normalize).cpu()


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchmarkReport:
    rows: list[dict[str, Any]]
    per_mesh: list[dict[str, Any]]
    overall: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    skipped: list[str] = field(default_factory=list)


CSV_FIELDS = ("mesh", "prompt_index", "prompt", "status", "mes", "its", "final_train_score", "seconds", "detail")


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (the mesh part of a result's key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state (names, dtypes, shapes and bytes): two CLIPs under one label or
    path give different keys when their weights differ."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def result_key(run_fingerprint: str, mesh_digest: str, prompt: str) -> str:
    """The resume key of one mesh/prompt result (see the module docstring)."""
    return _fingerprint({"run": run_fingerprint, "mesh": mesh_digest, "prompt": prompt})


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_tables(out_dir: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Path]]:
    """(Re)write results.csv, summary.csv and results.md atomically; return (per_mesh, overall, paths)."""
    done = [r for r in rows if r["status"] in ("done", "cached")]
    mes_mesh, mes_all = aggregate(done, "mes")
    its_mesh, its_all = aggregate(done, "its")
    meshes = list(dict.fromkeys(r["mesh"] for r in rows))
    per_mesh = []
    for mesh in meshes:
        mine = [r for r in rows if r["mesh"] == mesh]
        status = "skipped" if all(r["status"].startswith("skipped") for r in mine) else (
            "error" if any(r["status"] == "error" for r in mine) else "ok")
        per_mesh.append({"mesh": mesh, "prompts": sum(r["status"] in ("done", "cached") for r in mine),
                         "mes": mes_mesh.get(mesh), "its": its_mesh.get(mesh), "status": status})
    overall = {"meshes": len(mes_mesh), "runs": len(done), "mes": mes_all, "its": its_all}
    paths = {"csv": out_dir / "results.csv", "summary": out_dir / "summary.csv", "markdown": out_dir / "results.md"}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["mesh", "prompts", "mes", "its", "status"])
    for m in per_mesh:
        writer.writerow([m["mesh"], m["prompts"], _fmt(m["mes"], 4), _fmt(m["its"], 1), m["status"]])
    writer.writerow(["OVERALL", overall["runs"], _fmt(mes_all, 4), _fmt(its_all, 1), f"{overall['meshes']} meshes"])
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(buf.getvalue())
    lines = ["# X-Mesh benchmark", ""]
    lines += [f"- {k}: {v}" for k, v in header.items()]
    lines += ["", "| mesh | prompts | MES | ITS | status |", "|---|---:|---:|---:|---|"]
    for m in per_mesh:
        lines.append(f"| {m['mesh']} | {m['prompts']} | {_fmt(m['mes'])} | {_fmt(m['its'], 1)} | {m['status']} |")
    lines.append(f"| **overall** ({overall['meshes']} meshes) | {overall['runs']} | **{_fmt(mes_all)}** | "
                 f"**{_fmt(its_all, 1)}** | |")
    skipped = [m["mesh"] for m in per_mesh if m["status"] == "skipped"]
    if skipped:
        lines += ["", f"Skipped (mesh file missing): {', '.join(skipped)}."]
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return per_mesh, overall, paths


def run_benchmark(
    folder: str | Path,
    out_dir: str | Path,
    *,
    clip: str | ClipGuide | None = None,
    score_clip: str | ClipGuide | None = None,
    meshes: Sequence[str] | None = None,
    max_prompts: int | None = None,
    threshold: float = ITS_THRESHOLD,
    its_cap: int = ITS_CAP,
    eval_every: int = 10,
    compute_its: bool = True,
    reference_quirks: bool = False,
    reference_eval_geometry: bool = False,
    eval_resolution: int = 224,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    renderer: str = "auto",
    max_vertices: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
    allow_partial: bool = False,
    memory_check: bool = True,
    trust_pickle: bool = False,
    **settings_overrides: Any,
) -> BenchmarkReport:
    """Stylise every mesh/prompt of ``folder`` and compute MES and ITS; resumable (see module docstring).

    Everything is checked before a model is loaded: the folder and its prompt files, the settings,
    and the output folder (:func:`~attncraft.outputs.prepare_output_dir`).
    """
    from attncraft.devices import resolve_device, resolve_dtype
    from attncraft.mesh.io import load_mesh
    from attncraft.mesh.renderer import get_renderer
    from attncraft.mesh.stylize import StylizeSettings, make_guide, stylize_mesh, validate_settings

    log = log or (lambda _m: None)
    threshold = check_finite("--threshold", threshold, example=0.22)
    check_int_range("--eval-every", eval_every, 1, example=10)
    check_int_range("--eval-resolution", eval_resolution, 8, 4096, example=224)
    check_int_range("its_cap", its_cap, 0)
    if max_prompts is not None:
        check_int_range("--max-prompts", max_prompts, 1)
    unknown = set(settings_overrides) - set(StylizeSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown stylize settings: {sorted(unknown)}")
    settings = validate_settings(StylizeSettings(**{**StylizeSettings().to_dict(), **settings_overrides}))
    entries = discover(folder, meshes)
    out_dir = prepare_output_dir(out_dir)
    dev = resolve_device(device)
    autocast = resolve_dtype(dtype, dev)
    rend, rlabel = get_renderer(renderer, device=dev)
    guide = make_guide(clip, dev, autocast, trust_pickle)
    scorer_guide = guide if score_clip is None else make_guide(score_clip, dev, autocast, trust_pickle)
    scorer = ViewScorer(scorer_guide, rend, eval_resolution, dev)
    clip_weights = weights_digest(guide.model)
    fingerprint = _fingerprint({
        "settings": settings.to_dict(), "clip": guide.label, "score_clip": scorer_guide.label, "threshold": threshold,
        "its_cap": its_cap, "eval_every": eval_every, "its": compute_its, "quirks": reference_quirks,
        "ref_geometry": reference_eval_geometry, "eval_resolution": eval_resolution,
        "clip_weights": clip_weights,
        "score_clip_weights": clip_weights if scorer_guide is guide else weights_digest(scorer_guide.model),
        "renderer": rlabel, "device": dev.type, "dtype": str(autocast),
    })
    header = {"folder": str(folder), "training CLIP": guide.label, "scoring CLIP": scorer_guide.label,
              "iterations": settings.iterations, "ITS threshold": threshold, "ITS evaluated every": eval_every,
              "reference quirks": reference_quirks, "device": str(dev)}
    log(f"clip: {guide.label}")
    if scorer_guide is not guide:
        log(f"score clip: {scorer_guide.label}")
    rows: list[dict[str, Any]] = []
    report = BenchmarkReport([], [], {})

    def finish_row(row: dict[str, Any]) -> None:
        rows.append(row)
        write_tables(out_dir, rows, header)

    for entry in entries:
        prompts = entry.prompts[:max_prompts] if max_prompts else entry.prompts
        if entry.mesh_path is None:
            report.skipped.append(entry.name)
            log(f"{entry.name}: skipped (mesh file missing)")
            for k, prompt in enumerate(prompts):
                finish_row({"mesh": entry.name, "prompt_index": k, "prompt": prompt, "status": "skipped (mesh missing)"})
            continue
        data = None
        mesh_digest = file_digest(entry.mesh_path)
        runs_dir = out_dir / "runs" / entry.name
        for k, prompt in enumerate(prompts):
            key = result_key(fingerprint, mesh_digest, prompt)
            record = runs_dir / f"p{k:02d}-{key}.json"
            if not overwrite and not record.is_file():  # the same result under another index (prompts reordered)
                record = next(iter(sorted(runs_dir.glob(f"p*-{key}.json"))), record)
            if record.is_file() and not overwrite:
                try:
                    saved = json.loads(record.read_text())
                except (OSError, ValueError):
                    saved = {}
                if saved.get("key") == key and saved.get("prompt") == prompt:
                    report.cached += 1
                    log(f"{entry.name} p{k:02d}: cached (MES {_fmt(saved.get('mes'))}, ITS {saved.get('its')})")
                    finish_row({**saved["row"], "prompt_index": k, "status": "cached"})
                    continue
            record = runs_dir / f"p{k:02d}-{key}.json"
            try:
                if data is None:
                    data = load_mesh(entry.mesh_path, device=dev.type, max_vertices=max_vertices, allow_partial=allow_partial)
                    prepare_output_dir(runs_dir)  # also removes temporaries a killed run left there

                def evaluator(run, iteration, _prompt=prompt):
                    styled = run.current(reference_eval_geometry=reference_eval_geometry)
                    sims = scorer.similarities(styled.vertices, data.faces, styled.colors.clamp(0, 1), _prompt,
                                               quantize=False, normalize=not reference_quirks)
                    return float(sims.mean())

                start = time.perf_counter()
                result = stylize_mesh(data, prompt, clip=guide, settings=settings, device=dev, renderer=rend,
                                      progress=progress, eval_every=eval_every if compute_its else None,
                                      evaluator=evaluator if compute_its else None, memory_check=memory_check)
                final = result.run.current(reference_eval_geometry=reference_eval_geometry)
                verts = final.vertices.float().cpu().numpy()
                colors = final.colors.clamp(0, 1).float().cpu().numpy()
                sims = scorer.similarities(verts, data.faces, colors, prompt, quantize=True, normalize=True)
                mes = mes_from_similarities(sims.tolist())
                its = its_from_curve(result.eval_history, threshold, its_cap) if compute_its else None
                seconds = time.perf_counter() - start
                from attncraft.mesh.exports import export_mesh

                export_mesh(record.with_suffix(".ply"), verts, result.faces, colors, overwrite=True)
                row = {"mesh": entry.name, "prompt_index": k, "prompt": prompt, "status": "done", "mes": mes,
                       "its": its, "final_train_score": result.final_score_or_none, "seconds": round(seconds, 2),
                       "detail": ""}
                text = to_strict_json({"key": key, "fingerprint": fingerprint, "mesh_sha256": mesh_digest,
                                       "prompt": prompt, "mes": mes, "its": its, "view_similarities": sims.tolist(),
                                       "its_curve": result.eval_history, "its_initial": result.eval_initial,
                                       "row": row}, indent=1)
                with atomic_path(record) as tmp:
                    tmp.write_text(text)
                report.computed += 1
                log(f"{entry.name} p{k:02d}: MES {mes:.2f}, ITS {its} ({seconds:.1f} s)")
                finish_row(row)
            except AttncraftError as exc:
                log(f"{entry.name} p{k:02d}: error: {exc.one_line()}")
                finish_row({"mesh": entry.name, "prompt_index": k, "prompt": prompt, "status": "error",
                            "detail": exc.one_line()})
                if data is None:  # the mesh itself is unusable: record the other prompts too
                    for k2, p2 in enumerate(prompts[k + 1:], start=k + 1):
                        finish_row({"mesh": entry.name, "prompt_index": k2, "prompt": p2, "status": "error",
                                    "detail": exc.one_line()})
                    break
    per_mesh, overall, paths = write_tables(out_dir, rows, header)
    report.rows, report.per_mesh, report.overall, report.paths = rows, per_mesh, overall, paths
    return report
