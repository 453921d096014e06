"""The X-Mesh optimisation loop and the :func:`stylize_mesh` Python API.

One iteration (spec §4.3), batched:

1. the style field predicts colours and a displacement for every vertex (one forward);
2. V training views are sampled (view 0 at the front, the rest Gaussian) and, for the geometry loss,
   V *new* views; both sets are rendered in **one** renderer call of 2V views: the first V with the
   predicted colours, the second V with uniform 0.5 grey (geometry only);
3. the 1 + 4 + 4 augmentations of all views go through **one** CLIP call
   (:func:`~attncraft.mesh.clip_guidance.guidance_loss`); the summed loss is backpropagated once
   (the reference's three retained-graph backward passes accumulate the same gradient);
4. Adam (lr 5e-4, no weight decay) steps, then StepLR (x0.9 every 100 iterations).

The logged score is -L1 = cos(view-averaged embedding of the full-view augmentation, text), as in the
reference. It depends on that iteration's random views and perspective draw, so the progress bar and
the result also report a deterministic **evaluation score** (:func:`attncraft.mesh.evaluation.fixed_view_score`:
24 fixed views, no augmentation, the run's background), every ``eval_every`` iterations and at the end. Randomness (views, augmentations) comes from a dedicated ``torch.Generator`` seeded with
``seed`` (23 for MIT-30), and the field is built from the same seed inside a forked RNG, so a run is
reproducible without touching the global RNG. (The reference seeds globally with 42 and then 23 and
sets cuDNN deterministic; global flags are left to the caller here, and CUDA scatter-adds in the
backward pass are not bit-deterministic anyway.)

Histories are labelled as the reference labels its per-iteration exports: entry ``i`` is the field
*after update i* (i + 1 updates; ``export_iter_results`` runs after ``optim.step()``), so an ITS of 0
means the first update already reached the target. The untouched grey mesh is reported separately
(``eval_initial``, ``initial_eval_score``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from attncraft.mesh.camera import TRAIN_FOVY, TRAIN_RADIUS, make_cameras, sample_front_views
from attncraft.mesh.clip_guidance import AugmentPlan, ClipGuide, guidance_loss, load_clip
from attncraft.mesh.io import MeshData
from attncraft.mesh.memory import check_memory, describe
from attncraft.mesh.renderer import MeshRenderer, get_renderer
from attncraft.mesh.style_field import StyledMesh, StyledMeshModel, build_style_field

DEFAULT_PROMPT = "A 3D rendering of a donut with pink frosting and sprinkles in unreal engine."


@dataclass
class StylizeSettings:
    """Hyper-parameters; defaults are the MIT-30 settings of ``script/train.sh`` (spec §2)."""

    iterations: int = 1200
    learning_rate: float = 5e-4
    lr_decay: float = 0.9
    decay_step: int = 100
    weight_decay: float = 0.0
    views: int = 5
    resolution: int = 224
    frontview_std: float = 4.0
    frontview_center: tuple[float, float] = (0.0, 0.0)
    n_augs: int = 1
    n_normaugs: int = 4
    n_geoaugs: int = 4
    full_crop: float = 1.0
    norm_crop: float = 0.4
    geo_crop: float = 0.1
    perspective_p: float = 0.8
    geoloss: bool = True
    field: str = "xmesh"
    sigma: float = 12.0
    width: int = 256
    depth: int = 4
    color_depth: int = 2
    norm_depth: int = 2
    norm_ratio: float = 0.1
    symmetry: bool = True
    standardize: bool = True
    seed: int = 23
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    eval_every: int = 10  # iterations between two deterministic evaluation scores (0: only at the end)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def learning_rate_at(iteration: int, settings: StylizeSettings) -> float:
    """lr used *at* iteration ``iteration`` (0-based) under StepLR."""
    return settings.learning_rate * settings.lr_decay ** (iteration // settings.decay_step)


class _NullTimer:
    def __call__(self, name: str):
        return contextlib.nullcontext()


class XMeshOptimization:
    """State of one stylisation run; :meth:`step` performs one iteration and returns the score."""

    def __init__(self, mesh: MeshData, prompt: str, guide: ClipGuide, renderer: MeshRenderer,
                 settings: StylizeSettings | None = None, device: torch.device | str = "cpu"):
        self.settings = s = settings or StylizeSettings()
        self.device = torch.device(device)
        self.guide = guide
        self.renderer = renderer
        self.prompt = prompt
        self.mesh = mesh
        self.text = guide.encode_text(prompt)
        field_ = build_style_field(s.field, text_dim=guide.embed_dim, seed=s.seed, sigma=s.sigma, width=s.width,
                                   depth=s.depth, color_depth=s.color_depth, norm_depth=s.norm_depth,
                                   norm_ratio=s.norm_ratio)
        verts = torch.as_tensor(mesh.vertices, dtype=torch.float32)
        normals = torch.as_tensor(mesh.normals, dtype=torch.float32)
        self.model = StyledMeshModel(field_, verts, normals, s.symmetry, s.standardize).to(self.device)
        self.faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay,
                                          fused=self.device.type in ("cuda", "cpu"))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=s.decay_step, gamma=s.lr_decay)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.plan = AugmentPlan.xmesh(s.n_augs, s.n_normaugs, s.n_geoaugs, s.full_crop, s.norm_crop, s.geo_crop, s.geoloss)
        self.iteration = 0
        self.last_score = float("nan")
        self.score_history: list[tuple[int, float]] = []

    def sample_cameras(self):
        s = self.settings
        elev, azim = sample_front_views(s.views, s.frontview_std, s.frontview_center, self.generator)
        cams = make_cameras(elev, azim, TRAIN_RADIUS, TRAIN_FOVY, device=self.device)
        if s.geoloss and s.n_geoaugs > 0:
            elev2, azim2 = sample_front_views(s.views, s.frontview_std, s.frontview_center, self.generator)
            cams = cams.cat(make_cameras(elev2, azim2, TRAIN_RADIUS, TRAIN_FOVY, device=self.device))
        return cams

    def step(self, timer: Callable[[str], Any] | None = None) -> float:
        s = self.settings
        timer = timer or _NullTimer()
        cams = self.sample_cameras()
        with timer("field"):
            styled = self.model(self.text)
        with timer("render"):
            colors = styled.colors.unsqueeze(0).expand(s.views, -1, -1)
            if len(cams) > s.views:
                grey = torch.full_like(colors, 0.5)
                colors = torch.cat([colors, grey], dim=0)
            out = self.renderer.render(styled.vertices, self.faces, colors, cams, s.resolution,
                                       background=s.background)
            groups = out.image.view(-1, s.views, s.resolution, s.resolution, 3).permute(0, 1, 4, 2, 3)
        with timer("clip"):
            gl = guidance_loss(self.guide, groups, self.text, self.plan, self.generator, s.perspective_p,
                               fill=s.background)
        with timer("backward"):
            gl.loss.backward()
        with timer("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        self.last_score = gl.score  # host sync only after the update has been queued
        self.score_history.append((self.iteration, self.last_score))
        self.iteration += 1
        return self.last_score

    @torch.no_grad()
    def current(self, reference_eval_geometry: bool = False) -> StyledMesh:
        return self.model(self.text, reference_eval_geometry=reference_eval_geometry)

    @torch.no_grad()
    def evaluation_score(self) -> float:
        """The deterministic score of the current field (fixed views, no augmentation)."""
        from attncraft.mesh.evaluation import fixed_view_score

        styled = self.current()
        return fixed_view_score(self.guide, self.renderer, styled.vertices, self.faces, styled.colors.clamp(0, 1),
                                self.text, self.settings.resolution, self.settings.background)


@dataclass
class StylizeResult:
    """Result of :func:`stylize_mesh`: the stylised mesh (unit sphere) and how it was made."""

    vertices: np.ndarray  # (V, 3) float32, displaced and renormalised
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray  # (V, 3) float32 in [0, 1]
    prompt: str
    settings: dict[str, Any]
    clip_label: str
    renderer_label: str
    mesh_source: str
    mesh_notes: list[str] = field(default_factory=list)
    score_history: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    run: XMeshOptimization | None = None
    eval_initial: float | None = None  # the evaluator on the untouched mesh (before any update)
    ground_truth: dict[str, Any] | None = None  # attncraft.mesh.metrics.mesh_metrics, for Shapes-vocabulary prompts
    eval_score_history: list[tuple[int, float]] = field(default_factory=list)  # fixed views, after update i
    initial_eval_score: float | None = None  # fixed views, untouched mesh

    @property
    def final_score(self) -> float:
        """The training score of the last iteration (one random draw of views and augmentations)."""
        return self.score_history[-1][1] if self.score_history else float("nan")

    @property
    def final_score_or_none(self) -> float | None:
        """The final score, or None after 0 iterations (sidecars are strict JSON: no NaN)."""
        return self.score_history[-1][1] if self.score_history else None

    @property
    def eval_score(self) -> float | None:
        """The deterministic evaluation score of the result (fixed views, no augmentation)."""
        return self.eval_score_history[-1][1] if self.eval_score_history else self.initial_eval_score

    def to_trimesh(self):
        from attncraft.mesh.io import colors_to_uint8

        import trimesh

        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        mesh.visual.vertex_colors = colors_to_uint8(self.colors)
        return mesh

    def metadata(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "clip": self.clip_label, "renderer": self.renderer_label,
            "mesh": self.mesh_source, "mesh_notes": self.mesh_notes, "vertices": int(len(self.vertices)),
            "faces": int(len(self.faces)), "final_clip_score": self.final_score_or_none, "seconds": round(self.seconds, 3),
            "score_history": [[i, round(v, 6)] for i, v in self.score_history],
            "eval_score": self.eval_score, "initial_eval_score": self.initial_eval_score,
            "eval_score_history": [[i, round(v, 6)] for i, v in self.eval_score_history],
            **({"eval_history": [[i, round(v, 6)] for i, v in self.eval_history]} if self.eval_history else {}),
            **({"eval_initial": self.eval_initial} if self.eval_initial is not None else {}),
            **({"ground_truth": self.ground_truth} if self.ground_truth is not None else {}),
        }

    def save(self, out_dir, name: str = "stylized", **kwargs) -> dict[str, Any]:
        from attncraft.mesh.exports import save_outputs

        return save_outputs(self, out_dir, name, **kwargs)


def validate_settings(settings: StylizeSettings) -> StylizeSettings:
    """Refuse settings no run can use (one line each, before anything is loaded): non-finite
    numbers, counts out of range, a seed torch cannot take."""
    from attncraft.validation import check_finite, check_int_range, check_seed

    s = settings
    check_int_range("iterations", s.iterations, 0, 1_000_000)
    check_int_range("views", s.views, 1, 64)
    check_int_range("resolution", s.resolution, 8, 4096)
    check_finite("learning_rate", s.learning_rate, 0, low_inclusive=False, example=5e-4)
    check_finite("lr_decay", s.lr_decay, 0, 1, low_inclusive=False)
    check_int_range("decay_step", s.decay_step, 1)
    check_finite("weight_decay", s.weight_decay, 0)
    for name in ("frontview_std", "sigma", "norm_ratio", "full_crop", "norm_crop", "geo_crop", "perspective_p"):
        check_finite(name, getattr(s, name), 0)
    for value in (*s.frontview_center, *s.background):
        check_finite("frontview_center/background", value)
    check_int_range("eval_every", s.eval_every, 0)
    check_seed(s.seed, name="seed")
    return s


def make_guide(clip: str | ClipGuide | None, device: torch.device, autocast_dtype: torch.dtype | None = None,
               trust_pickle: bool = False) -> ClipGuide:
    if isinstance(clip, ClipGuide):
        return clip
    model, tokenizer, label = load_clip(clip, device, trust_pickle=trust_pickle)
    return ClipGuide(model, tokenizer, label, autocast_dtype=autocast_dtype)


def stylize_mesh(
    mesh: Any = "default",
    prompt: str = DEFAULT_PROMPT,
    *,
    clip: str | ClipGuide | None = None,
    settings: StylizeSettings | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    renderer: str | MeshRenderer = "auto",
    max_vertices: int | None = None,
    refine: str | None = None,
    target_edge: float | None = None,
    progress: bool | None = None,
    eval_every: int | None = None,
    evaluator: Callable[["XMeshOptimization", int], float] | None = None,
    callback: Callable[[XMeshOptimization], None] | None = None,
    log: Callable[[str], None] | None = None,
    allow_partial: bool = False,
    memory_check: bool = True,
    trust_pickle: bool = False,
    ground_truth: bool = True,
    **overrides: Any,
) -> StylizeResult:
    """Stylise ``mesh`` from ``prompt`` with X-Mesh and return a :class:`StylizeResult`.

    ``settings`` defaults to the MIT-30 settings; keyword ``overrides`` replace single fields (e.g.
    ``iterations=100``). ``dtype`` is the CLIP compute dtype (autocast; default bf16/fp16 on CUDA, fp32
    on CPU). ``evaluator(run, iteration)`` is called with the run (``run.current()`` is the current
    field output) once with ``iteration=None`` on the untouched mesh (``eval_initial``), then *after*
    updates 0, ``eval_every``, 2 ``eval_every``, ... (``eval_history``), e.g. for ITS curves.
    Independently, the deterministic evaluation score is computed before the first update and after
    every ``settings.eval_every``-th update and the last one (``eval_score_history``). When the prompt
    asks for a palette colour (the Shapes vocabulary) and ``ground_truth`` is set, the result carries
    the ground-truth metrics of :func:`attncraft.mesh.metrics.mesh_metrics`. Before any optimisation
    the memory the run needs is estimated from the mesh size and settings (:mod:`attncraft.mesh.memory`)
    and a run that does not fit is refused (``memory_check=False`` skips that); ``allow_partial``
    accepts a truncated mesh file (what was dropped is noted); ``trust_pickle`` allows a pickled CLIP
    checkpoint.
    """
    from attncraft.devices import resolve_device, resolve_dtype
    from attncraft.errors import InputError
    from attncraft.mesh.io import load_mesh
    from attncraft.progress import progress_bar

    settings = settings or StylizeSettings()
    if overrides:
        unknown = set(overrides) - set(StylizeSettings.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown stylize settings: {sorted(unknown)}")
        settings = StylizeSettings(**{**settings.to_dict(), **overrides})
    validate_settings(settings)
    dev = resolve_device(device)
    autocast = resolve_dtype(dtype, dev)
    log = log or (lambda _msg: None)
    data = load_mesh(mesh, device=dev.type, max_vertices=max_vertices, refine=refine, target_edge=target_edge,
                     allow_partial=allow_partial)
    if isinstance(renderer, MeshRenderer):
        rend, rlabel = renderer, f"renderer: {renderer.name}"
    else:
        rend, rlabel = get_renderer(renderer, device=dev)
    guide = make_guide(clip, dev, autocast, trust_pickle)
    guide.tokenize(prompt)  # a prompt CLIP cannot read fails here, before anything is reported or built
    need, have = check_memory(data.num_vertices, settings, dev, guide, skip=not memory_check)
    log(f"mesh: {data.source} ({data.num_vertices:,} vertices, {data.num_faces:,} faces)")
    for note in data.notes:
        log(f"mesh: {note}")
    log(f"clip: {guide.label}")
    log(rlabel)
    log(f"memory: {describe(need, have)}")
    run = XMeshOptimization(data, prompt, guide, rend, settings, dev)
    evals: list[tuple[int, float]] = []
    eval_scores: list[tuple[int, float]] = []
    start = time.perf_counter()
    eval_initial = float(evaluator(run, None)) if evaluator is not None and eval_every else None
    initial_eval_score = run.evaluation_score()
    last_eval = [initial_eval_score]

    def after_update(i: int) -> None:
        if evaluator is not None and eval_every and i % eval_every == 0:
            evals.append((i, float(evaluator(run, i))))
        last = i == settings.iterations - 1
        if last or (settings.eval_every and i % settings.eval_every == 0):
            eval_scores.append((i, run.evaluation_score()))
            last_eval[0] = eval_scores[-1][1]

    for i in progress_bar(range(settings.iterations), "stylize", total=settings.iterations, enabled=progress,
                          postfix=lambda: f"train {run.last_score:.4f}  eval {last_eval[0]:.4f}"):
        score = run.step()
        if not math.isfinite(score):
            raise InputError(f"the optimisation diverged at iteration {i} (score {score})",
                             "lower --lr or check the mesh for extreme geometry")
        after_update(i)
        if callback is not None:
            callback(run)
    seconds = time.perf_counter() - start
    final = run.current()
    colors = final.colors.clamp(0, 1).float().cpu().numpy()
    vertices = final.vertices.float().cpu().numpy()
    from attncraft.mesh.metrics import mesh_metrics

    return StylizeResult(
        vertices=vertices, faces=data.faces.copy(), colors=colors, prompt=" ".join(prompt.split()),
        settings={**settings.to_dict(), "device": str(dev), "clip_dtype": str(autocast).replace("torch.", "")},
        clip_label=guide.label, renderer_label=rlabel, mesh_source=data.source, mesh_notes=list(data.notes),
        score_history=list(run.score_history), eval_history=evals, seconds=seconds, run=run,
        eval_initial=eval_initial, eval_score_history=eval_scores, initial_eval_score=initial_eval_score,
        ground_truth=mesh_metrics(vertices, data.faces, colors, prompt) if ground_truth else None,
    )
