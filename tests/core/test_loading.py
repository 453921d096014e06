"""Model references: folders (SD, SD 2.x v-prediction, SDXL), single files, Hub ids, and errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_models as tm
from attncraft.errors import ModelLoadError
from attncraft.loading import load_text_to_image
from attncraft.pipelines import generate
from attncraft.schedulers import set_scheduler


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd")
    tm.sd_pipeline().save_pretrained(folder)
    return folder


def test_folder_loads_and_batch_images_reproduce_alone(sd_folder):
    loaded = load_text_to_image(str(sd_folder), device="cpu")
    assert loaded.family == "sd" and loaded.source == "folder"
    batch = generate(loaded, tm.quick_settings(loaded, count=2, seed=5)).images
    alone = generate(loaded, tm.quick_settings(loaded, count=1, seed=6)).images
    assert np.array_equal(np.asarray(batch[1]), np.asarray(alone[0]))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[1]))


def test_v_prediction_model_keeps_its_prediction_type(tmp_path):
    tm.sd_pipeline(prediction_type="v_prediction").save_pretrained(tmp_path)
    loaded = load_text_to_image(str(tmp_path), device="cpu")
    set_scheduler(loaded.pipeline, "euler")
    assert loaded.pipeline.scheduler.config.prediction_type == "v_prediction"
    image = generate(loaded, tm.quick_settings(loaded)).images[0]
    assert image.size == (32, 32)


def test_sdxl_folder_is_detected(tmp_path):
    tm.sdxl_pipeline().save_pretrained(tmp_path)
    loaded = load_text_to_image(str(tmp_path), device="cpu")
    assert loaded.family == "sdxl"
    assert type(loaded.pipeline).__name__ == "StableDiffusionXLPipeline"
    images = generate(loaded, tm.quick_settings(loaded)).images
    assert images[0].size == (32, 32)


def test_embedded_default_loads():
    loaded = load_text_to_image("shapes", device="cpu")
    assert loaded.reference == "shapes" and loaded.family == "sd"
    assert loaded.label == "shapes (embedded)" and not loaded.is_stand_in  # the trained model ships
    assert loaded.defaults["width"] == 64 and loaded.defaults["num_inference_steps"] == 25


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("foo", "unknown model 'foo'"),
        ("./does/not/exist", "does not exist"),
        ("missing.safetensors", "does not exist"),
        ("some-org/some-model", "HF_HUB_OFFLINE is set"),
    ],
)
def test_bad_references_give_one_line_errors(ref, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_text_to_image(ref, device="cpu")
    assert "\n" not in str(info.value)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_text_to_image(str(tmp_path), device="cpu")


def test_non_checkpoint_file_and_corrupt_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model checkpoint"):
        load_text_to_image(str(text), device="cpu")
    corrupt = tmp_path / "model.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_text_to_image(str(corrupt), device="cpu")


def test_diffusers_unet_weights_are_not_a_single_file_checkpoint(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_file({k: v.contiguous() for k, v in tm.sd_unet().state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match="diffusers-format UNet weights"):
        load_text_to_image(str(path), device="cpu")


def test_single_file_without_config_offline_asks_for_config(tmp_path):
    path = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, str(path))
    with pytest.raises(ModelLoadError, match="--config"):
        load_text_to_image(str(path), device="cpu")


def test_unreachable_hub_without_offline_flag():
    """With the Hub enabled but unreachable (closed local port), the error says so in one line."""
    code = (
        "from attncraft.loading import load_text_to_image\n"
        "from attncraft.errors import ModelLoadError\n"
        "try:\n    load_text_to_image('some-org/some-model', device='cpu')\n"
        "except ModelLoadError as e:\n    print('ERR', e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_ETAG_TIMEOUT="2",
               HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HOME=os.environ.get("PYTEST_TMP_HF_HOME", "/tmp/attncraft-test-hf-home"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERR cannot load model 'some-org/some-model'" in out.stdout, out.stderr[-2000:]
    assert "Hub is unreachable" in out.stdout


def test_use_scheduler_puts_the_pipelines_own_scheduler_back():
    from types import SimpleNamespace

    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from attncraft.schedulers import use_scheduler

    own = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    pipe = SimpleNamespace(scheduler=own)
    use_scheduler(pipe, "euler")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    use_scheduler(pipe, "euler")  # built from the own scheduler again, not from the previous choice
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    use_scheduler(pipe, None)
    assert pipe.scheduler is own
