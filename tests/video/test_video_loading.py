"""Loading video models: adapters from folders and single motion-module files (both key layouts,
safetensors and trusted pickles), on SD and SDXL bases, video folders, and one-line errors."""

from __future__ import annotations

import pytest
import torch
from diffusers import AnimateDiffSDXLPipeline
from safetensors.torch import save_file

import tiny_models as tm
from attncraft.errors import InputError, ModelLoadError
from attncraft.loading import infer_motion_adapter_config, load_motion_adapter, load_text_to_video
from attncraft.pipelines.text_to_video import TextToVideoPipeline, TextToVideoSettings, generate_video
from ldm_format import diffusers_sd_to_ldm_state_dict
from video_models import tiny_adapter, to_original_layout


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.fixture(scope="module")
def files(tmp_path_factory, video_folders):
    """Motion-module files built from the tiny adapter folder: original layout as safetensors and as
    a pickle, diffusers layout as safetensors; and an SD checkpoint (not an adapter)."""
    from diffusers import MotionAdapter

    root = tmp_path_factory.mktemp("adapter-files")
    adapter = MotionAdapter.from_pretrained(video_folders["adapter"])
    original = to_original_layout(adapter.state_dict())
    save_file(original, str(root / "mm_original.safetensors"))
    torch.save({"state_dict": original}, root / "mm_original.ckpt")
    save_file(adapter.state_dict(), str(root / "mm_diffusers.safetensors"))
    save_file(diffusers_sd_to_ldm_state_dict(tm.sd_pipeline(seed=4)), str(root / "sd15.safetensors"))
    return {"adapter": adapter, "root": root}


def test_folder_adapter_on_a_folder_base_generates(video_folders):
    loaded = load_text_to_video(str(video_folders["sd"]), str(video_folders["adapter"]))
    assert isinstance(loaded.pipeline, TextToVideoPipeline) and loaded.family == "animatediff"
    assert loaded.adapter == str(video_folders["adapter"]) and "adapter folder" in loaded.label
    settings = TextToVideoSettings(prompt="a red circle", num_frames=4, num_inference_steps=2, width=32, height=32)
    out = generate_video(loaded, settings, output_type="np")
    assert out.frames.shape == (1, 4, 32, 32, 3)


def test_original_layout_file_loads_exactly(files, video_folders):
    path = files["root"] / "mm_original.safetensors"
    loaded = load_motion_adapter(str(path), config=str(video_folders["adapter"]))
    assert same_weights(loaded.adapter, files["adapter"]) and loaded.source == "file"
    assert dict(loaded.adapter.config)["motion_num_attention_heads"] == 4
    # without a config, the layout comes from the weights; heads and groups are the published defaults
    inferred = load_motion_adapter(str(path)).adapter.config
    assert tuple(inferred.block_out_channels) == (32, 64) and inferred.motion_layers_per_block == 1
    assert inferred.use_motion_mid_block and inferred.motion_max_seq_length == 32
    assert inferred.motion_num_attention_heads == 8


def test_diffusers_layout_file_loads_exactly(files, video_folders):
    loaded = load_motion_adapter(str(files["root"] / "mm_diffusers.safetensors"), config=str(video_folders["adapter"]))
    assert same_weights(loaded.adapter, files["adapter"])


def test_pickle_needs_trust_or_a_conversion(files, video_folders, tmp_path):
    import shutil

    from attncraft.checkpoints import convert_to_safetensors

    path = files["root"] / "mm_original.ckpt"
    with pytest.raises(ModelLoadError, match="is a pickle.*--trust-pickle"):
        load_motion_adapter(str(path))
    loaded = load_motion_adapter(str(path), config=str(video_folders["adapter"]), trust_pickle=True)
    assert same_weights(loaded.adapter, files["adapter"])
    copy = shutil.copy(path, tmp_path / "mm.ckpt")
    (converted,) = convert_to_safetensors(copy)  # the project's one-time conversion, then no trust needed
    assert same_weights(load_motion_adapter(str(converted), config=str(video_folders["adapter"])).adapter, files["adapter"])


def test_frame_limit_read_from_an_original_table():
    state = to_original_layout(tiny_adapter(motion_max_seq_length=24).state_dict())
    from attncraft.loading import motion_state_dict_to_diffusers

    assert infer_motion_adapter_config(motion_state_dict_to_diffusers(state), state)["motion_max_seq_length"] == 24


@pytest.mark.parametrize(
    ("adapter", "needle"),
    [
        ("nonsense", "unknown motion adapter 'nonsense'"),
        ("./missing/mm.safetensors", "does not exist"),
        ("org/unreachable-adapter", "not in the local cache"),
    ],
)
def test_bad_adapter_references(adapter, needle):
    with pytest.raises(ModelLoadError, match=needle):
        load_motion_adapter(adapter)


def test_image_models_passed_as_adapter_are_named(files, video_folders):
    with pytest.raises(ModelLoadError, match="is an image model folder .*not a motion adapter"):
        load_motion_adapter(str(video_folders["sd"]))
    with pytest.raises(ModelLoadError, match="image-model checkpoint .*not a motion adapter"):
        load_motion_adapter(str(files["root"] / "sd15.safetensors"))


def test_adapter_that_does_not_fit_the_base(video_folders, tmp_path):
    from attncraft.shapes.models import build_shapes_motion_adapter

    build_shapes_motion_adapter().save_pretrained(tmp_path / "wide")
    with pytest.raises(ModelLoadError, match=r"channel widths \(64, 128\), but the UNet of .* has \(32, 64\)"):
        load_text_to_video(str(video_folders["sd"]), str(tmp_path / "wide"))
    with pytest.raises(ModelLoadError, match="no motion adapter was given"):
        load_text_to_video(str(video_folders["sd"]))


def test_video_folder_loads_as_it_is(video_folders, tmp_path):
    loaded = load_text_to_video(str(video_folders["sd"]), str(video_folders["adapter"]))
    loaded.pipeline.save_pretrained(tmp_path / "video")
    again = load_text_to_video(str(tmp_path / "video"))
    assert isinstance(again.pipeline, TextToVideoPipeline) and again.source == "folder"
    assert same_weights(again.pipeline.unet, loaded.pipeline.unet)
    with pytest.raises(ModelLoadError, match="already a video model"):
        load_text_to_video(str(tmp_path / "video"), str(video_folders["adapter"]))


def test_sdxl_base_gives_diffusers_sdxl_pipeline(tmp_path):
    tm.sdxl_pipeline(seed=0).save_pretrained(tmp_path / "xl")
    tiny_adapter(seed=5).save_pretrained(tmp_path / "ad")
    loaded = load_text_to_video(str(tmp_path / "xl"), str(tmp_path / "ad"))
    assert isinstance(loaded.pipeline, AnimateDiffSDXLPipeline) and loaded.family == "animatediff-sdxl"
    settings = TextToVideoSettings(prompt="a red circle", num_frames=4, num_inference_steps=2, width=32, height=32)
    assert generate_video(loaded, settings, output_type="np").frames.shape == (1, 4, 32, 32, 3)
    settings.states = ["a red circle", "a blue circle"]
    with pytest.raises(InputError, match="per-frame states need an SD 1.x"):
        generate_video(loaded, settings)


def test_embedded_default_loads_offline():
    from attncraft.shapes.models import trained_shapes_motion_available

    loaded = load_text_to_video("shapes")
    assert isinstance(loaded.pipeline, TextToVideoPipeline) and loaded.adapter == "shapes"
    assert ("stand-in" in loaded.label) != trained_shapes_motion_available()
    assert loaded.pipeline.unet.config.motion_max_seq_length == 32
