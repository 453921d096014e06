"""The shipped Shapes CTGM (``assets/models/shapes-ctgm``, skipped until it is there): it is the one trained
for the shipped shapes SD and motion adapter (its training record names both by the hash of their weights,
so retraining either without CTGM fails here), loads strictly onto the shipped motion UNet, is trained (not
the identity start), and ``ctgm="shapes"`` changes a video run while the run without it stays the same."""

from __future__ import annotations

import pytest
import torch

from attncraft.shapes.models import SHAPES_CTGM_DIR, SHAPES_MOTION_DIR, SHAPES_SD_DIR

SHIPPED = SHAPES_CTGM_DIR / "ctgm-tii-tar.safetensors"
pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped Shapes CTGM (assets/models/shapes-ctgm)")


def test_trained_for_the_shipped_sd_and_adapter():
    from attncraft.attention_processors.ctgm import read_ctgm_metadata
    from attncraft.shapes.training.motion import weights_fingerprint

    config, training = read_ctgm_metadata(SHIPPED)
    assert config.mode == "tii+tar" and config.sites == "part"
    assert training is not None and training["steps"] > 0
    assert training["adapter_sha256_16"] == weights_fingerprint(SHAPES_MOTION_DIR)
    assert training["sd_unet_sha256_16"] == weights_fingerprint(SHAPES_SD_DIR / "unet")


def test_loads_strictly_on_the_shipped_motion_unet_and_is_trained():
    from safetensors import safe_open

    from attncraft.attention_processors.ctgm import load_ctgm, resolve_ctgm_file
    from attncraft.loading import load_text_to_video

    assert resolve_ctgm_file("shapes") == SHIPPED
    with safe_open(str(SHIPPED), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    unet = load_text_to_video("shapes").pipeline.unet
    ctgm = load_ctgm(SHIPPED, unet)
    out_projections = [p for name, p in ctgm.named_parameters() if "proj_out" in name]
    assert out_projections and any(bool(p.detach().abs().sum() > 0) for p in out_projections)  # not the zero start


def test_ctgm_shapes_changes_a_short_run():
    from attncraft.loading import load_text_to_video
    from attncraft.pipelines.text_to_video import default_video_settings, generate_video

    loaded = load_text_to_video("shapes")
    prompt = "a red circle moves right, then turns blue, on a gray background"
    settings = default_video_settings(loaded, prompt)
    settings.num_frames, settings.num_inference_steps, settings.seed = 4, 2, 0

    def run(ctgm=None):
        settings.ctgm = ctgm
        return torch.from_numpy(generate_video(loaded, settings, output_type="np").frames[0])

    plain = run()
    with_ctgm = run("shapes")
    assert settings.extra["ctgm"]["mode"] == "tii+tar" and settings.extra["ctgm"]["file"] == str(SHIPPED)
    assert not torch.equal(plain, with_ctgm)
    assert torch.equal(run(), plain)  # the technique leaves with its run
