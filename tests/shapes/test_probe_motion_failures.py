"""``benchmarks/probe_motion_failures.py``'s classifier on world renders, where the answer is known: a scene's own
render is done as asked, the render of the same scene with its motion turned the other way is ``opposite`` for
moves, growing / shrinking and a stated sense of rotation, and a motionless render is ``still``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from bench_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_motion_failures.py"


def _module():
    module = load_script(SCRIPT, "probe_motion_failures")
    return module


def _scenes(kinds):
    from attncraft.shapes.scoring import expected_scene
    from attncraft.shapes.training.motion_eval import motion_prompts

    scenes, prompts = motion_prompts(96, 5, 1)
    chosen = {}
    for scene, prompt in zip(scenes, prompts):
        m = expected_scene(prompt).objects[0].motions[0]  # as the caption states it
        if m.kind in kinds and m.kind not in chosen and scene.objects[0].shape != "circle":
            edge = {"left": "right", "right": "left", "up": "bottom", "down": "top"}.get(m.direction, "-")
            if (m.kind != "rotate" or m.direction is not None) and edge not in scene.objects[0].position:
                # (a move whose opposite has room in the frame: the swapped render can go the other way)
                chosen[m.kind] = (scene, prompt)
    assert set(chosen) == set(kinds), sorted(chosen)
    return chosen


def test_classifier_tells_asked_opposite_and_still_on_world_renders():
    from attncraft.shapes.reader import read_video
    from attncraft.shapes.scoring import expected_scene
    from attncraft.shapes.training.motion import swap_motions
    from attncraft.shapes.training.motion_eval import world_renders

    probe = _module()
    chosen = _scenes(("move", "grow", "shrink", "rotate"))
    for kind, (scene, prompt) in chosen.items():
        still = replace(scene, objects=[replace(scene.objects[0], motions=())])
        swapped = swap_motions(scene)
        if kind in ("grow", "shrink"):  # the world grows small objects and shrinks big ones: start at the other size
            obj = swapped.objects[0]
            swapped = replace(swapped, objects=[replace(obj, size="big" if obj.size == "small" else "small")])
        own, swapped, motionless = world_renders([scene, swapped, still], 16)
        (k, category, magnitude), = probe.classify_video((own, prompt))
        assert (k, category) == (kind, "asked") and magnitude >= 1.0, (prompt, category, magnitude)
        if kind in ("grow", "shrink"):  # the size stated no longer matches: classify the track itself
            read = read_video(list(swapped))
            category, magnitude = probe.classify(max(read.tracks, key=lambda t: len(t.frames)),
                                                 expected_scene(prompt).objects[0].motions[0], len(read.frames))
        else:
            (_, category, magnitude), = probe.classify_video((swapped, prompt))
        assert category == "opposite" and magnitude >= 1.0, (prompt, category, magnitude)
        (_, category, magnitude), = probe.classify_video((motionless, prompt))
        assert category == "still" and magnitude < 1.0, (prompt, category, magnitude)
    lines = probe.table({"renders": [[("move", "asked", 2.0)], [("move", "still", 0.5)]]})
    assert lines[2].startswith("| renders | all | 2 | 50.0 % |") and "| 1.25 |" in lines[3]
