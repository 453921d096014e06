"""TextToVideoPipeline: stock parity for one prompt, per-frame embeddings in the UNet's layout, the frame
limit, FreeNoise, techniques per call, and the diffusers behaviours it inherits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline

import tiny_models as tm
from attncraft.attention_processors import AttentionStore, get_manager, select_layers
from attncraft.errors import InputError, TechniqueError
from attncraft.pipelines.text_to_video import TextToVideoPipeline
from attncraft.video.prompts import PromptSchedule
from video_models import KW, seeded


def record_unet_inputs(pipe):
    seen: list[torch.Tensor] = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["encoder_hidden_states"].clone()), with_kwargs=True)
    return seen, handle


def encode(pipe, texts):
    return pipe.encode_prompt(list(texts), torch.device("cpu"), 1, False)[0]


def test_single_prompt_is_bit_equal_to_stock(stock_pipe, video_pipe):
    want = stock_pipe("a red circle", generator=seeded(3), output_type="np", **KW).frames
    got = video_pipe("a red circle", generator=seeded(3), output_type="np", **KW).frames
    assert np.array_equal(want, got)
    # a one-state schedule is the same single prompt
    got = video_pipe({0: "a red circle"}, generator=seeded(3), output_type="np", **KW).frames
    assert np.array_equal(want, got)


def test_unet_receives_per_frame_embeddings_b_major(video_pipe):
    schedules = [{0: "a red circle", 7: "a blue square"}, PromptSchedule.from_states(["a green star", "a white heart", "a red cross"])]
    seen, handle = record_unet_inputs(video_pipe)
    try:
        video_pipe(schedules, generator=[seeded(0), seeded(1)], guidance_scale=5.0, output_type="latent", **KW)
    finally:
        handle.remove()
    assert len(seen) == KW["num_inference_steps"] and all(torch.equal(s, seen[0]) for s in seen)
    e = seen[0]
    F, B = KW["num_frames"], 2
    assert e.shape == (2 * B * F, 77, 32)
    row = lambda half, video, frame: (half * B + video) * F + frame  # noqa: E731 - [uncond; cond], b-major, then frame
    negative = encode(video_pipe, [""])[0]
    states = {t: v for t, v in zip(("a red circle", "a blue square", "a green star", "a white heart", "a red cross"),
                                   encode(video_pipe, ["a red circle", "a blue square", "a green star", "a white heart", "a red cross"]))}
    close = lambda a, b: torch.allclose(a, b, atol=1e-6, rtol=0)  # noqa: E731
    for video in range(B):
        assert all(close(e[row(0, video, f)], negative) for f in range(F))
    for video, anchors in ((0, {0: "a red circle", 7: "a blue square"}), (1, {0: "a green star", 3: "a white heart", 7: "a red cross"})):
        for frame, text in anchors.items():
            assert close(e[row(1, video, frame)], states[text])
        frames = sorted(anchors)
        for a, b in zip(frames, frames[1:]):
            seg = e[row(1, video, a):row(1, video, b) + 1]
            assert (seg[2:] - 2 * seg[1:-1] + seg[:-2]).abs().max() < 1e-5  # linear inside the segment
            mid = a + 1
            w = (mid - a) / (b - a)
            assert close(e[row(1, video, mid)], (1 - w) * states[anchors[a]] + w * states[anchors[b]])


def test_a_schedule_changes_the_video_and_each_state_is_encoded_once(video_pipe):
    calls = []
    handle = video_pipe.text_encoder.register_forward_pre_hook(lambda m, a, k: calls.append((a[0] if a else k["input_ids"]).shape[0]), with_kwargs=True)
    try:
        moving = video_pipe({0: "a red circle", 7: "a blue square"}, generator=seeded(0), output_type="np", **KW).frames
    finally:
        handle.remove()
    assert sum(calls) == 3  # first state + negative, then the second state: one row each
    still = video_pipe("a red circle", generator=seeded(0), output_type="np", **KW).frames
    assert not np.array_equal(moving, still)
    assert np.array_equal(moving[0, 0], moving[0, 0])  # finite, deterministic shape
    assert moving.shape == (1, 8, 32, 32, 3)


def test_frame_limit_is_checked_before_any_work(video_pipe):
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a, **k: calls.append(1)) for m in (video_pipe.unet, video_pipe.text_encoder)]
    try:
        with pytest.raises(InputError, match=r"33 frames exceed this motion adapter's limit of 32 .*--free-noise"):
            video_pipe({0: "a", 20: "b"}, num_frames=33, height=32, width=32, num_inference_steps=2)
        with pytest.raises(InputError, match="whole number >= 1"):
            video_pipe("a", num_frames=0)
        with pytest.raises(InputError, match="anchored at frame 9"):
            video_pipe({0: "a", 9: "b"}, **KW)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


class WholeClipStore(AttentionStore):
    """A temporal technique that needs each call to see the whole clip."""

    supports_frame_windows = False


def test_free_noise_goes_past_the_limit_with_a_schedule_and_composes_with_techniques():
    pipe = TextToVideoPipeline.from_pipe(tm.animatediff_pipeline(seed=0, max_frames=8))
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_frames=12, height=32, width=32, num_inference_steps=2)
    with pytest.raises(InputError, match="limit of 8 frames"):
        pipe("a red circle", **kw)
    pipe.enable_free_noise(context_length=8, context_stride=4)
    seen, handle = record_unet_inputs(pipe)
    try:
        out = pipe({0: "a red circle", 11: "a blue square"}, generator=seeded(0), output_type="np", **kw).frames
    finally:
        handle.remove()
    assert out.shape == (1, 12, 32, 32, 3) and np.isfinite(out).all()
    e = seen[0]
    assert e.shape == (24, 77, 32) and not torch.equal(e[12], e[23])  # per-frame states under FreeNoise too
    with pytest.raises(TechniqueError, match="needs temporal attention over the whole clip, but FreeNoise"):
        pipe("a red circle", techniques=[WholeClipStore(select_layers(kinds="temporal"))], **kw)
    for kinds in ("cross", "temporal"):  # on spatial layers, and on the temporal layers FreeNoise rebuilt
        store = AttentionStore(select_layers(kinds=kinds))
        pipe({0: "a red circle", 11: "a blue square"}, techniques=[store], **kw)
        assert store.layer_maps()
    with pytest.raises(InputError, match="fewer than one FreeNoise window"):
        pipe("a red circle", num_frames=6, height=32, width=32, num_inference_steps=2)


def test_techniques_act_for_the_call_only(video_pipe):
    store = AttentionStore(select_layers(kinds="temporal"))
    video_pipe({0: "a red circle", 7: "a blue square"}, techniques=[store], generator=seeded(0), **KW)
    maps = store.layer_maps()
    assert maps and all("motion_modules" in name for name in maps)
    assert get_manager(video_pipe).techniques == []


def test_callback_sees_and_can_replace_the_frame_embeddings(video_pipe):
    seen_cb, replaced = [], {}

    def callback(pipe, step, timestep, kwargs):
        seen_cb.append(kwargs["prompt_embeds"].shape)
        if step == 0:
            new = kwargs["prompt_embeds"].clone()
            new[8:] = new[8]  # every conditional frame gets frame 0's state
            replaced["t"] = new
            return {"prompt_embeds": new}
        return {}

    seen, handle = record_unet_inputs(video_pipe)
    try:
        video_pipe({0: "a red circle", 7: "a blue square"}, callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"], output_type="latent", **KW)
    finally:
        handle.remove()
    assert seen_cb == [torch.Size([16, 77, 32])] * 2
    assert not torch.equal(seen[0], replaced["t"]) and torch.equal(seen[1], replaced["t"])


def test_output_types_and_free_init(video_pipe):
    latent = video_pipe({0: "a red circle", 7: "a blue square"}, output_type="latent", **KW).frames
    assert latent.shape == (1, 4, 8, 16, 16)
    pt = video_pipe("a red circle", output_type="pt", **KW).frames
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 8, 3, 32, 32)
    video_pipe.enable_free_init(num_iters=2, use_fast_sampling=False)
    try:
        seen, handle = record_unet_inputs(video_pipe)
        try:
            video_pipe({0: "a red circle", 7: "a blue square"}, output_type="latent", **KW)
        finally:
            handle.remove()
    finally:
        video_pipe.disable_free_init()
    assert len(seen) == 4 and all(torch.equal(s, seen[0]) for s in seen)


def test_save_pretrained_writes_a_stock_folder_both_classes_load(video_pipe, tmp_path):
    video_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "AnimateDiffPipeline"
    want = video_pipe({0: "a red circle", 7: "a blue square"}, generator=seeded(1), output_type="np", **KW).frames
    ours = TextToVideoPipeline.from_pretrained(tmp_path / "pipe")
    ours.set_progress_bar_config(disable=True)
    got = ours({0: "a red circle", 7: "a blue square"}, generator=seeded(1), output_type="np", **KW).frames
    # equal weights; the reloaded VAE's CPU kernels may round the last bits differently
    assert np.abs(got - want).max() < 1e-5
    stock = AnimateDiffPipeline.from_pretrained(tmp_path / "pipe")
    assert type(stock) is AnimateDiffPipeline
    back = AnimateDiffPipeline.from_pipe(ours)
    assert type(back) is AnimateDiffPipeline and back.unet is ours.unet
