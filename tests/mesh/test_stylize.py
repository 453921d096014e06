"""The optimisation loop: schedule, a short run that raises the CLIP score, the Python API."""

from __future__ import annotations

import pytest
import torch

from attncraft.mesh.camera import make_cameras
from attncraft.mesh.renderer import TorchRenderer
from attncraft.mesh.stylize import StylizeSettings, XMeshOptimization, learning_rate_at, stylize_mesh


def test_learning_rate_schedule():
    s = StylizeSettings()
    assert learning_rate_at(0, s) == 5e-4 and learning_rate_at(99, s) == 5e-4 and learning_rate_at(100, s) == 5e-4 * 0.9
    assert learning_rate_at(1199, s) == pytest.approx(1.569e-4, rel=1e-3)


def test_short_optimisation_raises_clip_score(test_guide, sphere_mesh):
    """The summed X-Mesh loss goes down: a fixed-view, augmentation-free score of the prompt rises."""
    settings = StylizeSettings(views=3, resolution=32, width=64, learning_rate=2e-3)
    run = XMeshOptimization(sphere_mesh, "a bright red ball", test_guide, TorchRenderer(), settings)
    cams = make_cameras([0.0, 0.3, -0.3], [0.0, 1.5, -1.5])

    def fixed_score() -> float:
        styled = run.current()
        img = run.renderer.render(styled.vertices, run.faces, styled.colors, cams, 32).image.permute(0, 3, 1, 2)
        return test_guide.view_scores(img, run.text).mean().item()

    before = fixed_score()
    scores = [run.step() for _ in range(12)]
    after = fixed_score()
    assert after > before + 0.02
    assert sum(scores[-4:]) / 4 > scores[0]
    assert run.optimizer.param_groups[0]["lr"] == 2e-3


def test_stylize_mesh_api_and_determinism(test_guide, sphere_mesh, tiny_settings):
    calls = []
    kwargs = dict(clip=test_guide, settings=tiny_settings, device="cpu", progress=False)
    a = stylize_mesh(sphere_mesh, "a blue vase", eval_every=1, evaluator=lambda run, i: calls.append(i) or 0.5, **kwargs)
    b = stylize_mesh(sphere_mesh, "a blue vase", **kwargs)
    # The untouched mesh first (iteration None, a separate field), then after updates 0 and 1.
    assert calls == [None, 0, 1] and a.eval_history == [(0, 0.5), (1, 0.5)] and a.eval_initial == 0.5
    assert [i for i, _ in a.eval_score_history] == [0, 1] and a.initial_eval_score is not None
    assert len(a.score_history) == 2 and a.vertices.shape == (42, 3) and a.colors.shape == (42, 3)
    assert (a.colors >= 0).all() and (a.colors <= 1).all()
    assert a.score_history == b.score_history and (a.colors == b.colors).all()
    assert a.to_trimesh().visual.vertex_colors.shape == (42, 4)
    meta = a.metadata()
    assert meta["prompt"] == "a blue vase" and "random" in meta["clip"]
    t2m = stylize_mesh(sphere_mesh, "a blue vase", field="text2mesh", **{**kwargs, "settings": tiny_settings})
    assert t2m.settings["field"] == "text2mesh"


def test_stylize_rejects_bad_settings(test_guide, sphere_mesh):
    from attncraft.errors import InputError

    with pytest.raises(InputError):
        stylize_mesh(sphere_mesh, "x", clip=test_guide, iterations=-1, progress=False)
    with pytest.raises(InputError, match="unknown style field"):
        stylize_mesh(sphere_mesh, "x", clip=test_guide, iterations=1, field="nerf", progress=False)
    with pytest.raises(InputError, match="empty"):
        stylize_mesh(sphere_mesh, "  ", clip=test_guide, iterations=1, progress=False)


def test_evaluation_score_is_deterministic_and_ignores_the_random_stream(test_guide, sphere_mesh, tiny_settings):
    run = XMeshOptimization(sphere_mesh, "a red ball", test_guide, TorchRenderer(), tiny_settings)
    first = run.evaluation_score()
    torch.rand(5, generator=run.generator)  # the views/augmentation stream moves on...
    assert run.evaluation_score() == first  # ...the fixed-view score does not
    kwargs = dict(clip=test_guide, settings=tiny_settings, device="cpu", progress=False, iterations=3, eval_every=1)
    a = stylize_mesh(sphere_mesh, "a red ball", **{k: v for k, v in kwargs.items() if k != "eval_every"}, seed=5)
    b = stylize_mesh(sphere_mesh, "a red ball", **{k: v for k, v in kwargs.items() if k != "eval_every"}, seed=5)
    assert a.eval_score_history == b.eval_score_history and a.eval_score == a.eval_score_history[-1][1]
    assert a.initial_eval_score == pytest.approx(first, abs=1e-6)  # same untouched mesh, same seed-independent score


def test_its_curve_starts_after_the_first_update(test_guide, sphere_mesh, tiny_settings):
    from attncraft.mesh.benchmark import its_from_curve

    # an evaluator that is above the threshold only on the untouched mesh: ITS must not be 0
    res = stylize_mesh(sphere_mesh, "a red ball", clip=test_guide, settings=tiny_settings, device="cpu", progress=False,
                       iterations=3, eval_every=1, evaluator=lambda run, i: 1.0 if i is None else 0.1)
    assert res.eval_initial == 1.0 and res.eval_history == [(0, 0.1), (1, 0.1), (2, 0.1)]
    assert its_from_curve(res.eval_history, 0.5, 2000) == 2000
