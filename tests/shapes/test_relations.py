"""Relations ("a star above a heart"): the grammar states only true ones, "over" means one thing,
the reader's rule agrees with the world on every word, and the per-word evaluation counts right."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from attncraft.shapes.captions import (
    BACKGROUND_PHRASES,
    OPPOSITE_RELATION,
    RELATION_OF_WORD,
    RELATION_WORDS,
    caption_scene,
    parse_caption,
    relation_caption,
    relation_holds_on_grid,
)
from attncraft.shapes.training.evaluate import (
    RELATION_EVAL_WORDS,
    eval_relations,
    relation_markdown,
    relation_outcome,
    relation_prompts,
    summarize_relations,
)
from attncraft.shapes.world import POSITIONS, Scene, SceneObject, render_scenes, sample_scenes

_RELATION_PHRASE = re.compile(r"\b(" + "|".join(sorted(RELATION_OF_WORD, key=len, reverse=True)) + r")\b (?=an? )")


def _centroids(scene: Scene) -> list[tuple[float, float]]:
    """(x, y) of every object's ground-truth mask in a 64x64 render (fractions of the canvas)."""
    masks = render_scenes([scene]).masks[0]
    out = []
    for k in range(len(scene.objects)):
        ys, xs = torch.nonzero(masks[k], as_tuple=True)
        out.append((float(xs.float().mean() + 0.5) / 64, float(ys.float().mean() + 0.5) / 64))
    return out


def _holds_on_render(a: tuple[float, float], rel: str, b: tuple[float, float]) -> bool:
    (ax, ay), (bx, by) = a, b
    return {"above": ay < by, "below": ay > by, "left of": ax < bx, "right of": ax > bx}[rel]


def _distinct(scene: Scene) -> bool:
    keys = [(o.shape, o.color) for o in scene.objects]
    return len(set(keys)) == len(keys)


def _object_of(scene: Scene, parsed_object) -> int:
    """Index of the scene object a parsed object names (scenes with distinct shape-colour pairs)."""
    (k,) = [k for k, o in enumerate(scene.objects) if (o.shape, o.color) == (parsed_object.shape, parsed_object.color)]
    return k


# ------------------------------------------------------------------------------- grammar vs world
def test_every_relation_word_on_every_pair_of_cells_agrees_with_the_geometry():
    """Exhaustive: 9 phrasings x 72 ordered pairs of cells; a caption is made exactly when the relation
    can hold, names the objects in the order that makes it hold (grid and rendered masks alike), and
    parses back to that relation."""
    made = Counter()
    for ca, cb in itertools.permutations(POSITIONS, 2):
        a, b = SceneObject("star", "red", "big", ca), SceneObject("heart", "blue", "small", cb, "striped")
        scene = Scene((a, b), "navy")
        cents = _centroids(scene)
        for word in RELATION_OF_WORD:
            made[word] += _check_relation_caption(scene, word, cents, seed=sum(made.values()))
    # vertical words: the 54 pairs in different rows; horizontal: the 54 in different columns
    assert made == {w: 54 for w in RELATION_OF_WORD}


def _check_relation_caption(scene: Scene, word: str, cents, seed: int) -> bool:
    rel = RELATION_OF_WORD[word]
    a, b = scene.objects
    possible = relation_holds_on_grid(a, rel, b) or relation_holds_on_grid(b, rel, a)
    if not possible:
        with pytest.raises(ValueError, match="holds neither way"):
            relation_caption(scene, word)
        return False
    text = relation_caption(scene, word, seed=seed)
    assert f" {word} " in text and "navy background" in text, text
    parsed = parse_caption(text)
    assert parsed.relations == ((0, rel, 1),) and parsed.background == "navy", text
    first, second = (_object_of(scene, p) for p in parsed.objects)
    assert relation_holds_on_grid(scene.objects[first], rel, scene.objects[second]), text
    assert _holds_on_render(cents[first], rel, cents[second]), text
    assert not _holds_on_render(cents[first], OPPOSITE_RELATION[rel], cents[second]), text
    return True


