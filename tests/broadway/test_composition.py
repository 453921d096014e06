"""BroadWay and VSTAR on one run: TAR edits the logits, BroadWay the probabilities after the softmax,
so on a layer both select the order is TAR -> softmax -> TSG -> FME, whatever the installation order."""

from __future__ import annotations

import torch

import tiny_models as tm
from attncraft.attention_processors.broadway import BroadWay, resize_reference_map
from attncraft.attention_processors.vstar import TemporalAttentionRegularization
from temporal_probe import Probe, run_latents


def test_tar_runs_before_broadway_and_the_guidance_map_is_the_regularised_one():
    pipe = tm.animatediff_pipeline()
    probe = Probe()

    def techniques():
        return (BroadWay(reference_block=0, tau=3, num_active_steps=1),
                TemporalAttentionRegularization("64D1_32D8", until_time=0))  # fmt: skip

    bw, tar = techniques()
    one = run_latents(pipe, bw, tar, steps=1)
    bw, tar = techniques()
    other = run_latents(pipe, tar, bw, steps=1)
    assert torch.equal(one, other)
    copy = BroadWay(reference_block=0, tau=3, alpha=1.0, motion_enhancement=False, num_active_steps=1)
    run_latents(pipe, TemporalAttentionRegularization("64D1_32D8", until_time=0), copy, probe, steps=1)
    ref = probe.maps[(0, "up_blocks.0.motion_modules.1.transformer_blocks.0.attn2")]  # level 1: after TAR
    target = probe.maps[(0, "up_blocks.1.motion_modules.1.transformer_blocks.0.attn2")]
    assert torch.equal(target, resize_reference_map(ref, (8, 8), (16, 16)))
    assert not torch.equal(run_latents(pipe, *techniques(), steps=1), run_latents(pipe, techniques()[0], steps=1))
