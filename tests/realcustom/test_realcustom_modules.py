"""RealCustom's trainable parts: scoring module, adapter layout, strict checkpoints, image encoder."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models as tm
from attncraft.errors import ModelLoadError, TechniqueError
from attncraft.realcustom.modules import (
    METADATA_KEY,
    AdaptiveScoringModule,
    RealCustomAdapter,
    kept_count,
    load_adapter,
    read_config,
    reweight_and_select,
    save_adapter,
)


def test_scoring_module_shapes_sum_to_one_and_fusion_follows_alpha_bar():
    torch.manual_seed(0)
    module = AdaptiveScoringModule(feature_dim=24, text_dim=32, latent_channels=4, hidden=16)
    feats, text, lat = torch.randn(3, 10, 24), torch.randn(3, 77, 32), torch.randn(3, 4, 8, 8)
    out = module(feats, text, lat, torch.tensor([0.1, 0.5, 0.9]))
    assert out.scores.shape == out.textual.shape == out.visual.shape == (3, 10)
    assert torch.allclose(out.scores.sum(-1), torch.ones(3), atol=1e-6)
    # the fusion is (1 - a) S_t + a S_v: a = 0 is the textual score alone, a = 1 the visual one
    assert torch.allclose(module(feats, text, lat, 0.0).scores, out.textual.softmax(-1), atol=1e-6)
    assert torch.allclose(module(feats, text, lat, 1.0).scores, out.visual.softmax(-1), atol=1e-6)
    # scores that do not depend on the feature: the fusion does not depend on alpha_bar
    with torch.no_grad():
        module.visual_score[0].weight.zero_()
        module.text_score[0].weight.zero_()
    assert torch.allclose(module(feats, text, lat, 0.2).scores, module(feats, text, lat, 0.8).scores, atol=1e-6)


def test_selection_keeps_floor_gamma_num_features_and_gradients_reach_every_scoring_part():
    torch.manual_seed(0)
    module = AdaptiveScoringModule(feature_dim=8, text_dim=8, latent_channels=4, hidden=8)
    feats = torch.randn(2, 10, 8, requires_grad=True)
    out = module(feats, torch.randn(2, 5, 8), torch.randn(2, 4, 4, 4), torch.tensor([0.3, 0.7]))
    for gamma, k in ((0.8, 8), (0.3, 3), (1.0, 10), (0.01, 1)):
        assert kept_count(10, gamma) == k
        weights, index = reweight_and_select(out.scores, gamma)
        assert weights.shape == index.shape == (2, k)
        chosen = torch.zeros_like(out.scores, dtype=torch.bool).scatter(1, index, True)
        kept, rest = out.scores.gather(-1, index), out.scores.masked_fill(chosen, -1.0)
        assert (kept.min(1).values >= rest.max(1).values).all()
        assert torch.allclose(weights, 1 + kept)
    weights, index = reweight_and_select(out.scores, 0.5)
    selected = torch.gather(feats, 1, index[..., None].expand(-1, -1, 8)) * weights[..., None]
    selected.pow(2).sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats.grad.abs().sum() > 0


def test_adapter_covers_every_cross_attention_layer_and_zero_value_init_adds_nothing():
    unet = tm.sd_unet()
    adapter = RealCustomAdapter.from_unet(unet, 16, init="zero_value")
    cross = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    assert adapter.layer_names == cross
    for name in cross:
        kv = adapter.kv(name)
        attn = dict(unet.named_modules())[name]
        assert kv.to_k_vision.bias is None and torch.equal(kv.to_k_vision.weight, attn.to_k.weight)
        assert kv.to_v_vision.weight.abs().sum() == 0
    text = RealCustomAdapter.from_unet(unet, 16, init="text")
    assert torch.equal(text.kv(cross[0]).to_v_vision.weight, dict(unet.named_modules())[cross[0]].to_v.weight)


def test_sdxl_size_adapter_has_seventy_layers_of_the_right_widths():
    from diffusers import UNet2DConditionModel

    config = dict(
        sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        adapter = RealCustomAdapter.from_unet(unet, 1152, init="random")
    assert len(unet.attn_processors) == 140
    assert len(adapter.layer_names) == 70
    widths = sorted(set(adapter.config.layers.values()))
    assert widths == [640, 1280]
    assert sum(1 for d in adapter.config.layers.values() if d == 640) == 10
    assert adapter.kv(adapter.layer_names[0]).to_k_vision.in_features == 2048


def test_checkpoint_round_trip_is_fp16_with_its_config(tmp_path):
    unet = tm.sd_unet()
    adapter = RealCustomAdapter.from_unet(unet, 16, init="text", seed=3)
    adapter.config.defaults = {"image_guidance_scale": 4.0}
    path = save_adapter(adapter, tmp_path / "ckpt")
    assert path.name == "realcustom.safetensors"
    assert {str(v.dtype) for v in load_file(str(path)).values()} == {"torch.float16"}
    config = read_config(tmp_path / "ckpt")
    assert config.layers == adapter.config.layers and config.defaults == {"image_guidance_scale": 4.0}
    loaded = load_adapter(path, unet=unet)
    for (k, a), (k2, b) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a.half().float(), b)
    assert loaded.layer_names == adapter.layer_names


def test_strict_loading_names_missing_unexpected_and_misshapen_keys(tmp_path):
    unet = tm.sd_unet()
    adapter = RealCustomAdapter.from_unet(unet, 16, init="text")
    path = save_adapter(adapter, tmp_path / "a.safetensors")
    meta = {METADATA_KEY: adapter.config.to_json()}
    state = load_file(str(path))
    dropped = "projector.fc1.weight"
    broken = {k: v for k, v in state.items() if k != dropped}
    broken["projector.extra.weight"] = torch.zeros(2)
    save_file(broken, str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(ModelLoadError) as err:
        load_adapter(tmp_path / "b.safetensors")
    assert dropped in str(err.value) and "projector.extra.weight" in str(err.value)
    assert "1 missing keys" in str(err.value) and "1 unexpected keys" in str(err.value)
    reshaped = dict(state)
    reshaped[dropped] = torch.zeros(3, 3, dtype=torch.float16)
    save_file(reshaped, str(tmp_path / "c.safetensors"), metadata=meta)
    with pytest.raises(ModelLoadError, match="wrong shape: projector.fc1.weight"):
        load_adapter(tmp_path / "c.safetensors")
    save_file(state, str(tmp_path / "d.safetensors"))
    with pytest.raises(ModelLoadError, match="not a RealCustom checkpoint"):
        load_adapter(tmp_path / "d.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="not a readable"):
        load_adapter(tmp_path / "e.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_adapter(tmp_path / "missing")


def test_a_checkpoint_for_another_unet_is_refused(tmp_path):
    sd = tm.sd_unet()
    path = save_adapter(RealCustomAdapter.from_unet(sd, 16), tmp_path / "sd")
    with pytest.raises(TechniqueError, match="cross-attention width 32; this UNet has 64"):
        load_adapter(path, unet=tm.sdxl_unet())
    other = RealCustomAdapter.from_unet(sd, 16)
    other.config.layers = {("x." + k): v for k, v in other.config.layers.items()}
    with pytest.raises(TechniqueError, match="not in this UNet"):
        other.check_unet(sd)


def test_image_encoder_accepts_any_vision_model_and_images(tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import Dinov2Config, Dinov2Model, SiglipVisionConfig, SiglipVisionModel

    from attncraft.realcustom.encoder import wrap_vision_model

    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    for model, tokens in ((SiglipVisionModel(SiglipVisionConfig(**small)), 16), (Dinov2Model(Dinov2Config(**small)), 17)):
        enc = wrap_vision_model(model)
        image = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype("uint8"))
        a = enc.encode(image)
        b = enc.encode(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
        assert a.shape == (1, tokens, 16) and torch.allclose(a, b, atol=1e-5)
        assert enc.zero_image_states(2).shape == (2, tokens, 16)


def test_the_shipped_shapes_checkpoint_fits_shapes_sd_and_is_small():
    from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, checkpoint_file
    from attncraft.shapes.models import load_shapes_sd_pipeline

    path = checkpoint_file(SHAPES_ADAPTER_DIR)
    if not path.is_file():
        pytest.skip("no RealCustom checkpoint shipped")
    assert path.stat().st_size < 3e6
    adapter = load_adapter(path, unet=load_shapes_sd_pipeline().unet)
    assert adapter.config.encoder == "shapes" and adapter.scoring is not None
    assert {"image_guidance_scale", "gamma_scope", "gamma_num"} <= set(adapter.config.defaults)


def test_shapes_names_realcustoms_own_encoder_not_the_mesh_clip(monkeypatch, tmp_path):
    """``shapes`` loads the vision tower shipped beside the RealCustom parts (the one they were trained on), whose
    features the mesh fine-tune of the shipped CLIP no longer gives; without that folder it falls back to the CLIP."""
    import attncraft.shapes.models as sm
    from attncraft.realcustom.encoder import load_image_encoder, shapes_encoder_dir

    if not (sm.SHAPES_REALCUSTOM_ENCODER_DIR / "config.json").is_file():
        pytest.skip("no RealCustom image encoder shipped")
    assert shapes_encoder_dir() == sm.SHAPES_REALCUSTOM_ENCODER_DIR
    own = load_image_encoder("shapes")
    assert type(own.model).__name__ == "CLIPVisionModel" and own.reference == "shapes"
    x = torch.rand(2, 3, 64, 64)
    mesh_clip = load_image_encoder(str(sm.SHAPES_CLIP_DIR))
    with torch.no_grad():
        ours, theirs = own.encode(x), mesh_clip.encode(x)
    assert ours.shape == theirs.shape and not torch.allclose(ours, theirs, atol=1e-3)
    assert mesh_clip.hidden_size == own.hidden_size
    monkeypatch.setattr(sm, "SHAPES_REALCUSTOM_ENCODER_DIR", tmp_path / "absent")
    assert shapes_encoder_dir() == sm.SHAPES_CLIP_DIR


def test_a_checkpoint_records_the_encoder_it_was_trained_on(tmp_path, monkeypatch):
    import os

    from attncraft.realcustom.encoder import shapes_encoder_dir
    from attncraft.shapes.training.realcustom import encoder_reference

    own = shapes_encoder_dir()
    assert encoder_reference(None) == encoder_reference(own) == "shapes"
    monkeypatch.chdir(own.parent)
    assert encoder_reference(os.path.join(".", own.name)) == "shapes"  # relative, as the GPU scripts pass it
    assert encoder_reference(tmp_path) == str(tmp_path.resolve())
