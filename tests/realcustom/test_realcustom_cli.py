"""`attncraft customize`: a run on Shapes SD with its image, mask strip and settings; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cli_runner import run_cli
import tiny_models as tm
from attncraft.outputs import read_png_settings
from attncraft.realcustom.modules import RealCustomAdapter, save_adapter

PROMPT = "a big star on the left and a blue circle at the top on a gray background"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random RealCustom checkpoint for the shipped Shapes SD, one for a tiny UNet, a subject image."""
    from attncraft.shapes.models import load_shapes_sd_pipeline
    from attncraft.shapes.world import Scene, SceneObject, render_scenes

    root = tmp_path_factory.mktemp("customize")
    unet = load_shapes_sd_pipeline().unet
    shapes = save_adapter(RealCustomAdapter.from_unet(unet, 128, init="text"), root / "shapes-adapter")
    other = save_adapter(RealCustomAdapter.from_unet(tm.sd_unet(), 128), root / "tiny-adapter")
    image = render_scenes([Scene((SceneObject("star", "red", pattern="striped"),))]).images[0]
    subject = root / "subject.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(subject)
    return {"shapes": shapes, "other": other, "subject": subject, "root": root}


def test_customize_writes_images_mask_strips_and_settings(files, tmp_path, capsys):
    code, out, err = run_cli(["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star",
                              "--adapter", str(files["shapes"]), "--steps", "2", "--count", "2", "--seed", "4",
                              "--gamma-scope", "0.1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2
    meta = read_png_settings(paths[1])
    assert meta["seed"] == 5 and meta["task"] == "customize" and meta["word"] == "star"
    assert meta["gamma_scope"] == 0.1 and meta["guidance_mode"] == "paper" and len(meta["subject_sha256"]) == 64
    strip = Image.open(paths[0].replace(".png", "_masks.png"))
    assert strip.size == (3 * 64 + 2 * 2, 64)  # the image, then 2 steps of masks
    masks = np.asarray(strip)[:, 66:130, 0]
    assert 0 < (masks > 0).mean() < 0.5
    # a second run never replaces the first one's files
    code, out2, _ = run_cli(["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--adapter",
                             str(files["shapes"]), "--steps", "1", "--seed", "4", "--out", str(tmp_path)], capsys)
    assert code == 0 and out2.split()[0] not in paths
    assert len(list(tmp_path.glob("*_masks.png"))) == 3


def test_customize_errors_are_one_line(files, tmp_path, capsys):
    broken = files["root"] / "broken.png"
    broken.write_text("not an image")
    base = ["--out", str(tmp_path / "out"), "--steps", "1"]
    cases = [
        (["customize", PROMPT, "--subject", str(files["subject"]), "--word", "heart", "--adapter", str(files["shapes"])],
         "the word 'heart' is not in the prompt"),
        (["customize", PROMPT, "--subject", str(broken), "--word", "star", "--adapter", str(files["shapes"])],
         "cannot read the subject image"),
        (["customize", PROMPT, "--subject", str(files["root"] / "nope.png"), "--word", "star"], "does not exist"),
        (["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--adapter", str(files["other"])],
         "made for a UNet with cross-attention width 32; this UNet has 128"),
        (["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--model", str(files["root"])],
         "--adapter is needed"),
        (["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--adapter", str(files["root"] / "x")],
         "does not exist"),
        (["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--adapter", str(files["shapes"]),
          "--gamma-scope", "2"], "--gamma-scope must be"),
    ]
    for args, needle in cases:
        code, out, err = run_cli(args + base, capsys)
        assert code == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_help_lists_customize(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "customize" in out


def test_customize_uses_the_shipped_shapes_checkpoint_by_default(files, tmp_path, capsys):
    from attncraft.realcustom.modules import SHAPES_ADAPTER_DIR, checkpoint_file

    code, out, err = run_cli(["customize", PROMPT, "--subject", str(files["subject"]), "--word", "star", "--steps", "1",
                              "--out", str(tmp_path)], capsys)
    if not checkpoint_file(SHAPES_ADAPTER_DIR).is_file():
        assert code == 2 and "no RealCustom checkpoint is shipped" in err
        return
    assert code == 0, err
    meta = read_png_settings(out.split()[0])
    assert meta["adapter"].endswith("shapes-realcustom/realcustom.safetensors")
    from attncraft.realcustom.modules import read_config

    assert meta["image_guidance_scale"] == read_config(SHAPES_ADAPTER_DIR).defaults["image_guidance_scale"]
