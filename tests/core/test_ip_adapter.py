"""IP-Adapter with the core processor: loaded before or after installing, through diffusers' own
loader from a local folder (tiny image encoder, random adapter weights), equal to stock IP-Adapter;
scales, per-block scale dicts, masks and two adapters; IP-Adapter and a map-editing technique
acting together on the same layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, IPAdapterAttnProcessor2_0
from PIL import Image

import tiny_models as tm
from attncraft.attention_processors import (
    ALL_LAYERS,
    CROSS_ATTENTION,
    AttentionStore,
    AttentionTechnique,
    AttncraftAttnProcessor,
    get_manager,
)
from attncraft.attention_processors.context import AttentionContext
from attncraft.attention_processors.layers import describe_layer
from attncraft.attention_processors.processor import AttncraftIPAdapterAttnProcessor
from pipeline_checks import generate

KINDS = {
    "sd": (tm.sd_pipeline, dict(prompt="a red circle", num_inference_steps=2, height=32, width=32, guidance_scale=5.0)),
    "animatediff": (tm.animatediff_pipeline, dict(prompt="a red circle moves right", num_frames=2, num_inference_steps=2,
                                                  height=32, width=32, guidance_scale=5.0)),
}
WEIGHTS = ("ip-adapter.safetensors", "ip-adapter-b.safetensors")


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


@pytest.fixture(scope="module")
def ip_folder(tmp_path_factory):
    """kind -> a folder with two IP-Adapters (different random weights) and the tiny image encoder."""
    folders = {}
    for kind, (factory, _) in KINDS.items():
        folder = tmp_path_factory.mktemp(f"ip-{kind}")
        unet = factory().unet
        tm.write_ip_adapter(unet, folder, seed=0, weight_name=WEIGHTS[0])
        tm.write_ip_adapter(unet, folder, seed=1, weight_name=WEIGHTS[1], with_encoder=False)
        folders[kind] = folder
    return folders


def _load(pipe, folder, count: int = 1) -> None:
    names = list(WEIGHTS[:count])
    pipe.load_ip_adapter(str(folder), subfolder="models", weight_name=names if count > 1 else names[0])


def _cross_names(pipe) -> list[str]:
    return [n for n, layer in get_manager(pipe).layers.items() if layer.kind == "cross"]


class ScoreScaler(AttentionTechnique):
    """A map editor: sharpens the text-attention maps (scores times 3)."""

    name = "score-scaler"

    def edit_scores(self, call, scores):
        return scores * 3.0


class IdentityEditor(AttentionTechnique):
    """Declares that it edits the maps (explicit path) but changes nothing."""

    def edit_probs(self, call, probs):
        return probs


@pytest.mark.parametrize("order", ["adapter-first", "core-first"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_ip_adapter_with_the_core_equals_stock_ip_adapter(kind, order, ip_folder):
    factory, call = KINDS[kind]
    call = {**call, "ip_adapter_image": _image(0)}
    stock = factory()
    _load(stock, ip_folder[kind])
    expected = generate(stock, call)
    stock.set_ip_adapter_scale(0.0)
    without_image = generate(stock, call)
    assert np.abs(expected - without_image).max() > 1e-3  # the image prompt acts

    pipe = factory()
    manager = get_manager(pipe)
    if order == "adapter-first":
        _load(pipe, ip_folder[kind])
        manager.install_core()
    else:
        manager.install_core()
        _load(pipe, ip_folder[kind])  # diffusers' loader rebuilds every processor (ours with no argument)
        manager.install_core()
    for name, layer in manager.layers.items():
        processor = manager.processor(name)
        assert isinstance(processor, AttncraftAttnProcessor) and processor.bound, name
        assert isinstance(processor, AttncraftIPAdapterAttnProcessor) == (layer.kind == "cross"), name
    assert np.array_equal(generate(pipe, call), expected)

    pipe.set_ip_adapter_scale(0.0)  # reaches our processors (they are IP-Adapter processors for diffusers)
    assert np.array_equal(generate(pipe, call), without_image)
    pipe.set_ip_adapter_scale(1.0)

    manager.remove_all()  # the IP-Adapter processors stay
    for name in _cross_names(pipe):
        assert type(manager.processor(name)) is IPAdapterAttnProcessor2_0
    assert np.array_equal(generate(pipe, call), expected)


def test_adapter_loaded_or_unloaded_under_a_technique_is_picked_up_at_the_next_run(ip_folder):
    factory, call = KINDS["sd"]
    call = {**call, "ip_adapter_image": _image(0)}
    stock = factory()
    _load(stock, ip_folder["sd"])
    with_adapter = generate(stock, call)
    stock.unload_ip_adapter()
    without_adapter = generate(stock, {k: v for k, v in call.items() if k != "ip_adapter_image"})

    pipe = factory()
    store = AttentionStore(CROSS_ATTENTION, cond_only=False)  # an observer: the output stays exact
    with get_manager(pipe).applied(store) as manager:
        _load(pipe, ip_folder["sd"])
        loader_built = {n: manager.processor(n) for n in _cross_names(pipe)}
        assert all(type(p) is IPAdapterAttnProcessor2_0 for p in loader_built.values())
        assert np.array_equal(generate(pipe, call), with_adapter)
        for name, processor in loader_built.items():
            assert isinstance(manager.processor(name), AttncraftIPAdapterAttnProcessor)
            assert manager.processor(name).replaced is processor
            assert manager.processor(name).to_k_ip is processor.to_k_ip
        assert sorted(store.layer_names) == sorted(loader_built)
        # the state dict keeps diffusers' keys, once
        keys = [k for k in pipe.unet.state_dict() if "to_k_ip" in k]
        assert len(keys) == len(loader_built) and all(".processor.to_k_ip.0." in k for k in keys)

        pipe.unload_ip_adapter()
        assert np.array_equal(generate(pipe, {k: v for k, v in call.items() if k != "ip_adapter_image"}),
                              without_adapter)
        assert not any(isinstance(manager.processor(n), AttncraftIPAdapterAttnProcessor) for n in manager.layers)
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())


def test_two_adapters_masks_and_per_block_scales_match_stock(ip_folder):
    factory, call = KINDS["sd"]
    masks = IPAdapterMaskProcessor().preprocess([Image.fromarray(np.tri(32, dtype=np.uint8) * 255),
                                                 Image.fromarray((1 - np.tri(32, dtype=np.uint8)) * 255)],
                                                height=32, width=32)
    call = {**call, "ip_adapter_image": [_image(0), _image(1)],
            "cross_attention_kwargs": {"ip_adapter_masks": [masks[0:1], masks[1:2]]}}
    scales = [{"up": {"block_0": [0.0, 1.0]}}, 0.7]

    def run(pipe, technique=None):
        _load(pipe, ip_folder["sd"], count=2)
        pipe.set_ip_adapter_scale(scales)
        if technique is not None:
            get_manager(pipe).install(technique)
        else:
            get_manager(pipe).install_core()
        return generate(pipe, call)

    stock = factory()
    _load(stock, ip_folder["sd"], count=2)
    stock.set_ip_adapter_scale(scales)
    expected = generate(stock, call)
    stock.set_ip_adapter_scale([{"up": {"block_0": [0.0, 1.0]}}, 0.0])
    assert np.abs(generate(stock, call) - expected).max() > 1e-3  # the second adapter acts
    assert np.array_equal(run(factory()), expected)
    # the explicit path (a map editor that changes nothing): fp32 tolerance
    np.testing.assert_allclose(run(factory(), IdentityEditor(ALL_LAYERS)), expected, atol=1e-5)


def test_ip_adapter_and_a_map_editor_act_together_on_one_layer():
    """With both, the output is the edited text attention plus the image branch: each effect is the
    one it has alone (to_out is affine, so the differences agree to rounding)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8)
    stock_ip = IPAdapterAttnProcessor2_0(hidden_size=32, cross_attention_dim=32, num_tokens=(4,), scale=0.8)
    for linear in (*stock_ip.to_k_ip, *stock_ip.to_v_ip):
        torch.nn.init.normal_(linear.weight, std=0.3)
    hidden, text, image = torch.randn(2, 16, 32), torch.randn(2, 7, 32), torch.randn(2, 4, 32)
    layer = describe_layer("down_blocks.0.attentions.0.transformer_blocks.0.attn2", attn, 2)

    def ours(with_image: bool, editor: bool):
        context = AttentionContext()
        if with_image:
            processor = AttncraftIPAdapterAttnProcessor(stock_ip, layer, context)
        else:
            processor = AttncraftAttnProcessor(layer, context)
        processor.set_techniques([ScoreScaler(ALL_LAYERS)] if editor else [])
        states = (text, [image]) if with_image else text
        return processor(attn, hidden, states)

    with torch.no_grad():
        plain = AttnProcessor2_0()(attn, hidden, text)
        image_only = stock_ip(attn, hidden, (text, [image]))
        assert torch.equal(ours(True, False), image_only)
        edited = ours(False, True)
        both = ours(True, True)
    image_effect, edit_effect = image_only - plain, edited - plain
    assert image_effect.abs().max() > 1e-2 and edit_effect.abs().max() > 1e-2
    torch.testing.assert_close(both - edited, image_effect, rtol=0, atol=1e-5)
    torch.testing.assert_close(both - image_only, edit_effect, rtol=0, atol=1e-5)


def test_ip_adapter_and_a_map_editor_both_change_the_generation(ip_folder):
    factory, call = KINDS["sd"]
    call = {**call, "ip_adapter_image": _image(0)}
    pipe = factory()
    _load(pipe, ip_folder["sd"])
    manager = get_manager(pipe)
    outputs = {}
    for scale in (0.0, 1.0):
        pipe.set_ip_adapter_scale(scale)
        outputs[("image" if scale else "none", "plain")] = generate(pipe, call)
        with manager.applied(ScoreScaler(CROSS_ATTENTION)):
            outputs[("image" if scale else "none", "edited")] = generate(pipe, call)
    image_effect = np.abs(outputs["image", "plain"] - outputs["none", "plain"]).max()
    edit_effect = np.abs(outputs["none", "edited"] - outputs["none", "plain"]).max()
    assert image_effect > 1e-3 and edit_effect > 1e-3
    both = outputs["image", "edited"]
    assert np.abs(both - outputs["image", "plain"]).max() > 1e-3  # the edit acts with the image prompt on
    assert np.abs(both - outputs["none", "edited"]).max() > 1e-3  # the image prompt acts under the edit
