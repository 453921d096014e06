"""``benchmarks/bench_ctgm.py`` and ``benchmarks/profile_ctgm.py`` run end to end (CPU, tiny pipeline); no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_scripts import load_script

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ctgm.py"


def _script(name: str):
    """A benchmark script of ``benchmarks/`` loaded as a module."""
    module = load_script(BENCH.with_name(f"{name}.py"), name)
    return module


@pytest.mark.slow
def test_benchmark_times_every_variant(tmp_path, capsys):
    bench = _script("bench_ctgm")
    out = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "3", "--size", "16", "--steps", "2",
                       "--rounds", "1", "--warmup", "0", "--json", str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert list(data["summary"]) == ["stock", "tar", "tar_fused", "tar_part", "tar_part_fused", "all"]
    assert data["parameters"]["all"] > data["parameters"]["tar"] > data["parameters"]["tar_part"] > 0
    for variant in bench.VARIANTS:
        (run,) = data["runs"][variant]
        assert len(run["calls_ms"]) == 2 and run["seconds"] > 0
    assert data["summary"]["stock"]["ratio"] == 1.0
    table = capsys.readouterr().out
    assert "| all |" in table and "| tar_part |" in table and "on all 4 cross-attention sites (" in table


@pytest.mark.slow
def test_profile_script_profiles_stock_and_each_variant(capsys):
    profile = _script("profile_ctgm")
    assert profile.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--frames", "3", "--size", "32",
                         "--steps", "1", "--variants", "tar,tar_part", "--top", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("#### ")]
    assert [h.split(":")[0] for h in heads] == ["#### stock", "#### tar", "#### tar_part"]
    assert all("ms of CPU self time" in h and float(h.split(": ")[1].split()[0]) > 0 for h in heads)
    assert out.count("Self CPU time total") == 3


@pytest.mark.slow
def test_attention_benchmark_times_every_path_and_agrees(capsys):
    bench = _script("bench_ctgm_attention")
    assert bench.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--calls", "1"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    named = {r[0].strip(): r for r in rows}
    for name in ("explicit, softmax in fp32", "SDPA, math, heads of 9", "SDPA, math, heads padded to 16",
                 "ShortSequenceProcessor (explicit, fp32 softmax)"):
        assert float(named[name][1]) > 0 and float(named[name][2]) < 1e-5, name


@pytest.mark.slow
def test_attention_benchmark_times_tars_kernel_against_the_eager_modules(capsys):
    bench = _script("bench_ctgm_attention")
    assert bench.main(["--tiny", "--device", "cpu", "--calls", "1", "--kernel-only", "--configs", "4x4"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    named = {r[0].strip(): [c.strip() for c in r] for r in rows}
    eager, fused = named["eager modules"], named["fused kernel, 4 pixels x 4 warps"]  # the kernel in Triton's interpreter
    hybrid = named["hybrid: library products, Triton attention over the frames"]
    assert hybrid[1] == "fp16" and float(hybrid[3]) > 0 and 0 < float(hybrid[4]) < 3e-3
    assert eager[1] == fused[1] == "fp16" and float(eager[3]) > 0 and float(fused[3]) > 0
    assert 0 < float(fused[4]) < 3e-3 and 0 < float(eager[4]) < 3e-3  # both as close to the fp32 modules
    with pytest.raises(SystemExit, match="is not PIXELSxWARPS"):
        bench.main(["--tiny", "--device", "cpu", "--kernel-only", "--configs", "4by4"])
