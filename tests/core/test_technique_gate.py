"""``AttentionTechnique.is_active``: techniques that act on some UNet calls only (a step window)."""

from __future__ import annotations

import torch

import tiny_models as tm
from attncraft.attention_processors import CROSS_ATTENTION, AttentionStore, AttentionTechnique, apply_techniques, get_manager


class NoisyScores(AttentionTechnique):
    """Adds noise to the scores, only on the steps in ``steps``; records where its hook ran."""

    def __init__(self, steps):
        super().__init__(CROSS_ATTENTION)
        self.steps, self.ran = set(steps), []

    def is_active(self, context):
        return context.step_index in self.steps

    def edit_scores(self, call, scores):
        self.ran.append(call.step_index)
        return scores + torch.randn(scores.shape, generator=torch.Generator().manual_seed(0))


def run(pipe, *techniques):
    with apply_techniques(pipe, *techniques):
        return pipe("a red circle", num_inference_steps=2, height=32, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images


def test_an_inactive_technique_leaves_the_stock_fused_path_bit_equal():
    pipe = tm.sd_pipeline()
    stock = run(pipe)
    never = NoisyScores(steps=())
    assert (run(pipe, never) == stock).all() and never.ran == []
    later = NoisyScores(steps=(1,))
    assert not (run(pipe, later) == stock).all()
    layers = sum(1 for layer in get_manager(pipe).layers.values() if CROSS_ATTENTION(layer))
    assert layers and later.ran == [1] * layers


def test_observers_keep_their_maps_while_an_editor_on_the_same_layer_is_inactive():
    pipe = tm.sd_pipeline()
    store = AttentionStore(CROSS_ATTENTION, per_step=True)
    editor = NoisyScores(steps=(1,))
    run(pipe, editor, store)
    assert editor.ran and set(editor.ran) == {1}
    assert store.layer_names
    for name in store.layer_names:
        assert sorted(store.step_maps(name)) == [0, 1]


def test_a_one_step_run_after_another_run_starts_at_step_zero():
    """Its only timestep is the last one of the run before (DDIM ends both on t = 1)."""
    pipe = tm.sd_pipeline()
    first = NoisyScores(steps=(0, 1))
    run(pipe, first)
    second = NoisyScores(steps=(0,))
    with apply_techniques(pipe, second):
        pipe("a red circle", num_inference_steps=1, height=32, width=32, output_type="np")
    assert pipe.scheduler.timesteps.tolist() == [1] and second.ran and set(second.ran) == {0}
