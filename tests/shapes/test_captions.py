"""Caption grammar: determinism, variety, round trip through the parser, CLIP length."""

from __future__ import annotations

from collections import Counter

import pytest

from attncraft.shapes.captions import CaptionError, ParsedMotion, caption_scene, check_vocabulary, parse_caption
from attncraft.shapes.world import Motion, Scene, SceneObject, sample_scenes

_REL_OK = {
    "above": lambda a, b: a.cell[0] < b.cell[0],
    "below": lambda a, b: a.cell[0] > b.cell[0],
    "left of": lambda a, b: a.cell[1] < b.cell[1],
    "right of": lambda a, b: a.cell[1] > b.cell[1],
}


def _match_objects(scene: Scene, parsed) -> list[SceneObject]:
    """The scene object each parsed object describes (captions shuffle the order)."""
    left = list(scene.objects)
    out = []
    for p in parsed.objects:
        cands = [
            o for o in left
            if o.shape == p.shape and o.color == p.color and o.size == p.size
            and o.pattern == (p.pattern or "plain") and (p.position is None or p.position == o.position)
        ]  # fmt: skip
        assert cands, f"{p} matches no object of {scene}"
        out.append(cands[0])
        left.remove(cands[0])
    assert not left
    return out


def test_captions_are_deterministic_and_varied():
    check_vocabulary()
    scene = sample_scenes(1, seed=4, num_objects=2)[0]
    assert caption_scene(scene, seed=1) == caption_scene(scene, seed=1)
    texts = {caption_scene(scene, seed=s) for s in range(40)}
    assert len(texts) > 20
    scenes = sample_scenes(200, seed=0)
    caps = [caption_scene(s, seed=i) for i, s in enumerate(scenes)]
    assert caps == [caption_scene(s, seed=i) for i, s in enumerate(scenes)]
    words = Counter(w for c in caps for w in c.replace(",", " ").split())
    for w in ("above", "below", "left", "right", "background", "striped", "with", "and", "large", "little"):
        assert words[w] > 0, w
    # relations and absolute positions, objects in many orders
    assert any(" above " in c or " below " in c for c in caps) and any(" on the left" in c for c in caps)
    assert sum(c.startswith(("on a", "against a")) for c in caps) > 5


def test_static_round_trip():
    scenes = sample_scenes(300, seed=1)
    for i, s in enumerate(scenes):
        text = caption_scene(s, seed=i)
        parsed = parse_caption(text)
        assert parsed.background == s.background, text
        assert len(parsed.objects) == len(s.objects), text
        matched = _match_objects(s, parsed)
        for i_, rel, j in parsed.relations:
            assert _REL_OK[rel](matched[i_], matched[j]), text
        positioned = sum(p.position is not None for p in parsed.objects)
        assert positioned + 2 * len(parsed.relations) >= len(s.objects), text
        assert not parsed.is_video


def test_video_round_trip():
    scenes = sample_scenes(200, seed=2, motion=True)
    for i, s in enumerate(scenes):
        text = caption_scene(s, seed=i)
        parsed = parse_caption(text)
        assert parsed.is_video and parsed.background == s.background, text
        for p, o in zip(parsed.objects, _match_objects(s, parsed)):
            assert [m.kind for m in p.motions] == [m.kind for m in o.motions], text
            assert p.static == (not o.motions), text
            for pm, om in zip(p.motions, o.motions):
                if om.kind == "move":
                    assert pm.direction == om.direction, text
                if om.kind == "recolor":
                    assert pm.to_color == om.to_color, text
                if om.kind == "rotate" and pm.direction:
                    assert pm.direction == ("counterclockwise" if om.amount > 0 else "clockwise"), text


def test_omitting_attributes_stays_consistent():
    scenes = sample_scenes(100, seed=3)
    full = [caption_scene(s, seed=i) for i, s in enumerate(scenes)]
    short = [caption_scene(s, seed=i, omit=0.7) for i, s in enumerate(scenes)]
    assert sum(map(len, short)) < 0.8 * sum(map(len, full))
    for s, text in zip(scenes, short):
        parsed = parse_caption(text)
        assert sorted(p.shape for p in parsed.objects) == sorted(o.shape for o in s.objects)
        for p in parsed.objects:
            assert any(
                o.shape == p.shape and o.color == p.color and p.size in (None, o.size)
                and p.position in (None, o.position) and p.pattern in (None, o.pattern)
                for o in s.objects
            ), text  # fmt: skip


def test_captions_fit_clip(clip_tokenizer):
    caps = [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(300, seed=5))]
    caps += [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(300, seed=6, motion=True, num_objects=3))]
    lengths = [len(clip_tokenizer(c).input_ids) for c in caps]
    assert max(lengths) <= 60, max(lengths)


def test_parse_free_prompts():
    p = parse_caption("A small yellow star above a green heart")
    assert [(o.size, o.color, o.shape) for o in p.objects] == [("small", "yellow", "star"), (None, "green", "heart")]
    assert p.relations == ((0, "above", 1),)
    p = parse_caption("a red circle on the left and a blue square to the right of it")
    assert p.objects[0].position == "left"
    p = parse_caption("a striped blue square on a grey background")
    assert (p.objects[0].pattern, p.background) == ("striped", "gray")
    p = parse_caption("a red circle moves right, then turns blue")
    assert p.objects[0].motions == (ParsedMotion("move", direction="right"), ParsedMotion("recolor", to_color="blue"))
    p = parse_caption("in the top-left corner, a big white cross with polka dots")
    assert (p.objects[0].position, p.objects[0].pattern, p.objects[0].size) == ("top left", "dotted", "big")
    p = parse_caption("a purple heart changes from purple to orange while a cyan triangle spins anticlockwise")
    assert p.objects[0].motions[0] == ParsedMotion("recolor", to_color="orange", from_color="purple")
    assert p.objects[1].motions[0] == ParsedMotion("rotate", direction="counterclockwise")
    with pytest.raises(CaptionError):
        parse_caption("a beautiful landscape")


def test_caption_of_hand_made_video_scene():
    scene = Scene(
        (SceneObject("circle", "red", "big", "left", motions=(Motion("move", 0, 0.5, "right", 1.0), Motion("recolor", 0.5, 1, to_color="blue"))),),
        "black",
    )
    text = caption_scene(scene, seed=0)
    assert "red circle" in text and "blue" in text and "then" in text
    parsed = parse_caption(text)
    assert [m.kind for m in parsed.objects[0].motions] == ["move", "recolor"]