@pytest.mark.parametrize("omit", [0.0, 0.5])
def test_grammar_relation_captions_hold_on_many_seeds(omit):
    """caption_scene with relations only: every multi-object still caption states one, with each
    surface form in use, subject first, and it holds on the grid and on the renders."""
    scenes = [s for s in sample_scenes(900, seed=21 + int(10 * omit), num_objects=(2, 3)) if _distinct(s)]
    words = Counter()
    for i, scene in enumerate(scenes):
        text = caption_scene(scene, seed=i, omit=omit, relation=1.0)
        parsed = parse_caption(text)
        assert len(parsed.relations) == 1, text
        (i0, rel, j0), = parsed.relations
        assert (i0, j0) == (0, 1), text  # "A <rel> B": the first named object is the subject
        (word,) = _RELATION_PHRASE.findall(text)
        assert RELATION_OF_WORD[word] == rel, text
        words[word] += 1
        a, b = (_object_of(scene, parsed.objects[k]) for k in (0, 1))
        assert relation_holds_on_grid(scene.objects[a], rel, scene.objects[b]), text
        if i % 10 == 0:
            cents = _centroids(scene)
            assert _holds_on_render(cents[a], rel, cents[b]), text
        # a third object's absolute position never contradicts the relation: it is another object
        for k, p in enumerate(parsed.objects):
            if p.position is not None:
                assert scene.objects[_object_of(scene, p)].position == p.position, text
    assert set(words) == set(RELATION_OF_WORD) and min(words.values()) > 20, words
    vertical = sum(v for w, v in words.items() if RELATION_OF_WORD[w] in ("above", "below"))
    assert 0.4 < vertical / sum(words.values()) < 0.6  # vertical and horizontal alike


def test_relation_share_controls_how_often_relations_are_stated():
    scenes = sample_scenes(400, seed=5, num_objects=2)
    share = {r: np.mean([bool(parse_caption(caption_scene(s, seed=i, relation=r)).relations)
                         for i, s in enumerate(scenes)]) for r in (0.0, 0.4, 1.0)}
    assert share[0.0] == 0.0 and share[1.0] == 1.0 and 0.3 < share[0.4] < 0.5


def test_vertical_share_decides_only_for_objects_on_a_diagonal():
    scenes = sample_scenes(600, seed=6, num_objects=2)
    for v in (0.0, 0.75, 1.0):
        picked = []
        for i, s in enumerate(scenes):
            (_, rel, _), = parse_caption(caption_scene(s, seed=i, relation=1.0, vertical=v)).relations
            a, b = s.objects
            if a.cell[0] == b.cell[0] or a.cell[1] == b.cell[1]:  # only one relation can hold
                assert rel in (("left of", "right of") if a.cell[0] == b.cell[0] else ("above", "below"))
            else:
                picked.append(rel in ("above", "below"))
        assert np.mean(picked) == pytest.approx(v, abs=0.06), v


# ------------------------------------------------------------------------------------------ "over"
def test_over_is_only_ever_a_relation():
    assert not any("over" in p for p in BACKGROUND_PHRASES)
    assert "over" in RELATION_WORDS["above"]
    texts = [caption_scene(s, seed=i, omit=(0.0, 0.5)[i % 2], relation=(0.4, 1.0)[i % 3 == 0])
             for i, s in enumerate(sample_scenes(1500, seed=8))]
    texts += [caption_scene(s, seed=i) for i, s in enumerate(sample_scenes(300, seed=9, motion=True))]
    n_over = 0
    for text in texts:
        assert not re.search(r"\bover an? \w+ background", text), text
        words = re.findall(r"[a-z]+", text)
        n_over += words.count("over")
        above = sum(rel == "above" for _, rel, _ in parse_caption(text).relations)
        assert above == words.count("over") + words.count("above"), text
    assert n_over > 50


def test_flipping_a_relation_word_keeps_its_construction():
    from attncraft.shapes.captions import flip_relations, opposite_relation_word

    assert {w: opposite_relation_word(w) for w in RELATION_OF_WORD} == {
        "above": "below", "over": "below", "below": "above", "under": "above", "beneath": "above",
        "to the left of": "to the right of", "left of": "right of", "to the right of": "to the left of",
        "right of": "left of",
    }  # fmt: skip
    assert flip_relations("on a navy background, a red star under an orange heart") == (
        "on a navy background, a red star above an orange heart")
    assert flip_relations("a red star over a heart over a black background") == (
        "a red star below a heart over a black background")  # the background phrase stays
    for text in relation_prompts(3)["left of"][1]:
        parsed, flipped = parse_caption(text), parse_caption(flip_relations(text))
        assert flipped.objects == parsed.objects and flipped.relations == ((0, "right of", 1),)


def test_parser_still_reads_a_background_after_over_in_free_prompts():
    p = parse_caption("a triangle over a heart over a navy background")
    assert p.relations == ((0, "above", 1),) and p.background == "navy" and len(p.objects) == 2
    p = parse_caption("a red star over a black background")
    assert p.relations == () and p.background == "black" and len(p.objects) == 1


# ------------------------------------------------------------------------- reader on world renders
def test_reader_relation_rule_is_exact_on_world_renders_for_every_word():
    n = 10
    sets = relation_prompts(n)
    assert list(sets) == list(RELATION_EVAL_WORDS)
    scenes = [s for ss, _ in sets.values() for s in ss]
    prompts = [p for _, ps in sets.values() for p in ps]
    images = render_scenes(scenes).images.permute(0, 2, 3, 1).numpy()
    scores = [relation_outcome(item) for item in zip(images, prompts)]
    for k, word in enumerate(sets):
        rows = summarize_relations(scores[n * k:n * (k + 1)])
        assert (rows["relation"], rows["reversed"], rows["neither"]) == (1.0, 0.0, 0.0), word
        assert rows["all_correct"] == 1.0, word


