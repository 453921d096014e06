"""CTGM through ``apply_techniques`` on diffusers' stock ``AnimateDiffPipeline`` (tiny, CPU, batched
CFG), alone and on one run with VSTAR's TAR and BroadWay."""

from __future__ import annotations

import torch

from attncraft.attention_processors import apply_techniques
from attncraft.attention_processors.broadway import BroadWay
from attncraft.attention_processors.ctgm import CTGM
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from ctgm_helpers import trained_like



def latents(pipe, *techniques):
    generator = torch.Generator().manual_seed(0)
    with apply_techniques(pipe, *techniques):
        return pipe("a red circle moves right, then turns blue", num_frames=4, height=16, width=16,
                    num_inference_steps=1, guidance_scale=7.5, generator=generator, output_type="latent").frames  # fmt: skip


def test_a_trained_ctgm_acts_in_the_stock_pipeline_and_leaves_nothing_behind(pipe):
    stock = latents(pipe)
    ctgm = trained_like(CTGM.for_pipeline(pipe, mode="all"))
    assert ctgm.config.text_tokens == pipe.tokenizer.model_max_length
    out = latents(pipe, ctgm.technique())
    assert out.shape == stock.shape and not torch.allclose(out, stock, atol=1e-4)
    assert torch.equal(latents(pipe), stock)  # removed: processors and hooks gone


def test_ctgm_composes_with_vstar_and_broadway_on_one_run(pipe):
    vstar = TemporalAttentionRegularization(until_time=0)
    alone = latents(pipe, vstar)
    identity = CTGM.for_pipeline(pipe, mode="tii")  # bit-exact at initialisation
    assert torch.equal(latents(pipe, identity.technique(), TemporalAttentionRegularization(until_time=0)), alone)
    ctgm = trained_like(CTGM.for_pipeline(pipe, mode="tii+tar"))
    broadway = dict(reference_block=0, tau=1, num_active_steps=1)
    both = latents(pipe, ctgm.technique(), TemporalAttentionRegularization(until_time=0), BroadWay(**broadway))
    swapped = latents(pipe, BroadWay(**broadway), TemporalAttentionRegularization(until_time=0), ctgm.technique())
    assert torch.equal(both, swapped)  # the order is fixed by the layers and hooks, not by installation
    assert not torch.allclose(both, latents(pipe, TemporalAttentionRegularization(until_time=0), BroadWay(**broadway)))
