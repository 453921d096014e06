"""The controllers on tiny models, and PromptToPromptPipeline's diffusers behaviours."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

import tiny_models as tm
from attncraft.attention_processors import AttentionStore, AttentionTechnique, apply_techniques, get_manager, select_layers
from attncraft.attention_processors.prompt_to_prompt import attention_plan, make_controllers, tokenize_prompt
from attncraft.errors import InputError
from attncraft.pipelines import PromptToPromptPipeline, PromptToPromptXLPipeline
from attncraft.pipelines.prompt_to_prompt import prompt_to_prompt_pipeline

RUN = dict(num_inference_steps=2, height=32, width=32, output_type="np")


@pytest.fixture(scope="module")
def p2p():
    return prompt_to_prompt_pipeline(tm.sd_pipeline())


def _cross_maps(pipe, prompts, **kwargs):
    store = AttentionStore(select_layers(kinds="cross"), per_step=True, reduce_heads=False)  # exact per-head maps
    out = pipe(prompts, generator=torch.Generator().manual_seed(0), attention_store=store, **RUN, **kwargs)
    return out, store


def test_replace_with_full_window_copies_the_source_cross_attention(p2p):
    _, store = _cross_maps(p2p, ["a red circle", "a blue circle"], cross_replace=1.0, self_replace=0.0)
    for name in store.layer_names:
        for step, maps in store.step_maps(name).items():
            assert torch.equal(maps[1], maps[0]), (name, step)  # cond rows: [source, edit]
    # outside the window the edit keeps its own maps
    _, free = _cross_maps(p2p, ["a red circle", "a blue circle"], cross_replace=0.0, self_replace=0.0)
    name = free.layer_names[0]
    assert not torch.equal(free.step_maps(name)[0][1], free.step_maps(name)[0][0])


def test_reweight_scales_exactly_the_chosen_columns(p2p, clip_tokenizer):
    _, store = _cross_maps(p2p, ["a red circle", "a red circle"], mode="reweight", reweight={"circle": 2.5},
                           cross_replace=1.0, self_replace=0.0)
    cols = tokenize_prompt(clip_tokenizer, "a red circle").word_positions("circle")
    others = [k for k in range(77) if k not in cols]
    for name in store.layer_names:
        for maps in store.step_maps(name).values():
            assert torch.equal(maps[1][..., cols], maps[0][..., cols] * 2.5)
            assert torch.equal(maps[1][..., others], maps[0][..., others])


def test_self_injection_touches_exactly_the_planned_layers(p2p):
    plan = attention_plan(p2p)
    seen = {}

    class Spy(AttentionTechnique):
        order = 1000

        def edit_probs(self, call, probs):
            rows = call.cond_rows()
            seen.setdefault(call.layer.name, []).append(torch.equal(probs[rows][1], probs[rows][0]))
            return probs

    with apply_techniques(p2p, Spy(select_layers(kinds="self"))):
        p2p(["a red circle", "a blue square"], generator=torch.Generator().manual_seed(0), cross_replace=0.0,
            self_replace=1.0, **RUN)
    planned = {la.name for la in get_manager(p2p).layers.values() if plan.injection_selector()(la)}
    assert planned and {n for n, eq in seen.items() if all(eq)} == planned


def test_local_blend_keeps_the_source_latent_outside_the_mask(p2p):
    checks = []

    def check(pipe, step, t, kwargs):
        lat = kwargs["latents"]
        blend = controllers_of(pipe)
        mask = blend.last_mask[0, 0, 0]
        assert mask.dtype == torch.bool
        checks.append((torch.equal(lat[1][:, ~mask], lat[0][:, ~mask]), bool(mask.any()), bool((~mask).any())))
        return kwargs

    def controllers_of(pipe):
        return next(t for t in get_manager(pipe).techniques if t.name == "p2p-local-blend")

    # a random model's maps are nearly flat (within ~10 % of their maximum): a high threshold gives
    # the mask an inside and an outside
    p2p(["a red circle on the left", "a blue square on the left"], generator=torch.Generator().manual_seed(1),
        local_blend="circle,square", local_blend_threshold=0.97, callback_on_step_end=check, **RUN)
    assert len(checks) == 2 and all(ok for ok, _, _ in checks)
    assert any(inside and outside for _, inside, outside in checks)


def test_controllers_work_on_a_users_own_pipeline(clip_tokenizer):
    pipe = tm.sd_pipeline()
    group = [tokenize_prompt(clip_tokenizer, p) for p in ("a red circle", "a blue circle")]
    controllers = make_controllers(pipe, group, mode="replace", cross_replace=1.0, self_replace=0.0)
    store = AttentionStore(select_layers(kinds="cross"), per_step=True)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2, 4, 16, 16)
    with apply_techniques(pipe, *controllers.techniques, store) as manager:
        manager.start_run(2)
        pipe(["a red circle", "a blue circle"], latents=noise, num_inference_steps=2, height=32, width=32, output_type="np")
    name = store.layer_names[0]
    assert torch.equal(store.step_maps(name)[1][1], store.step_maps(name)[1][0])


def test_no_setting_is_silently_ignored(p2p):
    with pytest.raises(InputError, match="unknown argument 'cross_replace_steps'"):  # the community README's key
        p2p(["a red circle", "a blue circle"], cross_replace_steps=0.4, **RUN)
    with pytest.raises(InputError, match="cross_replace end"):
        p2p(["a red circle", "a blue circle"], cross_replace=40, **RUN)
    with pytest.raises(InputError, match="word to word"):
        p2p(["a red circle", "a big blue circle"], mode="replace", **RUN)
    with pytest.raises(InputError, match="not in the prompt"):
        p2p(["a red circle", "a blue circle"], mode="reweight", reweight={"square": 2.0}, **RUN)
    with pytest.raises(InputError, match="in none of the prompts"):
        p2p(["a red circle", "a blue circle"], local_blend="square", **RUN)


def test_diffusers_behaviours(tmp_path, p2p):
    steps = []
    out = p2p(["a red circle", "a blue circle"], generator=torch.Generator().manual_seed(0),
              callback_on_step_end=lambda pipe, i, t, kw: steps.append(i) or kw, **RUN)
    assert out.images.shape == (2, 32, 32, 3) and steps == [0, 1]
    latents = p2p(["a red circle", "a blue circle"], generator=torch.Generator().manual_seed(0),
                  num_inference_steps=2, height=32, width=32, output_type="latent", return_dict=False)[0]
    assert latents.shape == (2, 4, 16, 16)
    p2p.save_pretrained(tmp_path / "saved")
    again = PromptToPromptPipeline.from_pretrained(tmp_path / "saved")
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(again, PromptToPromptPipeline) and type(plain) is StableDiffusionPipeline
    back = PromptToPromptPipeline.from_pipe(plain)
    again_out = back(["a red circle", "a blue circle"], generator=torch.Generator().manual_seed(0), **RUN)
    assert abs(again_out.images - out.images).max() < 1e-5


def test_sdxl_and_v_prediction():
    xl = prompt_to_prompt_pipeline(tm.sdxl_pipeline())
    assert isinstance(xl, PromptToPromptXLPipeline)
    out = xl(["a red circle", "a blue circle"], generator=torch.Generator().manual_seed(0), local_blend="circle", **RUN)
    assert out.images.shape == (2, 32, 32, 3)
    v = prompt_to_prompt_pipeline(tm.sd_pipeline(prediction_type="v_prediction"))
    out = v(["a red circle", "a blue circle"], generator=torch.Generator().manual_seed(0), **RUN)
    assert out.images.shape == (2, 32, 32, 3)