def test_relation_prompts_pair_the_opposite_words_on_the_same_scenes():
    sets = relation_prompts(6)
    for a, b in (("above", "below"), ("over", "beneath"), ("left of", "right of")):
        assert [s.to_dict() for s in sets[a][0]] == [s.to_dict() for s in sets[b][0]]
        for text_a, text_b in zip(sets[a][1], sets[b][1]):
            pa, pb = parse_caption(text_a), parse_caption(text_b)
            assert [o.shape for o in pa.objects] == [o.shape for o in pb.objects][::-1]
    assert all(s.objects[0].cell[0] != s.objects[1].cell[0] for s in sets["under"][0])
    assert {_RELATION_PHRASE.findall(t)[0] for t in sets["left of"][1]} == {"to the left of", "left of"}
    assert relation_prompts(6) == sets  # deterministic


# --------------------------------------------------------------------- per-word evaluation counts
def _swapped(scene: Scene) -> Scene:
    a, b = scene.objects
    return Scene((SceneObject(a.shape, a.color, a.size, b.position, a.pattern),
                  SceneObject(b.shape, b.color, b.size, a.position, b.pattern)), scene.background)


def _side_by_side(scene: Scene) -> Scene:
    a, b = scene.objects
    row, col = a.cell
    other = POSITIONS[3 * row + (col + 1) % 3]
    return Scene((a, SceneObject(b.shape, b.color, b.size, other, b.pattern)), scene.background)


class _FakePipeline:
    """Draws, for each prompt, the world render of a scene chosen by ``draw(word, index, scene)``."""

    def __init__(self, sets, draw):
        self.scene_of = {p: (w, i, s) for w, (ss, ps) in sets.items() for i, (s, p) in enumerate(zip(ss, ps))}
        self.draw = draw
        self.unet = SimpleNamespace(device=torch.device("cpu"))
        self.scheduler = SimpleNamespace()
        self.calls = []

    def __call__(self, prompt, num_inference_steps, guidance_scale, height, width, generator, output_type):
        self.calls.append((len(prompt), num_inference_steps, guidance_scale, output_type))
        scenes = [self.draw(*self.scene_of[p]) for p in prompt]
        return SimpleNamespace(images=render_scenes(scenes).images.permute(0, 2, 3, 1).numpy())


def test_per_word_evaluation_on_a_case_with_known_answers():
    n = 4
    sets = relation_prompts(n)

    def draw(word, i, scene):
        first, second = scene.objects  # named in the order that makes the relation hold
        if not relation_holds_on_grid(first, RELATION_OF_WORD[RELATION_EVAL_WORDS[word][0]], second):
            first, second = second, first
        as_stated = Scene((first, second), scene.background)
        if word == "below" or (word == "right of" and i % 2):
            return _swapped(as_stated)  # drawn the opposite way
        if word == "under":
            return _side_by_side(as_stated)
        if word == "beneath":
            return Scene((first,), scene.background)  # the second object is missing
        return as_stated

    pipe = _FakePipeline(sets, draw)
    cfg = SimpleNamespace(relation_prompts=n, relation_probe=0, steps=3, gen_batch=5)
    res = eval_relations(pipe, cfg, 2.5, scorer=lambda images, prompts, fn: [fn(it) for it in zip(images, prompts)],
                         say=lambda m: None)
    assert sum(c[0] for c in pipe.calls) == n * len(RELATION_EVAL_WORDS)
    assert all(c[1:] == (3, 2.5, "np") for c in pipe.calls)
    words = res["words"]
    expect = {  # (holds, reversed, neither, all correct)
        "above": (1, 0, 0, 1), "over": (1, 0, 0, 1), "left of": (1, 0, 0, 1),
        "below": (0, 1, 0, 0), "under": (0, 0, 1, 0), "beneath": (0, 0, 1, 0), "right of": (0.5, 0.5, 0, 0.5),
    }  # fmt: skip
    for word, (h, r, nb, ok) in expect.items():
        got = words[word]
        assert (got["n"], got["relation"], got["reversed"], got["neither"], got["all_correct"]) == (n, h, r, nb, ok), word
    assert words["beneath"]["count"] == 0.0 and words["under"]["count"] == 1.0
    assert res["relations"]["above"]["relation"] == 1.0 and res["relations"]["above"]["n"] == 2 * n
    assert res["relations"]["below"]["reversed"] == pytest.approx(1 / 3)
    assert res["relations"]["right of"]["relation"] == 0.5 and res["min_word_relation"] == 0.0
    table = "\n".join(relation_markdown(res))
    assert "| below | 4 | 0.0 % | 100.0 % | 0.0 % | 0.0 % |" in table
    assert "| all 'above' | 8 | 100.0 % |" in table
