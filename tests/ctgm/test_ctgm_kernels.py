"""TAR's fused Triton kernel (``attncraft/attention_processors/ctgm_kernels.py``), run in Triton's CPU
interpreter: the same function as the eager temporal modules on random inputs and random weights (every
zero-initialised projection drawn), within the rounding of the weights' dtype; frame 0 untouched; the
GroupNorm statistics chained between modules; partial tiles, one frame, frames past 16, other token
counts; the checks that send a call to the eager path; and the technique's switch. fp16 only: the
interpreter's bf16 matrix products are wrong (Triton 3.6: a bf16 ``tl.dot`` there returns garbage), so
bf16 is checked on the GPU (``benchmarks/bench_ctgm_attention.py --kernel`` compares both dtypes)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from attncraft.attention_processors.ctgm import CTGM, CTGMLayer, TemporalModule  # noqa: E402
from attncraft.errors import InputError, TechniqueError  # noqa: E402
from ctgm_helpers import call_unet, trained_like  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    """ctgm_kernels, its kernels compiled for CUDA or (tests/conftest.py) run in Triton's CPU interpreter."""
    from attncraft.attention_processors import ctgm_kernels

    if not ctgm_kernels.interpreting():
        if not torch.cuda.is_available():
            pytest.skip("Triton was imported before TRITON_INTERPRET was set, and there is no GPU")
        pytest.skip("run on the CPU interpreter (GPU parity: benchmarks/bench_ctgm_attention.py --kernel)")
    assert type(ctgm_kernels._temporal_module_kernel).__name__ == "InterpretedFunction"
    return ctgm_kernels


def random_modules(tokens: int, count: int = 2, heads: int = 8, seed: int = 0) -> list[TemporalModule]:
    """Temporal modules over ``tokens`` channels with every weight random (none is the identity)."""
    torch.manual_seed(seed)
    modules = [TemporalModule(tokens, heads, 32) for _ in range(count)]
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if name.endswith("weight") and ("norm" in name):
                    param.copy_(1.0 + 0.2 * torch.randn_like(param))
                elif param.ndim > 1:
                    param.copy_(torch.randn_like(param) / param.shape[1] ** 0.5)
                else:
                    param.copy_(0.1 * torch.randn_like(param))
    return [m.eval().requires_grad_(False) for m in modules]


def layer_of(modules) -> CTGMLayer:
    layer = CTGMLayer.__new__(CTGMLayer)
    torch.nn.Module.__init__(layer)
    layer.tar = torch.nn.ModuleList(modules)
    layer.name = "test"
    return layer


def errors(scores, frames, hw, modules, dtype, kernels):
    """Relative error of the kernel's and of the eager modules' refinement (modules in ``dtype``, the
    scores in their own) against the eager modules in fp32: ``||out - ref|| / ||ref - scores||``."""
    reference = layer_of(modules).refine_scores(scores.float(), frames, hw, False, "eager")
    low = [m.to(dtype) for m in modules]
    fused = kernels.fused_tar(low, scores, frames)
    eager = layer_of(low).refine_scores(scores, frames, hw, False, "eager")
    [m.float() for m in modules]
    change = (reference - scores.float()).norm()
    return fused, ((fused.float() - reference).norm() / change).item(), ((eager.float() - reference).norm() / change).item()


@pytest.mark.parametrize("case", [
    # fp32 scores and fp16 modules: what the core hands TAR in an fp16 pipeline; 9 pixels: a partial tile
    dict(clips=2, frames=6, heads=1, hw=(3, 3), tokens=77, scores=torch.float32, modules=2),
    dict(clips=1, frames=2, heads=1, hw=(2, 2), tokens=16, scores=torch.float16, modules=2),  # one frame; 1 channel a group
    dict(clips=1, frames=20, heads=1, hw=(2, 3), tokens=77, scores=torch.float32, modules=3),  # 19 frames (32 padded); 3 chained
    dict(clips=1, frames=4, heads=2, hw=(1, 4), tokens=77, scores=torch.float16, modules=1),  # one module: no statistics out
])  # fmt: skip
def test_the_kernel_computes_the_eager_modules(kernels, case):
    g = torch.Generator().manual_seed(3)
    frames, (h, w) = case["frames"], case["hw"]
    scores = 2.0 * torch.randn(case["clips"] * frames, case["heads"], h * w, case["tokens"], generator=g) + 1.0
    scores = scores.to(case["scores"])
    modules = random_modules(case["tokens"], case["modules"])
    with torch.no_grad():
        fused, kernel_error, eager_error = errors(scores, frames, (h, w), modules, torch.float16, kernels)
    assert fused.dtype == scores.dtype and fused.shape == scores.shape and torch.isfinite(fused).all()
    # as close to the fp32 modules as the eager modules in fp16 are (about 1e-3)
    assert kernel_error < 3e-3, (kernel_error, eager_error)
    assert kernel_error < 1.5 * eager_error + 1e-4, (kernel_error, eager_error)
    view = (case["clips"], frames, case["heads"], h * w, case["tokens"])
    assert torch.equal(fused.view(view)[:, 0], scores.view(view)[:, 0])  # frame 0, bit for bit


