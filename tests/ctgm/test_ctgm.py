"""CTGM (FancyVideo's cross-frame textual guidance) on the tiny motion UNet and the SD 1.5 layout:
parameter counts against the spec's formula, identities at initialisation, the reference's code
semantics, frame 0, placement per mode, non-square latents, files, and the run-time checks."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetMotionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tiny_models as tm
from attncraft.attention_processors import AttentionTechnique, apply_techniques, get_manager
from attncraft.attention_processors.ctgm import (
    CTGM,
    MODES,
    CrossFrameTextGuidance,
    ctgm_layout,
    formula_parameter_counts,
    group_count,
    load_ctgm,
    resolve_mode,
    save_ctgm,
)
from attncraft.attention_processors.deferred_maps import attention_scores
from attncraft.errors import InputError, TechniqueError
from ctgm_helpers import FRAMES, call_unet, trained_like, unet_inputs

SPEC_TOTALS_M = {"all": 992.5, "tar": 3.72, "tfb": 272.85, "tii": 715.9, "tii-text": 586.0}
"""The spec's CTGM parameter counts on the SD 1.5 layout (section 2.5), in millions, as printed there."""


@pytest.fixture(scope="module")
def sd15():
    with torch.device("meta"):  # the SD 1.5 layout, free: no weights are allocated
        return UNetMotionModel(cross_attention_dim=768)


def test_sd15_sites_and_parameter_counts_are_the_specs(sd15):
    full, part = ctgm_layout(sd15), ctgm_layout(sd15, "part")
    assert len(full) == 16 and [s.name.split(".")[0] for s in full].count("mid_block") == 1
    assert [s.name for s in part] == [
        "down_blocks.0.attentions.0", "down_blocks.1.attentions.0", "down_blocks.2.attentions.0",
        "mid_block.attentions.0", "up_blocks.1.attentions.0", "up_blocks.2.attentions.0", "up_blocks.3.attentions.0",
    ]  # fmt: skip
    assert {s.channels for s in full} == {320, 640, 1280} and {s.text_dim for s in full} == {768}
    with torch.device("meta"):  # two builds hold every component (a component is the same in every mode)
        built = CTGM.for_unet(sd15, text_tokens=77, mode="all").parameter_counts()
        built["tii_text"] = CTGM.for_unet(sd15, text_tokens=77, mode="tii-text").parameter_counts()["tii_text"]
    for mode, millions in SPEC_TOTALS_M.items():
        formula = formula_parameter_counts(full, mode, 77)
        assert all(formula[c] == built[c] for c in MODES[mode])
        digits = len(str(millions).split(".")[1])
        assert round(formula["total"] / 1e6, digits) == millions, (mode, formula["total"])
    # per component, as the spec's table: TII cross 170.24 M, latent refinement 545.70 M, TAR 3.72 M, TFB 272.85 M
    assert [round(built[c] / 1e6, 2) for c in ("tii_cross", "tii_self", "tar", "tfb")] == [170.24, 545.70, 3.72, 272.85]
    with torch.device("meta"):  # LongCLIP's 248 tokens: TAR's channels follow the text encoder
        assert CTGM.for_unet(sd15, text_tokens=248, mode="tar").parameter_counts() == formula_parameter_counts(full, "tar", 248)


@pytest.mark.parametrize("sites", ["all", "part"])
def test_tiny_parameter_counts_per_mode_match_the_formula(unet, sites):
    layout = ctgm_layout(unet, sites)
    assert len(layout) == (4 if sites == "all" else 3)  # down 1, mid 1, up 2; part: the first of each + mid
    for mode in MODES:
        ctgm = CTGM.for_unet(unet, text_tokens=77, mode=mode, sites=sites)
        counts = ctgm.parameter_counts()
        assert counts == formula_parameter_counts(layout, mode, 77)
        assert counts["total"] == sum(p.numel() for p in ctgm.parameters()) > 0
        assert {c for c, n in counts.items() if n and c != "total"} == set(MODES[mode])


