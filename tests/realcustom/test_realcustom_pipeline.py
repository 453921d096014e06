"""RealCustomPipeline / RealCustomXLPipeline: guidance algebra, passes per step, diffusers behaviours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPVisionConfig, CLIPVisionModel

import tiny_models as tm
from attncraft.attention_processors.processor import AttncraftAttnProcessor
from attncraft.errors import InputError, TechniqueError
from attncraft.pipelines.realcustom import (
    RealCustomPipeline,
    RealCustomPipelineOutput,
    RealCustomXLPipeline,
    realcustom_guidance,
)
from attncraft.realcustom.encoder import wrap_vision_model
from attncraft.realcustom.modules import RealCustomAdapter

PROMPT = "a red circle on the left"
SIZE = dict(height=32, width=32)


def _encoder():
    torch.manual_seed(5)
    return wrap_vision_model(CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                                              num_attention_heads=2, image_size=32, patch_size=8)))


def _pipe(cls=RealCustomPipeline, base=None):
    pipe = cls.from_pipe(base or tm.sd_pipeline())
    pipe.set_progress_bar_config(disable=True)
    encoder = _encoder()
    pipe.load_realcustom(RealCustomAdapter.from_unet(pipe.unet, encoder.hidden_size, init="text", seed=1), encoder)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return _pipe()


@pytest.fixture(scope="module")
def subject():
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_guidance_algebra():
    torch.manual_seed(0)
    p = {k: torch.randn(2, 4, 8, 8) for k in ("uncond", "text", "image")}
    cfg = p["uncond"] + 7.5 * (p["text"] - p["uncond"])
    assert torch.equal(realcustom_guidance("paper", p, 7.5, 0.0), cfg)
    assert torch.allclose(realcustom_guidance("paper", p, 7.5, 12.5), cfg + 12.5 * (p["image"] - p["text"]))
    assert torch.allclose(realcustom_guidance("release", p, 1.0, 99.0), p["image"], atol=1e-6)
    assert torch.allclose(realcustom_guidance("release", p, 3.5, 0.0), p["uncond"] + 3.5 * (p["image"] - p["uncond"]))


@pytest.mark.parametrize("settings", [dict(image_guidance_scale=0.0), dict(gamma_scope=0.0, image_guidance_scale=9.0)])
def test_no_image_guidance_or_a_zero_mask_is_plain_cfg(pipe, subject, settings):
    plain = StableDiffusionPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    ref = plain(PROMPT, num_inference_steps=3, guidance_scale=6.0, generator=_gen(), output_type="np", **SIZE).images
    out = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=3, guidance_scale=6.0,
               generator=_gen(), output_type="np", **SIZE, **settings).images
    assert np.abs(out - ref).max() < 1e-4
    # the subject does change the image when it is allowed to
    moved = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=3, guidance_scale=6.0,
                 generator=_gen(), output_type="np", image_guidance_scale=9.0, **SIZE).images
    assert np.abs(moved - ref).max() > 1e-3


def _count_calls(pipe):
    sizes = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, k: sizes.append((a[0] if a else k["sample"]).shape[0]),
                                                 with_kwargs=True)
    return sizes, handle


@pytest.mark.parametrize("mode,mask_pass,reuse,expected", [
    ("paper", "batched", None, [1, 2] + [3] * 3),
    ("paper", "batched", 2, [1, 2] + [3] * 3),
    ("release", "batched", None, [1, 2, 3, 3, 2]),
    ("release", "batched", 2, [1, 2] + [2] * 3),
    ("paper", "separate", None, [1, 2] * 4),
    ("paper", "separate", 3, [1, 2] * 3 + [3]),
    ("release", "separate", 2, [1, 2, 1, 2, 2, 2]),
    ("release", "conditional", None, [1, 2, 2, 2, 2]),
    ("paper", "conditional", None, [1, 2] + [3] * 3),
])
def test_unet_calls_per_step_and_mask_reuse(pipe, subject, mode, mask_pass, reuse, expected):
    sizes, handle = _count_calls(pipe)
    try:
        out = pipe([PROMPT, "a blue circle at the top"], subject_image=subject, subject_word="circle", num_inference_steps=4,
                   guidance_mode=mode, use_scoring=None if mode == "paper" else False, mask_pass=mask_pass,
                   mask_reused_step=reuse, generator=_gen(), output_type="latent", **SIZE)
    finally:
        handle.remove()
    assert sizes == [2 * n for n in expected]
    assert out.masks.shape == (4, 2, 8, 8)
    if reuse is not None:
        for i in range(reuse, 4):
            assert torch.equal(out.masks[i], out.masks[reuse - 1])
    if mask_pass != "separate":  # step 1 uses step 0's mask (of z_0); later steps read their own
        assert torch.equal(out.masks[1], out.masks[0])
    assert ((out.masks > 0).flatten(2).sum(-1) == 16).all()  # 25 % of 8x8


@pytest.mark.parametrize("mode", ["release", "paper"])
def test_conditional_mask_is_read_from_the_text_and_image_rows(subject, mode):
    """``mask_pass="conditional"`` reads the word map of the text + image rows: with a visual branch
    that adds nothing (``to_v_vision`` zeroed) those rows are the text-only rows, so masks and
    latents equal the batched read's; with the branch acting, the masks differ."""
    pipe = _pipe()
    settings = dict(subject_image=subject, subject_word="circle", num_inference_steps=4, guidance_mode=mode,
                    use_scoring=None if mode == "paper" else False, image_guidance_scale=5.0, output_type="latent", **SIZE)
    acting = {p: pipe(PROMPT, mask_pass=p, generator=_gen(), **settings) for p in ("batched", "conditional")}
    assert (acting["batched"].masks[2:] - acting["conditional"].masks[2:]).abs().amax() > 1e-4
    with torch.no_grad():
        for name in pipe.realcustom_adapter.layer_names:
            pipe.realcustom_adapter.kv(name).to_v_vision.weight.zero_()
    idle = {p: pipe(PROMPT, mask_pass=p, generator=_gen(), **settings) for p in ("batched", "conditional")}
    assert torch.allclose(idle["batched"].masks, idle["conditional"].masks, atol=1e-6)
    assert torch.allclose(idle["batched"].images, idle["conditional"].images, atol=1e-5)