def test_the_layer_takes_the_kernel_where_it_can_and_says_why_not(kernels, monkeypatch):
    g = torch.Generator().manual_seed(4)
    frames, hw = 3, (1, 4)
    scores = torch.randn(frames, 1, 4, 77, generator=g).half()
    layer = layer_of([m.half() for m in random_modules(77)])
    with torch.no_grad():
        fused = kernels.fused_tar(layer.tar, scores, frames)
        assert torch.equal(layer.refine_scores(scores, frames, hw, False, "triton"), fused)
        assert torch.equal(layer.refine_scores(scores, frames, hw, True, "triton"), scores + fused)  # faithful: 2 S + delta
        eager = layer.refine_scores(scores, frames, hw, False, "eager")
        # "auto" (the default) takes the kernel on CUDA only, never the interpreter: CPU scores run eager
        assert torch.equal(layer.refine_scores(scores, frames, hw, False), eager)
        assert torch.equal(layer.refine_scores(scores, frames, hw, False, "auto"), eager)
        assert kernels.fused_tar_problem(layer.tar, scores, frames, allow_interpreter=False) == "the scores are not on a CUDA device"
        assert not torch.equal(eager, fused) and torch.allclose(eager.float(), fused.float(), atol=0.05, rtol=0.01)
        with pytest.raises(TechniqueError, match="fused kernel cannot run here: the kernel runs fp16 or bf16 modules"):
            layer.float().refine_scores(scores.float(), frames, hw, False, "triton")
        layer.half()
    with pytest.raises(TechniqueError, match="gradients are wanted"):
        layer.tar[0].proj_in.weight.requires_grad_(True)
        layer.refine_scores(scores, frames, hw, False, "triton")
    layer.requires_grad_(False)
    assert "2 to 33 frames" in kernels.fused_tar_problem(layer.tar, scores, 34)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # outside the interpreter the kernel wants CUDA tensors
    assert kernels.fused_tar_problem(layer.tar, scores, frames) == "the scores are not on a CUDA device"
    with pytest.raises(InputError, match="unknown TAR kernel 'fast'.*auto, eager, triton"):
        layer.refine_scores(scores, frames, hw, False, "fast")


def test_the_technique_passes_its_kernel_choice_to_tar(kernels, unet, monkeypatch):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="tar"), std=0.2)
    with pytest.raises(InputError, match="unknown TAR kernel"):
        ctgm.technique(tar_kernel="fast")
    assert ctgm.technique().settings()["tar_kernel"] == "auto"  # the kernel where it can run (CUDA)
    half = ctgm.half()  # the UNet stays fp32 (fp16 convolutions crawl on a CPU); TAR's modules in fp16
    eager = call_unet(unet, half.technique(tar_kernel="eager", follow_unet=False))
    # The tiny UNet's TAR takes minutes in the interpreter: a stand-in kernel, which returns the eager
    # refinement, shows which calls reach it and that its result is what the UNet goes on with.
    seen = []

    def stand_in(modules, scores, num_frames):
        seen.append(scores.shape)
        layer = next(l for l in half.layers.values() if l.tar is modules)
        return layer.refine_scores(scores, num_frames, HW_OF[scores.shape[2]], False, "eager")

    HW_OF = {16: (4, 4), 4: (2, 2)}
    monkeypatch.setattr(kernels, "fused_tar", stand_in)
    assert torch.equal(call_unet(unet, half.technique(tar_kernel="triton", follow_unet=False)), eager)
    assert len(seen) == len(half.layers) and all(shape[-1] == 77 for shape in seen)
    seen.clear()
    call_unet(unet, half.technique(follow_unet=False))  # "auto" on CPU tensors: the eager modules
    assert not seen
    monkeypatch.setattr(kernels, "fused_tar_problem", lambda *a, **k: None)  # as on a GPU
    assert torch.equal(call_unet(unet, half.technique(tar_kernel="auto", follow_unet=False)), eager)
    assert len(seen) == len(half.layers)


