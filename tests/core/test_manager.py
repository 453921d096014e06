"""Installing, removing and composing techniques; layer selection; the run context."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import tiny_models as tm
from attncraft.attention_processors import (
    CROSS_ATTENTION,
    TEMPORAL_ATTENTION,
    AttentionStore,
    AttentionTechnique,
    AttncraftAttnProcessor,
    apply_techniques,
    get_manager,
    select_layers,
)
from attncraft.errors import TechniqueError


class Recorder(AttentionTechnique):
    """Records every call it sees (and optionally edits scores)."""

    def __init__(self, selector, name="rec", order=100, log=None, edit=None):
        super().__init__(selector)
        self.name, self.order = name, order
        self.log = log if log is not None else []
        self.edit = edit
        self.calls = []

    def edit_scores(self, call, scores):
        self.log.append(self.name)
        self.calls.append((call.layer.name, call.step_index, call.timestep, call.resolution,
                           call.num_frames, call.batch_size,
                           tuple((h.start, h.stop) for h in call.halves()) if call.halves() else None))
        return self.edit(scores) if self.edit else scores


def test_install_touches_only_selected_layers_and_remove_restores_user_processors():
    unet = tm.sd_unet()
    custom = AttnProcessor()  # a user's choice on one self-attention layer
    self_name = next(n for n in unet.attn_processors if n.endswith("attn1.processor"))
    procs = dict(unet.attn_processors)
    procs[self_name] = custom
    unet.set_attn_processor(procs)
    before = dict(unet.attn_processors)

    technique = Recorder(CROSS_ATTENTION)
    manager = get_manager(unet)
    manager.install(technique)
    after = unet.attn_processors
    for key, proc in after.items():
        if key.endswith("attn2.processor"):
            assert isinstance(proc, AttncraftAttnProcessor) and proc.techniques == [technique]
        else:
            assert proc is before[key]
    assert after[self_name] is custom

    manager.remove(technique)
    assert all(unet.attn_processors[k] is v for k, v in before.items())
    assert not manager.tracker.attached


def test_context_manager_removes_on_error():
    unet = tm.sd_unet()
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError):
        with apply_techniques(unet, Recorder(CROSS_ATTENTION)):
            assert any(isinstance(p, AttncraftAttnProcessor) for p in unet.attn_processors.values())
            raise RuntimeError("boom")
    assert all(unet.attn_processors[k] is v for k, v in before.items())


def test_two_techniques_compose_in_documented_order():
    unet = tm.sd_unet()
    log = []
    # installed in the opposite order of their `order`: composition follows `order`, not installation
    late = Recorder(CROSS_ATTENTION, name="late", order=200, log=log, edit=lambda s: s * 2.0)
    early = Recorder(CROSS_ATTENTION, name="early", order=50, log=log, edit=lambda s: s + 1.0)
    store = AttentionStore(CROSS_ATTENTION, cond_only=False, reduce_heads=False)
    g = torch.Generator().manual_seed(0)
    sample, ehs = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, 32, generator=g)
    with apply_techniques(unet, late, early, store) as manager:
        processor = manager.processor(next(iter(manager.layers_for(store))).name)
        assert [t.name for t in processor.techniques] == ["early", "late", "attention-store"]
        with torch.no_grad():
            unet(sample, 10, encoder_hidden_states=ehs)
    n_layers = len(store.layer_names)
    assert log == ["early", "late"] * n_layers

    # the recorded probabilities are softmax(2 * (s + 1)) == softmax(2 s): check against (s * 2 + 1)
    # ordering, which would give the same softmax too, so use a non-commuting check on raw scores
    seen = []

    class Probe(AttentionTechnique):
        order = 300

        def edit_scores(self, call, scores):
            seen.append(scores.detach().clone())
            return scores

    plain = []

    class Plain(AttentionTechnique):
        def edit_scores(self, call, scores):
            plain.append(scores.detach().clone())
            return scores

    with apply_techniques(unet, late, early, Probe(CROSS_ATTENTION)), torch.no_grad():
        unet(sample, 10, encoder_hidden_states=ehs)
    with apply_techniques(unet, Plain(CROSS_ATTENTION)), torch.no_grad():
        unet(sample, 10, encoder_hidden_states=ehs)
    torch.testing.assert_close(seen[0], (plain[0] + 1.0) * 2.0)


def test_technique_selecting_nothing_is_a_clear_error():
    unet = tm.sd_unet()
    with pytest.raises(TechniqueError, match="selects no attention layer"):
        get_manager(unet).install(Recorder(TEMPORAL_ATTENTION))


def test_selection_by_name_pattern_and_level():
    unet = tm.sd_unet()
    layers = get_manager(unet).layers
    by_name = [n for n, layer in layers.items() if select_layers(names=r"^up_blocks.*attn2$")(layer)]
    assert by_name and all(n.startswith("up_blocks") and n.endswith("attn2") for n in by_name)
    level1 = [layer for layer in layers.values() if select_layers(levels=1)(layer)]
    # tiny SD UNet: attention only in the second down block, the mid block and the first up block
    assert {layer.place for layer in level1} == {"down", "mid", "up"}


def test_step_tracking_resolution_and_cfg_halves_through_a_pipeline():
    pipe = tm.sd_pipeline()
    rec = Recorder(CROSS_ATTENTION)
    with apply_techniques(pipe, rec) as manager:
        pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
             generator=torch.Generator().manual_seed(0), output_type="latent")
        first = list(rec.calls)
        rec.calls.clear()
        pipe("a red circle", num_inference_steps=2, guidance_scale=1.0, height=64, width=64,
             generator=torch.Generator().manual_seed(0), output_type="latent")
        second = list(rec.calls)
        assert manager.context.run_index == 1
    layers_per_step = len(first) // 3
    steps = [c[1] for c in first]
    assert steps == sorted(steps) and set(steps) == {0, 1, 2}
    assert all(steps.count(s) == layers_per_step for s in range(3))
    timesteps = [c[2] for c in first[::layers_per_step]]
    assert timesteps == sorted(timesteps, reverse=True)
    # 64 px image -> tiny VAE (factor 2) -> 32x32 latent -> tiny UNet attends at level 1 = 16x16
    assert pipe.vae_scale_factor == 2
    assert {c[3] for c in first} == {(16, 16)}
    assert {c[6] for c in first} == {((0, 1), (1, 2))}  # batched CFG: [uncond; cond]
    assert {c[1] for c in second} == {0, 1}  # a second run starts again at step 0
    assert {c[6] for c in second} == {None}  # guidance 1: no CFG batch


def test_temporal_layers_know_frames_and_resolution():
    pipe = tm.animatediff_pipeline()
    rec = Recorder(TEMPORAL_ATTENTION)
    store = AttentionStore(TEMPORAL_ATTENTION)
    with apply_techniques(pipe, rec, store):
        pipe("a red circle moves right", num_frames=4, num_inference_steps=1, guidance_scale=3.0,
             height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="latent")
    assert rec.calls
    for name, step, t, res, frames, batch, halves in rec.calls:
        assert frames == 4
        h, w = res
        assert batch == 2 * h * w  # (B_cfg * h * w, F, C)
        assert halves == ((0, h * w), (h * w, 2 * h * w))
    maps = store.layer_maps()
    some = next(iter(maps.values()))
    assert some.shape[-2:] == (4, 4)
    torch.testing.assert_close(some.sum(-1), torch.ones_like(some.sum(-1)))


def test_run_start_resets_store_and_notifies():
    pipe = tm.sd_pipeline()
    store = AttentionStore(CROSS_ATTENTION, steps=[0])
    with apply_techniques(pipe, store):
        for _ in range(2):
            pipe("x", num_inference_steps=2, guidance_scale=1.0, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="latent")
    # only step 0 of the last run is kept: one map per layer, averaged over one recording
    assert store.layer_names and all(store.recorded_count(n) == 1 for n in store.layer_names)


def test_xformers_backend_refused_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: refusal path not reachable")
    from attncraft.errors import InputError

    with pytest.raises(InputError, match="xformers"):
        get_manager(tm.sd_unet(), backend="xformers")


def test_xformers_layout_matches_sdpa(fake_xformers):
    from attncraft.attention_processors import backends

    ops = fake_xformers()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g) for n in (5, 7, 7))  # heads 3 != tokens 5, 7
    out = backends._xformers_attention(ops, q, k, v, None)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)


def test_xformers_that_cannot_run_its_kernels_is_refused_with_the_reason(fake_xformers, monkeypatch):
    """An xformers wheel built for another torch imports, then fails at its first call: refused up front."""
    from attncraft.attention_processors import backends
    from attncraft.errors import InputError

    def broken(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:\n  query ...")

    ops = fake_xformers(broken)
    with pytest.raises(InputError, match="kernels do not run.*No operator found") as info:
        get_manager(tm.sd_unet(), backend="xformers")
    assert "\n" not in str(info.value) and "sdpa" in str(info.value)
    fake_xformers()  # a build whose kernels run is accepted
    assert ops is not sys.modules["xformers.ops"] and backends.check_backend("xformers") == "xformers"


@pytest.mark.gpu
def test_xformers_backend_matches_sdpa_on_cuda():
    from attncraft.attention_processors.backends import xformers_problem

    pytest.importorskip("xformers")
    if not torch.cuda.is_available():
        pytest.skip("xformers needs CUDA")
    if xformers_problem() is not None:
        pytest.skip(xformers_problem())
    unet = tm.sd_unet().cuda().half()
    g = torch.Generator(device="cuda").manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, device="cuda", generator=g, dtype=torch.half)
    ehs = torch.randn(2, 77, 32, device="cuda", generator=g, dtype=torch.half)
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        ref = unet(sample, 10, encoder_hidden_states=ehs).sample
        get_manager(unet, backend="xformers").install_core()
        out = unet(sample, 10, encoder_hidden_states=ehs).sample
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_installed_xformers_is_refused_on_cuda_exactly_when_its_kernels_fail():
    """On a real CUDA machine: the up-front probe agrees with an actual xformers call."""
    from attncraft.attention_processors.backends import xformers_problem
    from attncraft.errors import InputError

    xops = pytest.importorskip("xformers.ops")
    if not torch.cuda.is_available():
        pytest.skip("xformers needs CUDA")
    q = torch.randn(2, 64, 8, 40, device="cuda", dtype=torch.half)
    try:
        xops.memory_efficient_attention(q, q, q)
        runs = True
    except Exception:  # noqa: BLE001
        runs = False
    assert (xformers_problem() is None) == runs
    if not runs:
        with pytest.raises(InputError, match="xformers"):
            get_manager(tm.sd_unet(), backend="xformers")


def test_sync_free_step_tracking_matches_value_tracking():
    """The position-in-schedule path (used for device timesteps) gives the same steps and runs."""
    pipe = tm.sd_pipeline()
    seen = {}
    for mode in ("values", "positions"):
        rec = Recorder(CROSS_ATTENTION)
        with apply_techniques(pipe, rec) as manager:
            first_run = manager.context.run_index + 1
            if mode == "positions":
                manager.tracker.read_values_on = frozenset()  # treat CPU like a device: no value reads
            for steps in (3, 2):
                pipe("x", num_inference_steps=steps, guidance_scale=1.0, height=64, width=64,
                     generator=torch.Generator().manual_seed(0), output_type="latent")
            seen[mode] = ([c[1] for c in rec.calls], [c[2] for c in rec.calls], manager.context.run_index - first_run)
            if mode == "positions":
                assert manager.tracker._last_position is not None  # the position path was taken
    assert seen["values"] == seen["positions"]
    steps = seen["positions"][0]
    per_step = steps.count(0) // 2
    assert steps == [0] * per_step + [1] * per_step + [2] * per_step + [0] * per_step + [1] * per_step
    assert seen["positions"][2] == 1  # two runs


def test_xformers_missing_cuda_runtime_is_named_with_the_package_that_fixes_it(fake_xformers):
    """xformers built for CUDA 12 on a CUDA 13 torch: its extension failed to load libcudart.so.12.
    The refusal names the library and the pip package that provides it."""
    import types

    from attncraft.attention_processors import backends
    from attncraft.errors import InputError

    def broken(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward`")

    fake_xformers(broken)
    cpp_lib = types.ModuleType("xformers._cpp_lib")
    load_error = RuntimeError("xFormers can't load C++/CUDA extensions")
    load_error.__cause__ = OSError("libcudart.so.12: cannot open shared object file: No such file or directory")
    cpp_lib._cpp_library_load_exception = load_error
    sys.modules["xformers"]._cpp_lib = cpp_lib
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "xformers._cpp_lib", cpp_lib)
        backends.xformers_problem.cache_clear()
        with pytest.raises(InputError) as info:
            backends.check_backend("xformers")
    message = str(info.value)
    assert "need libcudart.so.12" in message and "pip install nvidia-cuda-runtime-cu12" in message
    assert "\n" not in message
