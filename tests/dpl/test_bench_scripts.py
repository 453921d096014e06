"""The DPL benchmark scripts: the GPU cost script's CPU smoke mode, and the effect script's metrics.

No timing is asserted: the numbers only mean something on the GPU (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bench_scripts import load_script

ROOT = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name):
    module = load_script(ROOT / f"{name}.py", name)
    return module


@pytest.mark.slow
def test_cost_benchmark_runs_every_variant_in_tiny_mode(tmp_path, capsys):
    bench = load("bench_dpl")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--steps", "3", "--rounds", "2", "--iters", "1", "--warmup", "1",
                       "--json", str(out), "--profile", str(tmp_path / "prof"), "--profile-iters", "1",
                       "--compile-backend", "aot_eager"]) == 0
    results = json.loads(out.read_text())
    variants = {"reference", "ours", "ours_auto", "ours_explicit", "ours_tf32", "ours_bf16", "ours_compiled"}
    for kind in ("token", "null"):
        assert set(results[kind]) == variants
        assert all(len(r["rounds"]) == 2 and r["ms"] > 0 for r in results[kind].values())
        diffs = {name: r["max_abs_diff_vs_ours"] for name, r in results[kind].items()}
        # on the CPU: auto is the fused kernel and TF32 does not exist, so both equal ours exactly
        assert diffs["ours"] == diffs["ours_auto"] == diffs["ours_tf32"] == 0.0 and diffs["ours_bf16"] > 0
        # aot_eager traces the same aten operations: the compiled graphs (the token one cut at the loss layers) are exact
        assert diffs["ours_compiled"] == 0.0 and results[kind]["ours_compiled"]["first_iteration_s"] > 0
    assert results["token"]["reference"]["max_abs_diff_vs_ours"] is None
    assert set(results["profile"]["null-text"]) == {"reference", "ours", "ours_auto", "ours_compiled"}
    assert "### null-text, ours_auto" in (tmp_path / "prof" / "dpl_profile.md").read_text()
    assert results["whole"]["token_updates"] > 0
    text = capsys.readouterr().out
    assert "| token update | ours |" in text and "UNet weights unchanged by the optimisation: True." in text
    assert "null-text ours_tf32: " in text and "x reference" in text
    assert "Compilation (ours_compiled, mode 'reduce-overhead';" in text


def test_effect_metrics_on_known_maps():
    bench = load("bench_dpl_effect")
    masks = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    masks[0, 0, :4, :4] = True  # object 0: top-left quarter
    masks[0, 1, 4:, 4:] = True  # object 1: bottom-right quarter
    maps = torch.zeros(1, 16, 5)
    own = torch.zeros(4, 4)
    own[:2, :2] = 1.0  # token 1 exactly on object 0 (4x4 map of the 8x8 masks)
    maps[0, :, 1] = own.flatten()
    half = torch.zeros(4, 4)
    half[2:, 2:] = 1.0
    half[0, 3] = 1.0  # token 2: object 1 plus one background cell
    maps[0, :, 2] = half.flatten()
    rows = bench.map_metrics(maps, (4, 4), [[[1], [2]]], masks, [[0, 1]])
    assert rows[0]["iou"] == 1.0 and rows[0]["mass_own"] == 1.0 and rows[0]["peak"] == "own"
    assert rows[1]["mass_own"] == pytest.approx(0.8) and rows[1]["mass_background"] == pytest.approx(0.2)
    assert rows[1]["iou"] == pytest.approx(16 / 20) and rows[1]["iou_ceiling"] == 1.0
    # caption order: "a blue square ... a red circle" names object 1 first
    from attncraft.shapes.world import Scene, SceneObject

    scene = Scene(objects=(SceneObject("circle", "red", position="left"), SceneObject("square", "blue", position="right")))
    assert bench.caption_order("a blue square on the right and a red circle on the left", scene.objects) == [1, 0]
    caption, target, edited = bench.make_edit(scene, "a blue square on the right and a red circle on the left", [1, 0],
                                              "color", np.random.default_rng(0))
    assert edited == 1 and target.objects[0] == scene.objects[0] and target.objects[1].color not in ("red", "blue")
    assert caption == f"a {target.objects[1].color} square on the right and a red circle on the left"
    disc = bench.region(0.5, 0.5, 0.25, 8, margin_px=0.0)
    assert disc[4, 4] and not disc[0, 0]


def test_cost_benchmark_runs_chosen_variants(tmp_path, capsys):
    bench = load("bench_dpl")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--steps", "2", "--rounds", "1", "--iters", "1", "--warmup", "0",
                       "--skip-whole", "--variants", "ours_tf32",
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["token"]) == set(results["null"]) == {"reference", "ours", "ours_tf32"}
    assert results["null"]["ours_tf32"]["max_abs_diff_vs_ours"] == 0.0  # no TF32 on the CPU
    text = capsys.readouterr().out
    assert "Compilation" not in text and "Whole invert" not in text and results["whole"] is None


def _effect_payload(rows: str, results: dict, wall: float, **settings) -> dict:
    args = {"n": 200, "steps": 20, "guidance": 3.0, "null_steps": 10, "null_lr": 0.05, "token_steps": 21,
            "rows": rows, **settings}
    md = "## x\n\nHardware: host, NVIDIA H200; torch 2.11.0+cu130. Command: `...`. Settings: ..."
    return {"args": args, "results": results, "timing": {}, "wall_s": wall, "markdown": md}


def _stats(iou: float) -> dict:
    return {"loss layers 16x16": {"n_maps": 4, "iou": iou, "iou_ceiling": 0.8, "iou_topk": 0.4, "mass_own": 0.04,
                                  "area_own": 0.02, "mass_other": 0.02, "mass_background": 0.94,
                                  "area_background": 0.95, "peak_own": 0.7, "peak_other": 0.05,
                                  "peak_background": 0.2}, "psnr": 44.0 if iou > 0.2 else 41.0}


def test_effect_runs_side_by_side_merge_into_one_table(tmp_path, capsys):
    bench = load("bench_dpl_effect")
    parts = {
        "psnr": _effect_payload("psnr", {"psnr": {"DDIM inversion": 29.5}}, 78.0),
        "world": _effect_payload("world,edits", {"maps": {"world": {"nti": _stats(0.26), "dpl": _stats(0.18)}},
                                                 "edits": {"world NTI+P2P shape blend=off": {
                                                     "n": 200, "edited_right": 0.3, "others_unchanged": 0.9,
                                                     "outside_l1": 0.02, "outside_changed": 0.07}}}, 1047.0),
        "bf16": _effect_payload("bf16", {"maps": {"world": {"dpl_bf16": _stats(0.181)}}}, 286.0),
    }
    paths = []
    for name, payload in parts.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(payload))
    merged = bench.merge_results([parts["psnr"], parts["world"], parts["bf16"]])
    # every row's methods side by side, and the world row's PSNRs in the PSNR table as one whole run puts them
    assert list(merged["maps"]["world"]) == ["nti", "dpl", "dpl_bf16"]
    assert merged["psnr"] == {"DDIM inversion": 29.5, "NTI (lr 0.05)": 44.0, "NTI + DPL (lr 0.05)": 41.0}
    assert bench.main(["--merge", *map(str, paths)]) == 0
    text = capsys.readouterr().out
    assert "Hardware: host, NVIDIA H200; torch 2.11.0+cu130." in text and "longest wall 1047 s" in text
    assert "| world | dpl_bf16 | loss layers 16x16 | 4 | 0.181 |" in text and "| NTI + DPL (lr 0.05) | 41.00 |" in text
    assert "| world NTI+P2P shape blend=off | 200 | 0.300 |" in text
    # runs of other settings are not merged
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_effect_payload("same", {"maps": {}}, 10.0, n=50)))
    with pytest.raises(SystemExit, match="other settings"):
        bench.main(["--merge", str(paths[0]), str(other)])


def test_paired_differences_are_per_video_and_skip_missing_scores(tmp_path, capsys):
    paired = load("paired_differences")
    a = [{"motion": 0.0, "recolor": 1.0}, {"motion": 0.5}, {"motion": 1.0, "recolor": 0.0}]
    b = [{"motion": 1.0, "recolor": 1.0}, {"motion": 0.5}, {"motion": 1.0, "recolor": 1.0}]
    n, mean, low, high = paired.paired(a, b, "motion")
    assert n == 3 and mean == pytest.approx(1 / 3) and 0.0 <= low <= mean <= high <= 1.0
    n, mean, _, _ = paired.paired(a, b, "recolor")  # the second video has no recolor in either row
    assert n == 2 and mean == pytest.approx(0.5)
    assert paired.paired(a, b, "order") is None
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"vstar": {"plain": {"scores": a}, "tar": {"scores": b}}}))
    assert paired.main([str(path), "--pair", "vstar/plain:vstar/tar", "--metrics", "motion,order"]) == 0
    assert "| vstar/tar − vstar/plain | +0.333 [" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no row 'vstar/both'"):
        paired.main([str(path), "--pair", "vstar/plain:vstar/both"])
    with pytest.raises(SystemExit, match="cannot read .*missing.json as a measurement's JSON"):
        paired.main([str(tmp_path / "missing.json"), "--pair", "vstar/plain:vstar/tar"])


@pytest.mark.slow
def test_same_shape_edits_run_in_their_rows_process(tmp_path):
    """``--rows same,edits-same`` (a process of its own beside ``world,edits``) makes the same-shape edits on that
    process's inversions, and nothing of the world row (a tiny run on the shipped Shapes SD, ~20 s)."""
    bench = load("bench_dpl_effect")
    out = tmp_path / "same.json"
    assert bench.main(["--device", "cpu", "--n", "2", "--steps", "3", "--null-steps", "1", "--token-steps", "1",
                       "--rows", "same,edits-same", "--threads", "1", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted(results["edits"]) == sorted(f"same-shape {m} color blend={b}" for m in ("NTI+P2P", "DPL+P2P")
                                              for b in ("off", "on"))
    assert list(results["maps"]) == ["same"] and all(e["n"] == 2 for e in results["edits"].values())


@pytest.mark.slow
def test_regional_compile_probe_counts_graphs_per_block_class():
    """``probe_regional_compile.py`` on its SD 1.5-layout UNet: the block instances of SD 1.5, no graph break,
    at most one graph per instance, and stock processors share graphs between transformer blocks (the sharing
    regional compilation relies on); the managed count is what RESULTS reports."""
    probe = load("probe_regional_compile")
    pipe = probe.sd15_layout_pipeline()
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 64
    try:
        stock = probe.count(pipe, "Transformer2DModel", managed=False)
        managed = probe.count(pipe, "Transformer2DModel", managed=True)
    finally:
        torch._dynamo.config.recompile_limit = limit
        torch._dynamo.reset()
    assert stock["instances"] == managed["instances"] == 16
    assert stock["graph_breaks"] == managed["graph_breaks"] == 0
    assert 0 < stock["unique_graphs"] < stock["instances"] and stock["unique_graphs"] <= managed["unique_graphs"] <= 16