def test_the_launch_configuration_that_triton_miscompiles_is_refused(kernels):
    # 8 warps on 64 rows (4 pixels x 16 frames) read shared memory out of bounds (compute-sanitizer, H200)
    assert "8 warps on 64 rows" in kernels.launch_problem(4, 8, 16)
    assert "8 warps on 32 rows" in kernels.launch_problem(2, 8, 16)  # refused too: fewer than 16 rows a warp
    assert kernels.launch_problem(8, 8, 16) is None  # 128 rows ran clean under compute-sanitizer
    assert kernels.launch_problem(4, 8, 33) is None  # 32 frames a sequence: 128 rows
    assert kernels.launch_problem(4, 4, 16) is None and kernels.launch_problem(1, 4, 2) is None
    assert "power of two" in kernels.launch_problem(3, 4, 16)
    assert "num_warps must be 1, 2, 4 or 8" in kernels.launch_problem(4, 16, 16)
    layer = layer_of([m.half() for m in random_modules(77)])
    scores = torch.randn(16, 1, 4, 77).half()
    with pytest.raises(ValueError, match="fused_tar: 8 warps on 64 rows"):
        kernels.fused_tar(layer.tar, scores, 16, block_pixels=4, num_warps=8)


def test_a_kernel_that_fails_to_compile_sends_auto_to_the_eager_modules(kernels, monkeypatch):
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    assert CompilationError in kernels.compile_errors() and OutOfResources in kernels.compile_errors()
    monkeypatch.setattr(kernels, "_FAILED", {})
    layer = layer_of([m.half() for m in random_modules(77)])
    frames, hw = 3, (1, 4)
    scores = torch.randn(frames, 1, 4, 77, generator=torch.Generator().manual_seed(5)).half()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise OutOfResources(300000, 232448, "shared memory")

    monkeypatch.setattr(kernels, "fused_tar", failing)
    with torch.no_grad():
        eager = layer.refine_scores(scores, frames, hw, False, "eager")
        with pytest.raises(TechniqueError, match=r"cannot run here: compiling the kernel failed on this device \(OutOfResources: out of resource: shared memory"):
            layer.refine_scores(scores, frames, hw, False, "triton")
        assert kernels.fused_tar_problem(layer.tar, scores, frames).startswith("compiling the kernel failed")
        monkeypatch.setattr(kernels, "_FAILED", {})
        real_problem = kernels.fused_tar_problem
        monkeypatch.setattr(kernels, "fused_tar_problem", lambda *a, **k: real_problem(*a, **{**k, "allow_interpreter": True}))
        with pytest.warns(UserWarning, match="TAR runs its eager modules: compiling the kernel failed"):
            assert torch.equal(layer.refine_scores(scores, frames, hw, False, "auto"), eager)
        assert len(calls) == 2
        assert torch.equal(layer.refine_scores(scores, frames, hw, False, "auto"), eager)  # remembered: no retry, no warning
        assert len(calls) == 2