def test_modes_aliases_groups_and_bad_names():
    assert resolve_mode("add_scoremap") == "tar" and resolve_mode("add_hiddenstate") == "tfb"
    assert resolve_mode("add_tem_noise_cross_text") == "tii" and resolve_mode("add_temporal_txt") == "tii-text"
    assert resolve_mode("all_stage_2") == "all" and resolve_mode("ALL") == "all"
    assert (group_count(77), group_count(320), group_count(32), group_count(9)) == (11, 32, 32, 9)
    with pytest.raises(InputError, match=r"unknown CTGM mode 'tar\+tfb'.*tii\+tar"):
        resolve_mode("tar+tfb")
    with pytest.raises(InputError, match="unknown CTGM site set"):
        CTGM.for_unet(tm.motion_unet(), text_tokens=77, sites="half")


def test_placement_hooks_and_selected_layers_per_mode(unet):
    attn2 = sorted(n for n in dict(unet.named_modules()) if n.endswith("attn2") and "motion" not in n)
    for mode in ("tar", "tii", "all"):
        technique = CTGM.for_unet(unet, text_tokens=77, mode=mode).technique()
        manager = get_manager(unet)
        assert sorted(layer.name for layer in manager.layers_for(technique)) == attn2
        with apply_techniques(unet, technique):
            hooks = sum(len(unet.get_submodule(s)._forward_pre_hooks) for s in technique.ctgm.sites)
            assert hooks == (4 if "tii_cross" in MODES[mode] else 0)
            assert technique.needs_maps(manager.layers[attn2[0]]) == ("tar" in MODES[mode])
        assert sum(len(unet.get_submodule(s)._forward_pre_hooks) for s in technique.ctgm.sites) == 0
    keys = CTGM.for_unet(unet, text_tokens=77, mode="all").state_dict()
    assert "down_blocks.0.attentions.0.tii_cross.proj_in.weight" in keys
    assert "up_blocks.1.attentions.1.transformer_blocks.0.attn2.tar.1.proj_out.weight" in keys
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.tfb.transformer_blocks.0.attn1.to_q.weight" in keys


@pytest.mark.parametrize("mode", ["tii", "tii-text", "tfb"])
def test_identity_init_is_bit_equal_to_the_unet_without_it(unet, mode):
    stock = call_unet(unet)
    assert torch.equal(call_unet(unet, CTGM.for_unet(unet, text_tokens=77, mode=mode).technique()), stock)


@pytest.mark.parametrize("mode", ["tar", "all"])
def test_identity_init_with_tar_is_the_stock_output_within_fp32_tolerance(unet, mode):
    """TAR needs the scores, so its layers take the explicit attention path (float32 scores and
    softmax) instead of the fused kernel: equal to about 1e-6, not bit for bit."""
    stock = call_unet(unet)
    out = call_unet(unet, CTGM.for_unet(unet, text_tokens=77, mode=mode).technique())
    torch.testing.assert_close(out, stock, atol=1e-5, rtol=1e-5)


class ScoreProbe(AttentionTechnique):
    """Runs after CTGM on its layers: keeps the scores it receives and the plain ``Q K^T / sqrt(d)``."""

    name = "score-probe"
    order = 900

    def __init__(self, names):
        from attncraft.attention_processors import select_layers

        super().__init__(select_layers(kinds="cross", predicate=lambda layer: layer.name in names))
        self.seen = []

    def edit_scores(self, call, scores):
        self.seen.append((scores.clone(), attention_scores(call.query, call.key)))
        return scores


@pytest.mark.parametrize("faithful", [False, True])
def test_tar_logits_at_init_are_exactly_s_or_twice_s(unet, faithful):
    technique = CTGM.for_unet(unet, text_tokens=77, mode="tar", faithful=faithful).technique()
    probe = ScoreProbe(set(technique.ctgm.layers))
    call_unet(unet, technique, probe)
    assert len(probe.seen) == len(technique.ctgm.layers) == 4
    for edited, plain in probe.seen:
        assert torch.equal(edited, 2 * plain if faithful else plain)


