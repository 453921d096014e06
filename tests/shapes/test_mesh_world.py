"""The 3-D side of the Shapes world: seeded descriptions, captions that parse back, the prompt parser."""

from __future__ import annotations

import pytest

from attncraft.shapes.mesh_world import (MESH_SHAPES, MeshScene, caption_mesh_scene, parse_mesh_prompt, sample_mesh_scenes,
                                         scene_as_parsed, zero_shot_mesh_prompts)


def test_sampling_is_seeded_and_prefix_stable():
    a = sample_mesh_scenes(50, seed=3)
    assert a == sample_mesh_scenes(50, seed=3) and a[:20] == sample_mesh_scenes(20, seed=3)
    assert a != sample_mesh_scenes(50, seed=4)
    assert {s.shape for s in sample_mesh_scenes(200, seed=0)} == set(MESH_SHAPES)


def test_full_captions_parse_back_to_the_scene():
    for i, scene in enumerate(sample_mesh_scenes(300, seed=1)):
        caption = caption_mesh_scene(scene, seed=i)
        parsed = parse_mesh_prompt(caption)
        want = scene_as_parsed(scene)
        assert (parsed.color, parsed.pattern, parsed.color2, parsed.bottom, parsed.background) == \
               (want.color, want.pattern, want.color2, want.bottom, want.background), caption
        assert parsed.shape in (scene.shape, None), caption  # None: a generic noun ("a red object")


@pytest.mark.parametrize("text,expected", [
    ("a red torus", dict(shape="torus", color="red")),
    ("a blue and white striped sphere", dict(shape="sphere", color="blue", pattern="striped", color2="white")),
    ("a green cube on a white background", dict(shape="cube", color="green", background="white")),
    ("a torus, red on top and gray below", dict(shape="torus", color="red", bottom="gray")),
    ("a red circle on a gray background", dict(shape="circle", color="red", background="gray")),
    ("A 3D rendering of a wooden horse", dict()),
])
def test_prompt_parser(text, expected):
    got = parse_mesh_prompt(text).to_dict()
    assert {k: v for k, v in got.items() if v is not None} == expected


def test_zero_shot_prompts_and_validation():
    prompts, dims = zero_shot_mesh_prompts()
    assert dims == (8, 4, 6) and len(prompts) == 192 and prompts[0] == "a red sphere"
    assert "a striped red torus" in prompts
    with pytest.raises(ValueError, match="unknown shape"):
        MeshScene("pyramid", "red")
    with pytest.raises(ValueError, match="split painting"):
        MeshScene("cube", "red", "striped", bottom="blue")