def test_the_check_script_runs_one_configuration_and_refuses_the_miscompiled_one(kernels, capsys):
    from bench_scripts import load_script

    script = load_script("check_tar_kernel")
    assert script.main(["--device", "cpu", "--size", "2", "--config", "2x4", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2x4 at 2x2 ran clean (fp16)") and 0 < float(out.split()[-1]) < 3e-3
    with pytest.raises(SystemExit, match="error: fused_tar: 8 warps on 64 rows .* pass --force to launch it anyway"):
        script.main(["--device", "cpu", "--size", "2", "--config", "4x8"])
    assert kernels.launch_problem(4, 8, 16) is not None  # --force puts the check back
    with pytest.raises(SystemExit, match="is not PIXELSxWARPS"):
        script.main(["--device", "cpu", "--config", "4"])
    assert script.main(["--device", "cpu", "--size", "2", "--config", "4x8", "--frames", "3", "--force"]) == 0
    assert kernels.launch_problem(4, 8, 16) is not None


def test_compiled_resources_reads_the_launched_kernels_handles(kernels, monkeypatch):
    from types import SimpleNamespace

    layer = layer_of([m.half() for m in random_modules(77)])
    with torch.no_grad():
        kernels.fused_tar(layer.tar, torch.randn(3, 1, 4, 77).half(), 3)
    assert kernels.compiled_resources() == []  # the interpreter launches no compiled kernel
    handle = SimpleNamespace(n_regs=255, n_spills=466, metadata=SimpleNamespace(shared=49408))
    monkeypatch.setattr(kernels, "_COMPILED", {(4, 4, True): handle, (2, 4, False): SimpleNamespace(n_regs=None)})
    assert kernels.compiled_resources() == [{"block_pixels": 4, "num_warps": 4, "statistics": True, "registers": 255,
                                             "spilled_bytes": 466, "shared_bytes": 49408}]  # fmt: skip


def test_the_packed_weights_are_made_once_and_follow_changes_of_the_weights(kernels):
    modules = [m.half() for m in random_modules(77)]
    frames, hw = 3, (1, 4)
    scores = torch.randn(frames, 1, 4, 77, generator=torch.Generator().manual_seed(6)).half()
    with torch.no_grad():
        first = kernels.fused_tar(modules, scores, frames)
        packed = kernels._PACKED[modules[0]][1]
        assert torch.equal(kernels.fused_tar(modules, scores, frames), first)
        assert kernels._PACKED[modules[0]][1] is packed  # reused, not rebuilt
        modules[0].transformer_blocks[0].attn2.to_q.weight.mul_(3.0)  # an in-place change of the second attention
        changed = kernels.fused_tar(modules, scores, frames)
        assert kernels._PACKED[modules[0]][1] is not packed
        eager = layer_of(modules).refine_scores(scores, frames, hw, False, "eager")
    assert not torch.equal(changed, first)
    assert torch.allclose(changed.float(), eager.float(), atol=0.05, rtol=0.01)
    assert (changed.float() - eager.float()).norm() < 0.1 * (first.float() - eager.float()).norm()


def test_the_ab_script_times_another_copy_of_the_kernel_beside_this_one(kernels, capsys, tmp_path):
    from pathlib import Path

    from bench_scripts import load_script

    script = load_script("ab_tar_kernel")
    copy = tmp_path / "before.py"
    copy.write_text(Path(kernels.__file__).read_text())  # the same kernel: both rows must agree
    assert script.main(["--before", str(copy), "--device", "cpu", "--tiny", "--configs", "2x4", "--sizes", "2",
                        "--frames", "3", "--rounds", "2", "--calls", "1"]) == 0  # fmt: skip
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| fp16")]
    assert len(rows) == 1
    before_error, after_error = float(rows[0][6]), float(rows[0][7])
    assert before_error == after_error and 0 < after_error < 3e-3 and float(rows[0][3]) > 0
    with pytest.raises(SystemExit, match="is not a file"):
        script.main(["--before", str(tmp_path / "missing.py"), "--device", "cpu"])
    (tmp_path / "other.py").write_text("x = 1\n")
    with pytest.raises(SystemExit, match="has no fused_tar"):
        script.main(["--before", str(tmp_path / "other.py"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="--configs is PIXELSxWARPS"):
        script.main(["--before", str(copy), "--device", "cpu", "--configs", "2by4"])


@pytest.mark.parametrize("case", [
    dict(clips=2, frames=6, heads=2, hw=(3, 3), tokens=77, scores=torch.float32, modules=2),  # 9 pixels: a partial block
    dict(clips=1, frames=2, heads=1, hw=(2, 2), tokens=16, scores=torch.float16, modules=1),  # one frame
    dict(clips=1, frames=20, heads=1, hw=(2, 3), tokens=77, scores=torch.float32, modules=3),  # 19 frames (32 padded)
])  # fmt: skip
def test_the_hybrid_form_computes_the_eager_modules(kernels, case):
    g = torch.Generator().manual_seed(7)
    frames, (h, w) = case["frames"], case["hw"]
    scores = (2.0 * torch.randn(case["clips"] * frames, case["heads"], h * w, case["tokens"], generator=g) + 1.0).to(case["scores"])
    modules = random_modules(case["tokens"], case["modules"])
    with torch.no_grad():
        reference = layer_of(modules).refine_scores(scores.float(), frames, (h, w), False, "eager")
        low = [m.half() for m in modules]
        hybrid = kernels.hybrid_tar(low, scores, frames, block_sequences=4)
        eager = layer_of(low).refine_scores(scores, frames, (h, w), False, "eager")
        fused = kernels.fused_tar(low, scores, frames)
    change = (reference - scores.float()).norm()
    hybrid_error = ((hybrid.float() - reference).norm() / change).item()
    eager_error = ((eager.float() - reference).norm() / change).item()
    assert hybrid.dtype == scores.dtype and hybrid.shape == scores.shape
    assert hybrid_error < 3e-3 and hybrid_error < 2.0 * eager_error + 1e-4, (hybrid_error, eager_error)
    assert torch.allclose(hybrid.float(), fused.float(), atol=0.05, rtol=0.01)
    view = (case["clips"], frames, case["heads"], h * w, case["tokens"])
    assert torch.equal(hybrid.view(view)[:, 0], scores.view(view)[:, 0])  # frame 0, bit for bit
    with pytest.raises(ValueError, match="block_sequences must be a power of two"):
        kernels.hybrid_tar(low, scores, frames, block_sequences=3)
