"""DPL and the real-image edit pipeline on tiny models: frozen weights, the reduction to NTI, trivial
edits, SDXL and v-prediction, and the pipeline's diffusers behaviours."""

from __future__ import annotations

import warnings

import pytest
import torch

import tiny_models as tm
from attncraft.attention_processors import get_manager
from attncraft.attention_processors.dpl import DPLConfig
from attncraft.errors import InputError
from attncraft.pipelines import NullTextSettings, RealImageEditPipeline, RealImageEditXLPipeline
from attncraft.pipelines.dpl import real_image_edit_pipeline

SOURCE = "a red circle and a blue square"
NOUNS = ["circle", "square"]
INV = dict(num_inference_steps=2, guidance_scale=3.0, null_text=NullTextSettings(inner_steps=2))


@pytest.fixture(scope="module")
def edit_pipe():
    return real_image_edit_pipeline(tm.sd_pipeline())


def _image(seed=0):
    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_only_the_dynamic_tokens_move(edit_pipe):
    unet_before = {k: v.clone() for k, v in edit_pipe.unet.state_dict().items()}
    table_before = edit_pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    flags = [p.requires_grad for p in edit_pipe.unet.parameters()]
    inv = edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=3, lr=0.05), **INV)
    assert int(inv.extras["dpl_updates"].sum()) > 0  # the vectors were updated...
    vectors = inv.token_vectors[0]
    assert not torch.equal(vectors[0, 0], _initial(edit_pipe))
    # ...and nothing else: every row of the embedding table and every UNet weight is bit-identical
    assert torch.equal(edit_pipe.text_encoder.get_input_embeddings().weight, table_before)
    for k, v in edit_pipe.unet.state_dict().items():
        assert torch.equal(v, unet_before[k]), k
    assert all(p.grad is None for p in edit_pipe.unet.parameters())
    assert all(p.grad is None for p in edit_pipe.text_encoder.parameters())
    assert [p.requires_grad for p in edit_pipe.unet.parameters()] == flags  # restored afterwards
    assert inv.settings["placeholder_names"] == [NOUNS] and vectors.shape == (2, 1, 2, 32)
    assert get_manager(edit_pipe).context.cfg_batched is None  # the conditional-only passes leave no trace


def test_a_given_background_replaces_the_clustering(edit_pipe):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, :16] = True  # the left half is background; the map level of this model is 8x8
    inv = edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=2), background_mask=mask[None], **INV)
    given = inv.extras["background"].masks[0]
    assert given.shape == (8, 8) and given[:, :4].all() and not given[:, 4:].any()
    with pytest.raises(InputError, match="background_mask has shape"):
        edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=True, background_mask=torch.zeros(2, 3, 8, 8), **INV)


def _initial(pipe):
    ids = pipe.tokenizer(NOUNS, add_special_tokens=False).input_ids
    return pipe.text_encoder.get_input_embeddings().weight[[i[0] for i in ids]].detach()


def test_dpl_without_token_updates_is_nti_exactly(edit_pipe):
    nti = edit_pipe.invert(_image(), SOURCE, **INV)
    off = edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=1), **INV)
    assert torch.equal(off.null_embeddings, nti.null_embeddings)
    assert torch.equal(off.trajectory, nti.trajectory)
    a = edit_pipe(off, "a green circle and a blue square", output_type="latent").images
    b = edit_pipe(nti, "a green circle and a blue square", output_type="latent").images
    assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["replace", "refine"])
def test_editing_with_the_source_prompt_reproduces_the_reconstruction(edit_pipe, mode):
    inv = edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=2, lr=0.05), **INV)
    out = edit_pipe(inv, SOURCE, mode=mode, cross_replace=0.5, self_replace=(0.0, 1.0), local_blend="circle",
                    output_type="latent").images
    assert torch.equal(out[1], out[0])


def test_empty_windows_give_plain_sampling_of_the_edit_prompt(edit_pipe):
    inv = edit_pipe.invert(_image(), SOURCE, **INV)
    target = "a green circle and a blue square"
    edited = edit_pipe(inv, target, cross_replace=0.0, self_replace=0.0, output_type="latent").images[1]
    as_source = inv.select([0])
    as_source.settings["prompts"] = [target]
    plain = edit_pipe(as_source, None, output_type="latent").images[0]
    assert torch.allclose(edited, plain, atol=1e-5)


def test_noun_problems_are_clear(edit_pipe):
    with pytest.raises(InputError, match="'horse' is not a word"):
        edit_pipe.invert(_image(), SOURCE, nouns=["horse"], dpl=True, **INV)
    with pytest.raises(InputError, match="DPL needs the nouns"):
        edit_pipe.invert(_image(), SOURCE, dpl=True, **INV)
    with pytest.warns(UserWarning, match="fewer than two dynamic tokens"):
        edit_pipe.invert(_image(), SOURCE, nouns=["circle"], dpl=DPLConfig(token_steps=2), **INV)


def test_multi_token_noun_and_repeated_noun(edit_pipe):
    inv = edit_pipe.invert(_image(), "a teddybear and a red circle and a blue circle", nouns=["teddybear", "circle"],
                           dpl=DPLConfig(token_steps=2), **INV)
    assert inv.settings["placeholder_names"] == [["teddybear", "circle", "circle#2"]]
    out = edit_pipe(inv, "a teddybear and a green circle and a blue circle", output_type="np")
    assert out.images.shape == (2, 32, 32, 3)


def test_sdxl_and_v_prediction_and_diffusers_behaviours(tmp_path):
    xl = real_image_edit_pipeline(tm.sdxl_pipeline())
    assert isinstance(xl, RealImageEditXLPipeline)
    inv = xl.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=2), **INV)
    assert len(inv.token_vectors) == 2 and inv.null_pooled is not None  # one set per text encoder
    out = xl(inv, "a green circle and a blue square", output_type="np")
    assert out.images.shape == (2, 32, 32, 3)
    v = real_image_edit_pipeline(tm.sd_pipeline(prediction_type="v_prediction"))
    inv = v.invert(_image(), SOURCE, **INV)
    seen = []
    out = v(inv, "a green circle and a blue square", output_type="pil",
            callback_on_step_end=lambda pipe, i, t, kw: seen.append(i) or kw)
    assert len(out.images) == 2 and seen == [0, 1] and out.nsfw_content_detected is None
    images, nsfw = v(inv, None, output_type="np", return_dict=False)
    assert images.shape == (1, 32, 32, 3)
    v.save_pretrained(tmp_path / "saved")
    again = RealImageEditPipeline.from_pretrained(tmp_path / "saved")
    assert torch.equal(again(inv, None, output_type="latent").images, v(inv, None, output_type="latent").images)


def test_precision_option_runs(edit_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = edit_pipe.invert(_image(), SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=2, precision="bf16"), **INV)
    assert inv.settings["dpl"]["precision"] == "bf16" and torch.isfinite(inv.null_embeddings).all()
