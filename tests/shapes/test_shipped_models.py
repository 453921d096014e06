"""The shipped Shapes models (assets/models) load offline with the stock classes and do their job,
judged by the model-free reader (ground truth), not by another learned model."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from attncraft.shapes.models import (
    SHAPES_CLIP_DIR,
    SHAPES_SD_DIR,
    SIZE_BUDGET_BYTES,
    load_shapes_clip,
    shapes_clip_reads_meshes,
)
from attncraft.shapes.scoring import score_image
from attncraft.shapes.world import COLORS, render_scenes, sample_scenes
from attncraft.tokenizer import load_clip_tokenizer


def test_shipped_weights_are_fp16_and_within_budget():
    files = [p for d in (SHAPES_CLIP_DIR, SHAPES_SD_DIR) for p in d.rglob("*.safetensors")]
    assert len(files) == 4  # CLIP, text encoder, VAE, UNet
    shipped = list(SHAPES_CLIP_DIR.parent.rglob("*.safetensors"))  # with the motion and technique parts
    assert sum(p.stat().st_size for p in shipped) < SIZE_BUDGET_BYTES == 80e6
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}, path


def test_shipped_sd_generates_one_object_prompts_the_reader_scores_correct():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_SD_DIR, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle", "a blue square", "a yellow star", "a green heart"]
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(prompts, num_inference_steps=25, guidance_scale=3.0, generator=generators).images
    scores = [score_image(image, prompt) for image, prompt in zip(images, prompts)]
    right = [s["color"] == 1.0 and s["shape"] == 1.0 and s["count"] == 1.0 for s in scores]
    assert sum(right) >= 3, scores


def test_shipped_clip_reads_colour_and_shape_zero_shot():
    model = load_shapes_clip()
    tok = load_clip_tokenizer()
    scenes = sample_scenes(24, seed=7, num_objects=(1, 1), patterns=False)
    images = render_scenes(scenes, size=64).images * 2 - 1  # the model's preprocessing: mean = std = 0.5
    with torch.no_grad():
        # towers + projections explicitly: get_*_features changed its return type across transformers 5.x
        img = model.visual_projection(model.vision_model(pixel_values=images).pooler_output)
        img = torch.nn.functional.normalize(img, dim=-1)
        correct = 0
        for i, scene in enumerate(scenes):
            obj = scene.objects[0]
            texts = [f"a {c} {obj.shape}" for c in COLORS]
            ids = tok(texts, padding="max_length", return_tensors="pt")
            txt = model.text_projection(model.text_model(input_ids=ids.input_ids).pooler_output)
            txt = torch.nn.functional.normalize(txt, dim=-1)
            correct += COLORS[int((img[i] @ txt.T).argmax())] == obj.color
    assert correct >= 23


def test_shapes_clip_steers_mesh_colour():
    """X-Mesh with the shipped CLIP: a red prompt makes the mesh red, a blue prompt blue."""
    from attncraft.mesh import StylizeSettings, stylize_mesh

    means = {}
    for colour in ("red", "blue"):
        settings = StylizeSettings(iterations=30, views=3, resolution=64, learning_rate=3e-3, width=64, n_normaugs=1,
                                   n_geoaugs=1, background=(0.5, 0.5, 0.5), norm_ratio=0.0)
        result = stylize_mesh("default", f"a {colour} circle on a gray background", settings=settings,
                              device="cpu", progress=False)
        assert result.clip_label.startswith("shapes CLIP")
        means[colour] = result.colors.mean(axis=0)
    assert means["red"][0] > means["red"][2] + 0.1
    assert means["blue"][2] > means["blue"][0] + 0.1


needs_mesh_clip = pytest.mark.skipif(not shapes_clip_reads_meshes(), reason="the shipped shapes CLIP was not trained on mesh "
                                     "renders (tools/gpu/train_shapes_clip_mesh.sh makes one)")


@needs_mesh_clip
def test_shipped_clip_names_the_colour_of_uniformly_painted_meshes():
    from attncraft.mesh.procedural import RenderStyle, render_mesh_scenes
    from attncraft.shapes.mesh_world import MeshScene

    cases = [("torus", "red"), ("sphere", "blue"), ("cube", "green"), ("cylinder", "yellow"), ("cone", "purple"),
             ("capsule", "orange"), ("torus", "cyan"), ("sphere", "white")]
    scenes = [MeshScene(shape, colour, background="gray" if colour == "white" else "white", seed=k)
              for k, (shape, colour) in enumerate(cases)]
    images = render_mesh_scenes(scenes, style=RenderStyle("xmesh")) * 2 - 1
    model = load_shapes_clip()
    tok = load_clip_tokenizer()
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixel_values=images).pooler_output), dim=-1)
        for i, (shape, colour) in enumerate(cases):
            ids = tok([f"a {c} {shape}" for c in COLORS], padding="max_length", return_tensors="pt").input_ids
            txt = torch.nn.functional.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)
            assert COLORS[int((img[i] @ txt.T).argmax())] == colour, (shape, colour)


@needs_mesh_clip
@pytest.mark.slow
def test_stylizing_a_red_torus_paints_it_red():
    """A short CPU run of the demo prompt on the default mesh: the ground-truth red fraction rises from 0."""
    from attncraft.mesh import StylizeSettings, stylize_mesh

    settings = StylizeSettings(iterations=25, views=3, resolution=64, learning_rate=3e-3, width=64, n_normaugs=2,
                               geoloss=False, norm_ratio=0.0, eval_every=0)
    result = stylize_mesh("default", "a red torus", settings=settings, device="cpu", progress=False)
    assert result.ground_truth["color_fraction"] > 0.3, result.ground_truth
