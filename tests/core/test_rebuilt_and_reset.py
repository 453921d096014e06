"""The manager keeps up with diffusers features that rebuild attention modules (FreeNoise, its split
inference) or replace processors (``set_default_attn_processor``, ``set_attn_processor``)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

import tiny_models as tm
from attncraft.attention_processors import (
    CROSS_ATTENTION,
    TEMPORAL_ATTENTION,
    AttentionTechnique,
    AttncraftAttnProcessor,
    get_manager,
)
from attncraft.errors import TechniqueError
from pipeline_checks import generate

VIDEO_CALL = dict(prompt="a red circle moves right", num_frames=6, num_inference_steps=2, height=32, width=32,
                  guidance_scale=5.0)
WINDOWS = dict(context_length=4, context_stride=2)  # 6 frames -> windows (0, 4) and (2, 6)


class Recorder(AttentionTechnique):
    """Records the module and query length of every call (its score hook forces the explicit path)."""

    name = "recorder"

    def __init__(self, selector):
        super().__init__(selector)
        self.calls = []

    def edit_scores(self, call, scores):
        self.calls.append((call.layer.name, call.attn, call.num_tokens))
        return scores


class WholeClip(Recorder):
    name = "whole-clip"
    supports_frame_windows = False


class RowWise(Recorder):
    name = "row-wise"
    supports_split_batches = True


def _temporal(manager) -> list[str]:
    return [n for n, layer in manager.layers.items() if layer.kind == "temporal"]


def test_free_noise_rebuilt_temporal_layers_keep_the_technique():
    pipe = tm.animatediff_pipeline()
    recorder = Recorder(TEMPORAL_ATTENTION)
    with get_manager(pipe).applied(recorder) as manager:
        names = _temporal(manager)
        before = {n: pipe.unet.get_submodule(n) for n in names}
        pipe.enable_free_noise(**WINDOWS)
        rebuilt = {n: pipe.unet.get_submodule(n) for n in names}
        assert all(rebuilt[n] is not before[n] and type(rebuilt[n].processor) is AttnProcessor2_0 for n in names)
        generate(pipe, VIDEO_CALL)
        seen = {(name, id(attn)) for name, attn, _ in recorder.calls}
        assert seen == {(n, id(rebuilt[n])) for n in names}  # every rebuilt layer, and only the new modules
        assert {tokens for _, _, tokens in recorder.calls} == {WINDOWS["context_length"]}
        assert all(manager.layers[n].frame_windows for n in names)
        assert all(rebuilt[n].processor.techniques == [recorder] for n in names)

        pipe.disable_free_noise()  # rebuilds them once more
        recorder.calls.clear()
        generate(pipe, VIDEO_CALL)
        assert {id(attn) for _, attn, _ in recorder.calls} == {id(pipe.unet.get_submodule(n)) for n in names}
        assert {tokens for _, _, tokens in recorder.calls} == {VIDEO_CALL["num_frames"]}
    assert all(type(pipe.unet.get_submodule(n).processor) is AttnProcessor2_0 for n in names)


def test_install_core_again_puts_the_core_on_rebuilt_layers_bit_exact():
    stock = tm.animatediff_pipeline()
    stock.enable_free_noise(**WINDOWS)
    expected = generate(stock, VIDEO_CALL)

    pipe = tm.animatediff_pipeline()
    manager = get_manager(pipe)
    manager.install_core()
    pipe.enable_free_noise(**WINDOWS)
    dropped = [n for n in manager.layers if not isinstance(pipe.unet.get_submodule(n).processor, AttncraftAttnProcessor)]
    assert dropped == _temporal(manager) and dropped  # FreeNoise dropped the core on every temporal layer
    manager.install_core()
    assert all(isinstance(p, AttncraftAttnProcessor) for p in pipe.unet.attn_processors.values())
    assert np.array_equal(generate(pipe, VIDEO_CALL), expected)


def test_a_technique_that_needs_the_whole_clip_is_refused_under_free_noise():
    pipe = tm.animatediff_pipeline()
    manager = get_manager(pipe)
    technique = manager.install(WholeClip(TEMPORAL_ATTENTION))
    pipe.enable_free_noise(**WINDOWS)
    with pytest.raises(TechniqueError, match="'whole-clip' needs temporal attention over the whole clip") as info:
        generate(pipe, VIDEO_CALL)
    assert "\n" not in str(info.value) and "disable_free_noise" in str(info.value)
    pipe.disable_free_noise()
    generate(pipe, VIDEO_CALL)  # the next run, without FreeNoise, goes ahead
    assert technique.calls
    manager.remove(technique)

    pipe.enable_free_noise(**WINDOWS)
    with pytest.raises(TechniqueError, match="FreeNoise"):
        manager.install(WholeClip(TEMPORAL_ATTENTION))
    assert manager.techniques == []
    manager.install(WholeClip(CROSS_ATTENTION))  # spatial layers are not windowed


def test_split_inference_layers_keep_their_facts_and_refuse_batch_sensitive_techniques():
    expected_kinds = Counter(layer.kind for layer in get_manager(tm.motion_unet()).layers.values())
    pipe = tm.animatediff_pipeline()
    pipe.enable_free_noise(**WINDOWS)
    pipe.enable_free_noise_split_inference(spatial_split_size=16, temporal_split_size=2)
    manager = get_manager(pipe)
    assert Counter(layer.kind for layer in manager.layers.values()) == expected_kinds
    assert all(layer.split_batches and layer.level is not None for layer in manager.layers.values())
    with pytest.raises(TechniqueError, match="split inference"):
        manager.install(Recorder(TEMPORAL_ATTENTION))
    row_wise = manager.install(RowWise(TEMPORAL_ATTENTION))
    generate(pipe, {**VIDEO_CALL, "num_inference_steps": 1})
    assert {tokens for _, _, tokens in row_wise.calls} == {WINDOWS["context_length"]}


def _unet_and_inputs(kind: str):
    g = torch.Generator().manual_seed(1)
    if kind == "sd":
        return tm.sd_unet(), dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor(500),
                                  encoder_hidden_states=torch.randn(2, 77, 32, generator=g))
    return tm.motion_unet(), dict(sample=torch.randn(1, 4, 2, 16, 16, generator=g), timestep=torch.tensor(500),
                                  encoder_hidden_states=torch.randn(2, 77, 32, generator=g))


@pytest.mark.parametrize("kind", ["sd", "motion"])
def test_set_default_attn_processor_works_under_a_technique_and_round_trips(kind):
    unet, inputs = _unet_and_inputs(kind)
    recorder = Recorder(CROSS_ATTENTION)
    manager = get_manager(unet)
    manager.install(recorder)
    unet.set_default_attn_processor()  # refused while the core was installed, before
    resets = dict(unet.attn_processors)
    assert all(type(p) is AttnProcessor for p in resets.values())
    with torch.no_grad():
        unet(**inputs)  # a run start: the manager puts its processors back over the reset ones
    assert {name for name, _, _ in recorder.calls} == {n for n, layer in manager.layers.items() if layer.kind == "cross"}
    for name, layer in manager.layers.items():
        processor = manager.processor(name)
        if layer.kind == "cross":
            assert isinstance(processor, AttncraftAttnProcessor) and processor.replaced is resets[layer.processor_key]
        else:
            assert processor is resets[layer.processor_key]
    manager.remove(recorder)
    assert all(unet.attn_processors[k] is v for k, v in resets.items())


def test_the_core_after_a_reset_is_bit_exact_with_stock_again():
    unet, inputs = _unet_and_inputs("sd")
    with torch.no_grad():
        stock = unet(**inputs).sample
        manager = get_manager(unet)
        manager.install_core()
        unet.set_default_attn_processor()
        classic = unet(**inputs).sample  # AttnProcessor everywhere: the explicit math, not SDPA
        manager.install_core()
        again = unet(**inputs).sample
    torch.testing.assert_close(classic, stock, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, stock)
    assert all(type(p.replaced) is AttnProcessor for p in unet.attn_processors.values())


def test_processors_set_underneath_a_technique_become_its_base():
    unet, inputs = _unet_and_inputs("sd")
    recorder = Recorder(CROSS_ATTENTION)
    manager = get_manager(unet)
    manager.install(recorder)
    users = {key: AttnProcessor2_0() for key in unet.attn_processors}
    unet.set_attn_processor(dict(users))
    manager.sync()  # what the next run start does by itself
    for name, layer in manager.layers.items():
        processor = manager.processor(name)
        expected_base = users[layer.processor_key]
        assert (processor.replaced is expected_base) if layer.kind == "cross" else (processor is expected_base)
    with torch.no_grad():
        unet(**inputs)
    assert recorder.calls
    manager.remove(recorder)
    assert all(unet.attn_processors[k] is v for k, v in users.items())
