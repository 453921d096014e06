"""Prompt words and token spans, the word-swap and refinement mappers, the equalizer, windows, and
the layers derived from each model."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

import tiny_models as tm
from attncraft.attention_processors import discover_layers
from attncraft.attention_processors.prompt_to_prompt import (
    attention_plan,
    equalizer,
    refine_mapper,
    replace_mapper,
    step_window,
    tokenize_prompt,
    window_bounds,
)
from attncraft.errors import InputError
from attncraft.shapes.models import build_shapes_unet


def test_spans_follow_the_tokenizer(clip_tokenizer):
    tok = tokenize_prompt(clip_tokenizer, "a teddybear, and a dog")
    ids = clip_tokenizer("a teddybear, and a dog").input_ids
    # "teddybear," is three tokens (teddy, bear, ","): positions 2, 3, 4 after the start token
    assert tok.words[1] == "teddybear," and tok.spans[1] == (2, 3, 4)
    assert tok.length == len(ids) and tok.eos_position == len(ids) - 1
    assert tok.word_positions("teddybear") == [2, 3, 4] and tok.word_positions("dog") == [7]


def test_dynamic_tokens_collapse_a_multi_token_noun_and_number_repeats(clip_tokenizer):
    tok = tokenize_prompt(clip_tokenizer, "a teddybear and a teddybear", ["teddybear"])
    assert tok.placeholder_names == ("teddybear", "teddybear#2")
    assert tok.encoder_text == "a x and a x"  # one token each; the filler's embedding is replaced
    assert tok.placeholder_positions() == {0: 2, 1: 5}
    plain = tokenize_prompt(clip_tokenizer, "a teddybear and a teddybear", ["teddybear"], collapse=False)
    assert plain.placeholder_spans == {0: (2, 3), 1: (6, 7)}
    # punctuation glued to a single-token noun stays its own token
    glued = tokenize_prompt(clip_tokenizer, "a cat, a dog", ["cat", "dog"])
    assert glued.placeholder_positions() == {0: 2, 1: 5} and glued.spans[1] == (2, 3)
    with pytest.raises(InputError, match="'horse' is not a word of the prompt"):
        tokenize_prompt(clip_tokenizer, "a cat and a dog", ["horse"])
    # an edit prompt takes the source's placeholders by name
    edit = tokenize_prompt(clip_tokenizer, "a cat and a tiger", ["cat", "dog"], names=("cat", "dog"))
    assert edit.placeholder_positions() == {0: 2}


def test_replace_mapper_identity_and_word_swaps(clip_tokenizer):
    src = tokenize_prompt(clip_tokenizer, "a red circle on the left")
    assert torch.equal(replace_mapper(src, src), torch.eye(77))
    same_length = tokenize_prompt(clip_tokenizer, "a blue circle on the left")
    assert torch.equal(replace_mapper(src, same_length), torch.eye(77))
    # a one-token word swapped for a two-token word spreads its attention evenly, later tokens shift
    src2 = tokenize_prompt(clip_tokenizer, "a cat on the left")
    tgt2 = tokenize_prompt(clip_tokenizer, "a teddybear on the left")
    M = replace_mapper(src2, tgt2)
    assert M[2, 2] == 0.5 and M[2, 3] == 0.5 and M[2].sum() == 1.0
    assert M[3, 4] == 1.0 and M[src2.eos_position, tgt2.eos_position] == 1.0  # "on" and end-of-text keep their offset
    # each source token's attention goes somewhere exactly once (the last padding slot falls off the end)
    assert torch.equal(M.sum(1)[:76], torch.ones(76)) and M[:, [2, 3]].sum(0).tolist() == [0.5, 0.5]
    with pytest.raises(InputError, match="replace mode maps word to word"):
        replace_mapper(src, tokenize_prompt(clip_tokenizer, "a big red circle on the left"))


def test_refine_mapper_identity_and_inserted_word(clip_tokenizer):
    src = tokenize_prompt(clip_tokenizer, "a red circle and a blue square")
    index, alpha = refine_mapper(src, src)
    assert torch.equal(index, torch.arange(77)) and torch.equal(alpha, torch.ones(77))
    tgt = tokenize_prompt(clip_tokenizer, "a red circle and a big blue square")
    index, alpha = refine_mapper(src, tgt)
    big = tgt.word_positions("big")
    assert alpha[big].tolist() == [0.0] and alpha.sum() == 76
    assert index[tgt.word_positions("blue")].tolist() == src.word_positions("blue")
    assert index[tgt.eos_position] == src.eos_position


def test_equalizer_scales_only_the_named_words(clip_tokenizer):
    tgt = tokenize_prompt(clip_tokenizer, "a red teddybear")
    eq = equalizer(tgt, {"teddybear": 2.0})
    assert eq[[3, 4]].tolist() == [2.0, 2.0] and eq.sum() == 77 + 2
    with pytest.raises(InputError, match="'cat' to re-weight is not in the prompt"):
        equalizer(tgt, {"cat": 2.0})


def test_windows_are_validated_fractions():
    assert step_window(0.8) == (0.0, 0.8) and step_window((0.2, 0.6)) == (0.2, 0.6)
    assert window_bounds(step_window(0.8), 50) == (0, 40) and window_bounds(step_window(0.4), 50) == (0, 20)
    assert window_bounds((0.0, 0.29), 100) == (0, 29)  # not 28: 0.29 * 100 is 28.999... in floating point
    for bad in (1.5, -0.1, float("nan"), (0.6, 0.2), "0.4", 40):
        with pytest.raises(InputError):
            step_window(bad)


def _sd1_layout_unet():
    """The SD 1.x block layout (3 cross-attention down blocks, 2 layers each) with tiny channels."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 8, 8, 8), layers_per_block=2, sample_size=64, cross_attention_dim=8,
        norm_num_groups=4, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


def test_plan_of_each_model_names_the_right_layers():
    unet = _sd1_layout_unet()
    plan = attention_plan(unet)
    layers = discover_layers(unet).values()
    maps = sorted(la.name for la in layers if plan.map_selector()(la))
    assert maps == sorted([f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2" for i in (0, 1)]
                          + [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2" for i in (0, 1, 2)])
    inject = [la for la in layers if plan.injection_selector()(la)]
    # the spec's self-attention replacement set: query length <= 256 at 512 px (latent 64)
    assert len(inject) == 6 and all(la.kind == "self" for la in inject)
    assert {la.resolution((64, 64)) for la in inject} == {(16, 16), (8, 8)}
    assert sum(la.place == "mid" for la in inject) == 1
    assert plan.resolution(plan.map_level, (64, 64)) == (16, 16)
    assert plan.resolution(plan.map_level, (96, 96)) == (24, 24)  # SD 2.x at 768 px
    assert plan.resolution(plan.background_self_level, (64, 64)) == (32, 32)
    # Shapes SD: its five 16x16 cross-attention layers, 8x8 coarser
    shapes = attention_plan(build_shapes_unet())
    assert shapes.resolution(shapes.map_level, (16, 16)) == (16, 16)
    assert shapes.background_self_level == shapes.map_level
    names = [la.name for la in discover_layers(build_shapes_unet()).values() if shapes.map_selector()(la)]
    assert len(names) == 5
    # tiny SDXL (cross-attention only at one level besides the mid block)
    xl = attention_plan(tm.sdxl_unet())
    assert xl.map_level == 1 and xl.mid_level == 1
