"""`attncraft edit`: a run on Shapes that writes every result with its settings, reuse of a saved
inversion, and one-line errors."""

from __future__ import annotations

import pytest
from PIL import Image

import tiny_models as tm
from attncraft.outputs import read_png_settings
from cli_runner import run_cli

FAST = ["--steps", "2", "--null-steps", "1"]


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import render_scenes, sample_scenes

    scene = sample_scenes(1, seed=4, num_objects=2, patterns=False)[0]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image = render_scenes([scene]).images[0]
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(path)
    return path, caption_scene(scene, seed=0), scene


def test_edit_writes_every_result_and_reuses_its_inversion(tmp_path, capsys, scene_png):
    path, caption, scene = scene_png
    first = scene.objects[0]
    target = caption.replace(first.color, "green" if first.color != "green" else "red", 1)
    code, out, err = run_cli(["edit", str(path), "--source", caption, "--target", target, "--dpl", "--dpl-steps", "2",
                              "--local-blend", first.shape, *FAST, "--out", str(tmp_path)], capsys)
    assert code == 0, err
    files = {p.split("/")[-1]: p for p in out.split()}
    assert set(files) == {"source.png", "reconstruction.png", "edited.png", "inversion.safetensors", "inversion.json",
                          "maps.png"}
    meta = read_png_settings(files["edited.png"])
    assert meta["source"] == caption and meta["target"] == target and meta["dpl"] is True and meta["num_inference_steps"] == 2
    assert meta["nouns"] == [o.shape for o in scene.objects] or set(meta["nouns"]) == {o.shape for o in scene.objects}
    assert read_png_settings(files["maps.png"])["picture"] == "attention maps"
    # the saved inversion serves another edit, without inverting again
    code, out2, err = run_cli(["edit", "--inversion", files["inversion.safetensors"], "--target", caption,
                               "--out", str(tmp_path)], capsys)
    assert code == 0, err
    names = {p.split("/")[-1] for p in out2.split()}
    assert "inversion.safetensors" not in names and "edited.png" in names
    assert out2.split()[0] not in out.split()  # a new result folder; nothing replaced


def test_edit_without_image_edits_a_generated_scene(tmp_path, capsys):
    code, out, err = run_cli(["edit", *FAST, "--method", "ddim", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    meta = read_png_settings([p for p in out.split() if p.endswith("edited.png")][0])
    assert meta["generated_source"] is True and meta["source"] != meta["target"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["edit", "missing.png", "--source", "a red circle", "--target", "a blue circle"], "does not exist"),
        (["edit", "{bad}", "--source", "a red circle", "--target", "a blue circle"], "cannot read the image"),
        (["edit", "{img}", "--source", "a red circle", "--target", "a big blue circle"], "replace mode maps word to word"),
        (["edit", "{img}", "--source", "a red circle", "--target", "a blue circle", "--dpl", "--nouns", "square"],
         "'square' is not a word of the prompt"),
        (["edit", "{img}", "--source", "a red circle", "--target", "a blue circle", "--mode", "reweight",
          "--reweight", "square=2"], "'square' to re-weight is not in the prompt"),
        (["edit", "{img}", "--source", "a red circle", "--target", "a blue circle", "--mode", "swap"], "unknown --mode"),
        (["edit", "{img}", "--source", "a red circle", "--target", "a blue circle", "--cross-replace", "40"],
         "--cross-replace must be"),
        (["edit", "{img}", "--target", "a blue circle"], "--source is missing"),
    ],
)
def test_edit_errors_are_one_line(tmp_path, capsys, scene_png, args, needle):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    args = [a.replace("{img}", str(scene_png[0])).replace("{bad}", str(bad)) for a in args]
    code, _, err = run_cli(args + ["--out", str(tmp_path / "out")], capsys)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_saved_inversion_from_another_model_is_refused(tmp_path, capsys, scene_png):
    from attncraft.pipelines.dpl import real_image_edit_pipeline

    tiny = real_image_edit_pipeline(tm.sd_pipeline())
    inv = tiny.invert(tm_image(), "a red circle", num_inference_steps=2, null_text=None, method="ddim")
    saved = inv.save(tmp_path / "tiny")
    code, _, err = run_cli(["edit", "--inversion", str(saved), "--target", "a blue circle", "--out", str(tmp_path)], capsys)
    assert code == 2 and "was made with another model" in err


def tm_image():
    import torch

    return torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