class TextCapture:
    """A pre-hook registered after CTGM's: the text each site's transformer receives."""

    def __init__(self, unet, sites):
        self.texts, self.handles = {}, []
        for name in sites:
            hook = (lambda n: lambda module, args, kwargs: self.texts.__setitem__(n, kwargs["encoder_hidden_states"]))(name)
            self.handles.append(unet.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))

    def close(self):
        for handle in self.handles:
            handle.remove()


def capture_texts(unet, ctgm):
    sample, text = unet_inputs()
    with apply_techniques(unet, ctgm.technique()), torch.no_grad():
        capture = TextCapture(unet, ctgm.sites)
        try:
            unet(sample, 500, encoder_hidden_states=text)
        finally:
            capture.close()
    return text, capture.texts


@pytest.mark.parametrize("mode", ["tii", "tii-text"])
def test_per_frame_text_keeps_frame_0_bit_for_bit_and_changes_the_others(unet, mode):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode=mode))
    text, seen = capture_texts(unet, ctgm)
    assert set(seen) == set(ctgm.sites)
    for out in seen.values():
        assert out.shape == text.shape == (2 * FRAMES, 77, 32)  # (B*F, T, D)
        frames_in, frames_out = text.view(2, FRAMES, 77, 32), out.view(2, FRAMES, 77, 32)
        assert torch.equal(frames_out[:, 0], frames_in[:, 0])
        assert all(not torch.equal(frames_out[:, f], frames_in[:, f]) for f in range(1, FRAMES))


def test_faithful_tii_gives_half_the_text_to_later_frames_at_init(unet):
    text, seen = capture_texts(unet, CTGM.for_unet(unet, text_tokens=77, mode="tii", faithful=True))
    frames_in = text.view(2, FRAMES, 77, 32)
    for out in seen.values():
        frames_out = out.view(2, FRAMES, 77, 32)
        assert torch.equal(frames_out[:, 0], frames_in[:, 0])
        assert torch.equal(frames_out[:, 1:], 0.5 * frames_in[:, 1:])
    _, identity = capture_texts(unet, CTGM.for_unet(unet, text_tokens=77, mode="tii"))
    assert all(torch.equal(out, text) for out in identity.values())


def _explicit_tar(module_list, scores, frames, h, w):
    """TAR by hand: for every (clip, head) stack frames 1.. of the (T, h, w) score grids, run the two
    modules, and put them back; frame 0 untouched."""
    nf, heads, q, t = scores.shape
    b = nf // frames
    out = scores.clone()
    for clip in range(b):
        for head in range(heads):
            stack = torch.stack([scores[clip * frames + f, head].T.reshape(t, h, w) for f in range(1, frames)])
            for module in module_list:
                stack = module(stack, frames - 1)
            for f in range(1, frames):
                out[clip * frames + f, head] = stack[f - 1].reshape(t, h * w).T
    return out


def test_tar_and_tfb_on_non_square_grids_match_an_explicit_construction(unet):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="all"))
    layer = next(iter(ctgm.layers.values()))
    frames, (h, w) = 3, (4, 6)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2 * frames, 2, h * w, 77, generator=g)  # 2 clips, 2 heads
    with torch.no_grad():
        torch.testing.assert_close(layer.refine_scores(scores, frames, (h, w), False),
                                   _explicit_tar(layer.tar, scores, frames, h, w), atol=1e-5, rtol=1e-5)  # fmt: skip
        out = torch.randn(2 * frames, h * w, 32, generator=g)
        grids = out.transpose(1, 2).reshape(2 * frames, 32, h, w)
        expected = out + 0.5 * layer.tfb.branch(grids, frames).reshape(2 * frames, 32, h * w).transpose(1, 2)
        torch.testing.assert_close(layer.boost(out, frames, (h, w)), expected)


def test_a_trained_ctgm_runs_on_non_square_latents_and_changes_the_output(unet):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="all"))
    stock = call_unet(unet, hw=(4, 6))
    out = call_unet(unet, ctgm.technique(), hw=(4, 6))
    assert out.shape == stock.shape and torch.isfinite(out).all() and not torch.allclose(out, stock, atol=1e-3)