def test_plain_without_subject_tuple_output_and_a_clean_unet(pipe, subject, tmp_path):
    out = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=2, num_images_per_prompt=2,
               generator=_gen(), **SIZE)
    assert isinstance(out, RealCustomPipelineOutput) and len(out.images) == 2 and out.images[0].size == (32, 32)
    latent = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=1, output_type="latent",
                  return_dict=False, **SIZE)
    assert latent[0].shape == (1, 4, 16, 16) and latent[2].shape == (1, 1, 8, 8)
    # the UNet is left as it was: no attncraft processor remains
    assert not any(isinstance(p, AttncraftAttnProcessor) for p in pipe.unet.attn_processors.values())
    # without a subject it is the diffusers pipeline, bit for bit; save/load keeps the base model
    plain = StableDiffusionPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    a = pipe(PROMPT, num_inference_steps=2, generator=_gen(), output_type="np", **SIZE).images
    b = plain(PROMPT, num_inference_steps=2, generator=_gen(), output_type="np", **SIZE).images
    assert np.array_equal(a, b)
    pipe.save_pretrained(tmp_path / "saved")
    again = RealCustomPipeline.from_pretrained(tmp_path / "saved", local_files_only=True)
    assert again.realcustom_adapter is None
    with pytest.raises(TechniqueError, match="load_realcustom"):
        again(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=1, **SIZE)


def test_standard_diffusers_behaviours_with_a_subject(tmp_path):
    from pipeline_checks import (
        check_attention_slicing,
        check_batch_matches_single,
        check_callback_on_step_end,
        check_freeu,
        check_from_pipe,
        check_fused_qkv,
        check_output_types,
        check_save_load,
    )

    encoder = _encoder()
    base = tm.sd_pipeline()
    adapter = RealCustomAdapter.from_unet(base.unet, encoder.hidden_size, init="text", seed=1)

    def make():
        pipe = RealCustomPipeline.from_pipe(tm.sd_pipeline())
        pipe.set_progress_bar_config(disable=True)
        return pipe.load_realcustom(adapter, encoder)

    call = dict(prompt=PROMPT, subject_image=torch.rand(3, 32, 32, generator=_gen(3)), subject_word="circle",
                num_inference_steps=2, image_guidance_scale=4.0, **SIZE)
    check_output_types(make, call)
    check_batch_matches_single(make, call, prompts=(PROMPT, "a blue circle at the top"))
    check_callback_on_step_end(make, call)
    check_save_load(make, call, tmp_path, prepare=lambda p: p.load_realcustom(adapter, encoder))
    check_from_pipe(make, call)  # the loaded RealCustom parts come along
    check_attention_slicing(make, call)
    check_fused_qkv(make, call)
    check_freeu(make, call)


def test_bad_settings_are_one_line_errors(pipe, subject):
    call = dict(subject_image=subject, num_inference_steps=1, **SIZE)
    with pytest.raises(InputError, match="not in the prompt"):
        pipe(PROMPT, subject_word="star", **call)
    with pytest.raises(InputError, match="gamma_num"):
        pipe(PROMPT, subject_word="circle", gamma_num=0.0, **call)
    with pytest.raises(InputError, match="release guidance has no scoring"):
        pipe(PROMPT, subject_word="circle", guidance_mode="release", use_scoring=True, **call)
    with pytest.raises(InputError, match="2 subject images for 1 prompts"):
        pipe(PROMPT, subject_word="circle", subject_image=torch.rand(2, 3, 32, 32), num_inference_steps=1, **SIZE)


def test_sdxl_pipeline_runs_and_is_plain_sdxl_without_a_subject(subject):
    pipe = _pipe(RealCustomXLPipeline, base=tm.sdxl_pipeline())
    plain = StableDiffusionXLPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    a = pipe(PROMPT, num_inference_steps=2, generator=_gen(), output_type="np", **SIZE).images
    b = plain(PROMPT, num_inference_steps=2, generator=_gen(), output_type="np", **SIZE).images
    assert np.array_equal(a, b)
    out = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=2, guidance_mode="release",
               mask_reused_step=1, generator=_gen(), output_type="np", **SIZE)
    assert out.images.shape == (1, 32, 32, 3) and np.isfinite(out.images).all()
    # the mask lives at the highest cross-attention resolution: latent / 2 on SDXL's layout
    assert out.masks.shape == (2, 1, 8, 8) and torch.equal(out.masks[0], out.masks[1])
    zero = pipe(PROMPT, subject_image=subject, subject_word="circle", num_inference_steps=2, image_guidance_scale=0.0,
                guidance_scale=5.0, generator=_gen(), output_type="np", **SIZE).images
    ref = plain(PROMPT, num_inference_steps=2, guidance_scale=5.0, generator=_gen(), output_type="np", **SIZE).images
    assert np.abs(zero - ref).max() < 1e-4
