"""The cost choices of the optimisation passes: the attention kernel of the backpropagating UNet
calls, the scoped TF32 option, and the sync-free early stop of scenes in a batch. Results must not
move: parity between the kernels (float64), exact equality where the choice cannot act (TF32 on
the CPU), and the exact freeze of a stopped scene."""

from __future__ import annotations

import pytest
import torch

import tiny_models as tm
from attncraft.attention_processors.dpl import DPLConfig
from attncraft.errors import InputError
from attncraft.pipelines import NullTextSettings
from attncraft.pipelines.dpl import real_image_edit_pipeline
from attncraft.pipelines.inversion import (
    EXPLICIT_ATTENTION_BUDGET,
    ModelAdapter,
    attention_map_bytes,
    explicit_attention_wanted,
    tf32_scope,
)

SOURCES = ["a red circle and a blue square", "a circle and a square"]
NOUNS = ["circle", "square"]
INV = dict(num_inference_steps=2, guidance_scale=3.0, null_text=NullTextSettings(inner_steps=2))


@pytest.fixture(scope="module")
def edit_pipe():
    return real_image_edit_pipeline(tm.sd_pipeline())


def _images():
    return [torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]


def _flags():
    return (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
            torch.backends.cuda.math_sdp_enabled())


def _null_pass(pipe, attention):
    """Output and null-embedding gradient of one null-text pass, and the SDPA flags the UNet saw."""
    model = ModelAdapter(pipe, attention=attention)
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(_flags()))
    try:
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(1, 4, 16, 16, generator=gen, dtype=torch.float64)
        null = model.null(1)
        param = null.embeds.detach().double().clone().requires_grad_(True)
        out = model(z, torch.tensor(500), null.with_embeds(param))
        out.pow(2).mean().backward()
        with torch.no_grad():
            model(z, torch.tensor(500), null)  # forward only: the fused kernel whatever the choice
    finally:
        handle.remove()
    return out.detach(), param.grad, seen


def test_explicit_attention_equals_the_fused_kernel_and_is_scoped():
    pipe = tm.sd_pipeline().to(torch.float64)
    before = _flags()
    fused_out, fused_grad, fused_seen = _null_pass(pipe, "fused")
    explicit_out, explicit_grad, explicit_seen = _null_pass(pipe, "explicit")
    assert fused_seen == [before, before]
    assert explicit_seen == [(False, False, True), before]  # math kernel only in the call with gradients
    assert _flags() == before  # restored
    torch.testing.assert_close(explicit_out, fused_out, rtol=0, atol=1e-6)  # outputs are float32
    torch.testing.assert_close(explicit_grad, fused_grad, rtol=1e-9, atol=1e-12)
    auto_out, auto_grad, auto_seen = _null_pass(pipe, "auto")  # auto on the CPU: the fused kernel
    assert auto_seen == [before, before] and torch.equal(auto_out, fused_out) and torch.equal(auto_grad, fused_grad)


def test_the_auto_rule():
    cuda, cpu, f32 = torch.device("cuda"), torch.device("cpu"), torch.float32
    assert explicit_attention_wanted("auto", cuda, f32, None, EXPLICIT_ATTENTION_BUDGET, True)
    assert not explicit_attention_wanted("auto", cuda, f32, None, EXPLICIT_ATTENTION_BUDGET + 1, True)
    assert not explicit_attention_wanted("auto", cuda, f32, torch.bfloat16, 1, True)  # flash is there
    assert not explicit_attention_wanted("auto", cuda, torch.float16, None, 1, True)
    assert not explicit_attention_wanted("auto", cpu, f32, None, 1, True)
    assert not explicit_attention_wanted("auto", cuda, f32, None, 1, False)  # no backward to pay
    assert explicit_attention_wanted("explicit", cpu, f32, None, 10 * EXPLICIT_ATTENTION_BUDGET, True)
    assert not explicit_attention_wanted("explicit", cpu, f32, None, 1, False)
    assert not explicit_attention_wanted("fused", cuda, f32, None, 1, True)
    with pytest.raises(InputError, match="unknown attention choice"):
        explicit_attention_wanted("flash", cuda, f32, None, 1, True)
    with pytest.raises(InputError, match="unknown DPL attention kernel"):
        DPLConfig(attention="flash").validate()


def test_attention_map_bytes_from_the_layers():
    # the tiny UNet: four transformer blocks (one down, two up, mid) at level 1, 8 heads each;
    # a 16x16 latent gives 8x8 = 64 queries, 64 keys for self- and 77 for cross-attention
    assert attention_map_bytes(tm.sd_unet(), 1, (16, 16), 77) == 4 * 8 * 64 * (64 + 77) * 4
    assert attention_map_bytes(tm.sd_unet(), 3, (16, 16), 77) == 3 * 4 * 8 * 64 * (64 + 77) * 4


def test_tf32_scope_sets_and_restores_the_flags():
    precision, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = False
        with tf32_scope("cpu"):
            assert torch.get_float32_matmul_precision() == precision and not torch.backends.cudnn.allow_tf32
        with tf32_scope("cuda", enabled=False):
            assert torch.get_float32_matmul_precision() == precision
        with pytest.raises(RuntimeError, match="inside"):
            with tf32_scope("cuda"):
                assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
                raise RuntimeError("inside")
        assert torch.get_float32_matmul_precision() == precision and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn


def test_tf32_precision_is_fp32_where_there_is_no_tf32(edit_pipe):
    image = _images()[0]
    strict = edit_pipe.invert(image, SOURCES[0], nouns=NOUNS, dpl=DPLConfig(token_steps=2, lr=0.05), **INV)
    tf32 = edit_pipe.invert(image, SOURCES[0], nouns=NOUNS, dpl=DPLConfig(token_steps=2, lr=0.05, precision="tf32"), **INV)
    assert tf32.settings["dpl"]["precision"] == "tf32" and tf32.settings["dpl"]["attention"] == "fused"
    assert torch.equal(tf32.null_embeddings, strict.null_embeddings)
    assert torch.equal(tf32.token_vectors[0], strict.token_vectors[0])
    assert torch.get_float32_matmul_precision() == "highest"


def test_a_scene_below_its_thresholds_keeps_its_vectors_exactly(edit_pipe):
    """Batched token updates: a scene whose losses are already under the thresholds takes no update
    (its vectors bit-identical to the initial ones) while the other scene's move."""
    images = _images()
    probe = edit_pipe.invert(images, SOURCES, nouns=NOUNS, dpl=DPLConfig(token_steps=2), **INV)
    at = probe.extras["dpl_losses"]["at_first"][0]  # L_at of both scenes before any update of step 0
    low = int(at.argmin())
    # T_at constant between the two scenes' values; T_dj and T_bg above any cosine
    config = DPLConfig(token_steps=3, lr=0.05, beta_at=float(at.mean()), alpha_at=1e9, beta_dj=1.01, beta_bg=1.01)
    inv = edit_pipe.invert(images, SOURCES, nouns=NOUNS, dpl=config, **INV)
    updates = inv.extras["dpl_updates"]
    assert updates[0, low] == 0 and updates[0, 1 - low] > 0
    vectors = inv.token_vectors[0]  # (steps, scenes, K, D)
    ids = edit_pipe.tokenizer(NOUNS, add_special_tokens=False).input_ids
    rows = edit_pipe.text_encoder.get_input_embeddings().weight[[i[0] for i in ids]].detach()
    assert torch.equal(vectors[0, low], rows)
    assert not torch.equal(vectors[0, 1 - low], rows)