def test_single_frames_too_many_frames_and_other_text_encoders(unet):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="all", max_frames=FRAMES))
    assert torch.equal(call_unet(unet, ctgm.technique(), frames=1), call_unet(unet, frames=1))  # off for F = 1
    with pytest.raises(TechniqueError, match=f"at most {FRAMES} frames, this run has {FRAMES + 1}"):
        call_unet(unet, ctgm.technique(), frames=FRAMES + 1)
    short = CTGM.for_unet(unet, text_tokens=16, mode="tar")
    with pytest.raises(TechniqueError, match="trained for 16 text tokens.*gets 77"):
        call_unet(unet, short.technique())
    with pytest.raises(InputError, match="has no tfb"):
        CrossFrameTextGuidance(CTGM.for_unet(unet, text_tokens=77, mode="tii+tar"), components=["tar", "tfb"])


def test_components_switch_parts_off_at_inference(unet):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="all"))
    only_tfb = call_unet(unet, ctgm.technique(components=["tfb"]))
    reference = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="tfb"))
    reference.load_state_dict({k: v for k, v in ctgm.state_dict().items() if ".tfb." in k}, strict=False)
    assert torch.equal(only_tfb, call_unet(unet, reference.technique()))


def test_files_are_fp16_strict_and_checked_against_the_unet(unet, tmp_path):
    ctgm = trained_like(CTGM.for_unet(unet, text_tokens=77, mode="tii+tar", sites="part"))
    path = save_ctgm(ctgm, tmp_path / "ctgm.safetensors", training={"steps": 3})
    with safe_open(str(path), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
        assert set(f.keys()) == {n for n, _ in ctgm.named_parameters()}
    loaded = load_ctgm(path, unet)
    assert loaded.config == ctgm.config and loaded.training_record == {"steps": 3} and loaded.source == path
    for (name, a), b in zip(ctgm.named_parameters(), loaded.parameters()):
        assert torch.equal(a.half().float(), b), name
    settings = loaded.technique().settings()
    assert settings["mode"] == "tii+tar" and settings["sites"] == "part" and len(settings["sha256_16"]) == 16

    tensors, metadata = load_file(str(path)), safe_open(str(path), "pt").metadata()
    missing = dict(tensors)
    gone = sorted(missing)[0]
    del missing[gone]
    save_file(missing, str(tmp_path / "missing.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=f"1 missing \\({gone}\\)"):
        load_ctgm(tmp_path / "missing.safetensors")
    extra = dict(tensors, **{"down_blocks.0.attentions.0.tfb.proj_out.weight": torch.zeros(2)})
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match="1 unexpected \\(down_blocks.0.attentions.0.tfb.proj_out.weight\\)"):
        load_ctgm(tmp_path / "extra.safetensors")
    wrong = dict(tensors, **{gone: torch.zeros(3, 3)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"), metadata=metadata)
    with pytest.raises(InputError, match=f"1 of the wrong shape \\({gone} \\(3, 3\\) for"):
        load_ctgm(tmp_path / "wrong.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(InputError, match="is not a CTGM file"):
        load_ctgm(tmp_path / "foreign.safetensors")
    (tmp_path / "ctgm.bin").write_bytes(b"\x80\x04")
    with pytest.raises(InputError, match="extension '.bin'; pass a .safetensors file"):
        load_ctgm(tmp_path / "ctgm.bin")
    with torch.device("meta"):
        other = UNetMotionModel(cross_attention_dim=768)
    with pytest.raises(TechniqueError, match="another UNet layout: this UNet has sites down_blocks.1.attentions.0"):
        load_ctgm(path, other)


def test_a_ctgm_for_another_layout_is_refused_at_install_and_nothing_stays_installed(unet, sd15):
    before = dict(unet.attn_processors)
    with torch.device("meta"):
        foreign = CTGM.for_unet(sd15, text_tokens=77, mode="tfb", sites="part")
    technique = CrossFrameTextGuidance(foreign)
    technique.selector = CrossFrameTextGuidance(CTGM.for_unet(unet, text_tokens=77, mode="tfb")).selector
    with pytest.raises(TechniqueError, match="another UNet layout"):
        with apply_techniques(unet, technique):
            pass
    assert get_manager(unet).techniques == [] and dict(unet.attn_processors) == before
