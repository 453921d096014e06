"""diffusers' standard pipeline behaviours with the core processor on every layer: outputs equal to
the stock pipeline's (``tests/pipeline_checks.py``), and what slicing and fused QKV mean under it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0, SlicedAttnProcessor

import tiny_models as tm
from attncraft.attention_processors import (
    CROSS_ATTENTION,
    AttentionStore,
    AttentionTechnique,
    AttncraftAttnProcessor,
    get_manager,
)
from pipeline_checks import generate, run_standard_checks

SD_CALL = dict(prompt="a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=5.0)
VIDEO_CALL = dict(prompt="a red circle moves right", num_frames=2, num_inference_steps=2, height=32, width=32,
                  guidance_scale=5.0)
KINDS = {"sd": (tm.sd_pipeline, SD_CALL), "animatediff": (tm.animatediff_pipeline, VIDEO_CALL)}


def _with_core(factory):
    def make():
        pipe = factory()
        get_manager(pipe).install_core()
        return pipe
    return make


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_standard_behaviours_with_the_core_on_every_layer_equal_stock(kind, tmp_path):
    factory, call = KINDS[kind]
    stock = factory()  # one stock pipeline: the checks leave it as they found it
    run_standard_checks(_with_core(factory), call, tmp_path, reference=lambda: stock,
                        prepare=lambda pipe: get_manager(pipe).install_core())


def test_fused_qkv_under_the_core_is_bit_exact_with_fused_stock():
    stock, pipe = tm.sd_pipeline(), tm.sd_pipeline()
    manager = get_manager(pipe)
    manager.install_core()
    plain = generate(stock, SD_CALL)
    stock.fuse_qkv_projections()
    fused = generate(stock, SD_CALL)

    pipe.fuse_qkv_projections()  # diffusers puts FusedAttnProcessor2_0 everywhere ...
    manager.install_core()  # ... and the core goes back on top, projecting with the fused weights
    processors = list(pipe.unet.attn_processors.values())
    assert all(isinstance(p, AttncraftAttnProcessor) and p.fused_projections for p in processors)
    assert all(isinstance(p.replaced, FusedAttnProcessor2_0) for p in processors)
    assert np.array_equal(generate(pipe, SD_CALL), fused)

    pipe.unfuse_qkv_projections()  # restores the processors from before fusing: our unfused ones
    manager.install_core()
    processors = list(pipe.unet.attn_processors.values())
    assert all(isinstance(p, AttncraftAttnProcessor) and not p.fused_projections for p in processors)
    assert all(isinstance(p.replaced, AttnProcessor2_0) for p in processors)
    assert np.array_equal(generate(pipe, SD_CALL), plain)
    manager.remove_all()
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())


def test_attention_slicing_slices_the_layers_without_a_technique():
    """Slicing is a memory saving for layers no technique uses; technique layers keep the core."""
    pipe = tm.sd_pipeline()
    plain = generate(pipe, SD_CALL)
    store = AttentionStore(CROSS_ATTENTION, cond_only=False)
    with get_manager(pipe).applied(store) as manager:
        pipe.enable_attention_slicing(slice_size=1)
        out = generate(pipe, SD_CALL)
        for name, layer in manager.layers.items():
            kind = AttncraftAttnProcessor if layer.kind == "cross" else SlicedAttnProcessor
            assert isinstance(manager.processor(name), kind), name
            if layer.kind == "cross":
                assert isinstance(manager.processor(name).replaced, SlicedAttnProcessor)
        assert sorted(store.layer_names) == sorted(n for n, layer in manager.layers.items() if layer.kind == "cross")
    assert all(isinstance(p, SlicedAttnProcessor) for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(out, plain, atol=1e-4)


def test_the_context_asks_the_pipeline_that_runs_the_unet():
    """A pipeline made with from_pipe shares the UNet (and its manager): CFG halves follow the caller."""
    pipe = tm.sd_pipeline()
    halves = []

    class Halves(AttentionTechnique):
        def edit_probs(self, call, probs):
            halves.append(call.halves())
            return probs

    with get_manager(pipe).applied(Halves(CROSS_ATTENTION)):
        generate(pipe, SD_CALL)  # CFG: [uncond; cond]
        assert halves[-1] == (slice(0, 1), slice(1, 2))
        other = type(pipe).from_pipe(pipe)
        other.set_progress_bar_config(disable=True)
        generate(other, {**SD_CALL, "guidance_scale": 1.0}, num_images_per_prompt=2)  # two images, no CFG
        assert halves[-1] is None
