"""MES/ITS on synthetic scores (exact values) and the resumable runner on a tiny synthetic folder."""

from __future__ import annotations

import json

import pytest
import torch

from attncraft.errors import InputError
from attncraft.mesh.benchmark import aggregate, discover, its_from_curve, mes_from_similarities, run_benchmark
from bench_scripts import load_script


def test_its_crossing_at_iteration_zero_and_exactly_at_the_threshold():
    assert its_from_curve([(0, 0.30), (10, 0.10)], 0.22) == 0  # the first update already passes
    assert its_from_curve([(0, 0.22), (10, 0.22), (20, 0.2200001)], 0.22) == 20  # equal is not above
    assert its_from_curve([(0, 0.22), (10, 0.22)], 0.22) == 2000


def test_mes_reads_renders_through_the_reference_png_path():
    from PIL import Image

    from attncraft.mesh.evaluation import reference_png_path, truncate_to_uint8

    images = torch.rand(3, 40, 40, 3, generator=torch.Generator().manual_seed(0))
    images[0, 0, 0] = torch.tensor([0.9999, 0.5 / 255 + 1e-4, 1.0])
    same = reference_png_path(images, 40)
    assert torch.equal(same, torch.floor(images * 255).permute(0, 3, 1, 2) / 255)  # truncation, not rounding
    assert truncate_to_uint8(images)[0, 0, 0].tolist() == [254, 0, 255]
    small = reference_png_path(images, 16)
    pil = Image.fromarray(truncate_to_uint8(images)[1].numpy()).resize((16, 16), Image.BICUBIC)
    assert torch.equal(small[1], torch.tensor(list(pil.getdata()), dtype=torch.float32).view(16, 16, 3).permute(2, 0, 1) / 255)


def test_mes_and_its_on_synthetic_sequences():
    assert mes_from_similarities([0.2, 0.3]) == 25.0
    assert mes_from_similarities([0.25] * 24) == 25.0
    curve = [(0, 0.10), (10, 0.21), (20, 0.22), (30, 0.2201), (40, 0.30)]
    assert its_from_curve(curve, 0.22) == 30  # strictly above the threshold; 0.22 itself does not pass
    assert its_from_curve(curve, 0.05) == 0
    assert its_from_curve(curve, 0.5) == 2000
    assert its_from_curve([], 0.22) == 2000
    assert its_from_curve(list(reversed(curve)), 0.25) == 40
    rows = [{"mesh": "a", "mes": 20.0, "its": 100}, {"mesh": "a", "mes": 30.0, "its": 2000},
            {"mesh": "b", "mes": 40.0, "its": 500}, {"mesh": "c", "mes": None}]
    per_mesh, overall = aggregate(rows, "mes")
    assert per_mesh == {"a": 25.0, "b": 40.0} and overall == 32.5
    assert aggregate(rows, "its") == ({"a": 1050.0, "b": 500.0}, 775.0)


def make_folder(root):
    import trimesh

    (root / "meshes").mkdir(parents=True)
    (root / "prompts").mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(root / "meshes" / "ball.obj")
    (root / "prompts" / "ball.txt").write_text("A 3D rendering of a   red ball in unreal engine.\n\nA blue ball.\n")
    (root / "prompts" / "ghost.txt").write_text("A ghost.\n")  # its mesh is missing
    (root / "meshes" / "broken.obj").write_text("not a mesh\n")  # unusable: reported, the run goes on
    (root / "prompts" / "broken.txt").write_text("A broken thing.\n")
    return root


def test_runner_skips_missing_meshes_and_resumes(tmp_path, test_guide):
    folder = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    kwargs = dict(clip=test_guide, eval_every=1, eval_resolution=32, device="cpu", progress=False, iterations=2,
                  views=2, resolution=32, width=32, n_normaugs=1, n_geoaugs=1)
    first = run_benchmark(folder, out, **kwargs)
    assert first.computed == 2 and first.cached == 0 and first.skipped == ["ghost"]
    rows = {(r["mesh"], r["prompt_index"]): r for r in first.rows}
    assert rows[("ball", 0)]["prompt"] == "A 3D rendering of a red ball in unreal engine."  # whitespace collapsed
    assert rows[("ghost", 0)]["status"].startswith("skipped")
    assert rows[("broken", 0)]["status"] == "error" and "no faces" in rows[("broken", 0)]["detail"]
    (record,) = (out / "runs" / "ball").glob("p00-*.json")  # named by the result's key
    saved = json.loads(record.read_text())
    assert len(saved["view_similarities"]) == 24 and [i for i, _ in saved["its_curve"]] == [0, 1]
    assert saved["mes"] == pytest.approx(100 * sum(saved["view_similarities"]) / 24)
    assert saved["its"] in (0, 1, 2000)
    assert record.with_suffix(".ply").is_file() and saved["key"] in record.name
    md = (out / "results.md").read_text()
    assert "| ball | 2 |" in md and "ghost" in md and "Skipped" in md
    assert "| broken | 0 | - | - | error |" in md
    assert (out / "results.csv").read_text().count("\n") == 5 and "OVERALL" in (out / "summary.csv").read_text()
    mtime = record.stat().st_mtime_ns

    # Simulate an interruption after the first prompt: remove the second record and rerun.
    next((out / "runs" / "ball").glob("p01-*.json")).unlink()
    second = run_benchmark(folder, out, **kwargs)
    assert second.computed == 1 and second.cached == 1 and record.stat().st_mtime_ns == mtime
    assert second.overall["mes"] == pytest.approx(first.overall["mes"], abs=1e-6)

    # Different settings are not mixed with old results.
    third = run_benchmark(folder, out, **{**kwargs, "threshold": 0.3, "meshes": ["ball"], "max_prompts": 1})
    assert third.computed == 1 and third.cached == 0


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="prompts/"):
        discover(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "missing")
    folder = make_folder(tmp_path / "d")
    with pytest.raises(InputError, match="no prompt file"):
        discover(folder, ["nope"])


def test_mit30_layout_is_discovered(mit30):
    entries = discover(mit30)
    assert len(entries) == 30 and all(len(e.prompts) == 5 for e in entries)
    present = [e.name for e in entries if e.mesh_path is not None]
    assert "horse" in present and len(present) >= 1


def test_claim_groups_keep_both_fields_of_a_topology_adjacent():
    """The claim script's time budget stops MIT-30 between topologies, never between the two fields of one."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_xmesh_claim.py"
    claim = load_script(path, "bench_xmesh_claim_under_test")
    from attncraft.mesh.procedural import procedural_mesh

    meshes = [("procedural", name, name, procedural_mesh(name, "smooth", 0, grid_size=(12, 8)))
              for name in ("sphere", "torus")]
    meshes.append(("procedural", "blobby sphere", "sphere", procedural_mesh("sphere", "blobby", 1, grid_size=(12, 8))))
    prompts = [[(f"a red {noun}", "red")] for (_, _, noun, _) in meshes]
    groups = claim.group_runs(meshes, prompts, seeds=[0, 1])
    assert [f for f, _ in groups] == ["xmesh", "text2mesh"] * 2
    assert groups[0][1] is groups[1][1] and groups[2][1] is groups[3][1]  # one run list per topology, both fields
    assert sorted({m for m, *_ in groups[0][1]}) == [0, 2]  # the sphere and its blobby variant share faces
    assert len(groups[0][1]) == 4 and claim.first_reaching([(None, 0.9), (0, 0.1), (10, 0.3)][1:], 0.2, 150) == 10
