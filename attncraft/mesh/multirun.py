"""Many independent X-Mesh runs stepped together: one batched iteration for R runs of one topology.

A stylisation at the Shapes CLIP's 64 pixels keeps a GPU busy for a fraction of a millisecond per
kernel; what limits one run is the launch of some hundreds of small kernels per iteration. Measuring a
claim over hundreds of runs (meshes x prompts x seeds x fields) therefore batches the *runs*:

* the R style fields (one kind, each built from its own seed exactly as
  :func:`~attncraft.mesh.style_field.build_style_field` builds it) are stacked with
  ``torch.func.stack_module_state`` and evaluated with ``vmap(functional_call)``: one forward for all
  runs, each with its own weights, Fourier matrix, mesh input and text embedding;
* all runs' views go through **one** renderer call (per-view vertices and colours, shared faces: the
  runs of one group share a face array, e.g. the same mesh, or procedural meshes of one grid);
* the augmentations of all runs are drawn as tensors (:mod:`attncraft.mesh.augment`, the same
  distributions as the reference's torchvision transforms; each run still shares one draw across its
  views) and all images go through **one** CLIP call;
* the loss is the *sum* of the runs' losses, so one backward gives every run its own gradient, and
  one fused Adam over the stacked parameters is R independent Adams (Adam is element-wise).

The runs are therefore the same optimisations as :class:`~attncraft.mesh.stylize.XMeshOptimization`
runs (same initialisation, loss, optimiser and schedule); only the random stream of views and
augmentations differs (one generator for the group instead of one per run). A test checks that, with
the randomness switched off, a batched run and a single run take the same steps.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from attncraft.mesh.augment import grids_from_params, sample_crops, sample_homographies
from attncraft.mesh.camera import EVAL_FOVY, EVAL_RADIUS, TRAIN_FOVY, TRAIN_RADIUS, Cameras, make_cameras, mes_views
from attncraft.mesh.clip_guidance import AugmentPlan, ClipGuide, fill_value
from attncraft.mesh.io import MeshData
from attncraft.mesh.style_field import build_style_field, field_input
from attncraft.mesh.stylize import StylizeSettings


def _repeat_cameras(cams: Cameras, times: int) -> Cameras:
    return Cameras(cams.world_to_cam.repeat(times, 1, 1), cams.fovy, cams.aspect)


class BatchedXMesh:
    """R X-Mesh runs of one field kind on meshes that share one face array, stepped together.

    ``meshes``: one :class:`~attncraft.mesh.io.MeshData` for all runs, or one per run (same vertex
    count and faces); ``prompts`` and ``seeds``: one per run. ``settings`` as for a single run
    (``field`` picks the kind; ``seed`` seeds the group's view/augmentation stream).
    """

    def __init__(self, meshes: MeshData | Sequence[MeshData], prompts: Sequence[str], seeds: Sequence[int],
                 guide: ClipGuide, renderer, settings: StylizeSettings | None = None, device: torch.device | str = "cpu"):
        s = self.settings = settings or StylizeSettings()
        self.device = torch.device(device)
        self.guide, self.renderer = guide, renderer
        self.runs = len(prompts)
        if len(seeds) != self.runs:
            raise ValueError("one seed per prompt")
        meshes = [meshes] * self.runs if isinstance(meshes, MeshData) else list(meshes)
        if len(meshes) != self.runs:
            raise ValueError("one mesh per run (or one for all)")
        faces = meshes[0].faces
        if any(m.faces.shape != faces.shape or (m.faces != faces).any() for m in meshes[1:]):
            raise ValueError("the meshes of one batch must share their faces")
        self.faces = torch.as_tensor(faces, dtype=torch.long, device=self.device)
        verts = [torch.as_tensor(m.vertices, dtype=torch.float32) for m in meshes]
        self.base_vertices = torch.stack(verts).to(self.device)
        self.normals = torch.stack([torch.as_tensor(m.normals, dtype=torch.float32) for m in meshes]).to(self.device)
        self.p = torch.stack([field_input(v, s.symmetry, s.standardize) for v in verts]).to(self.device)
        self.prompts = list(prompts)
        self.text = torch.stack([guide.encode_text(p) for p in prompts])  # (R, 1, D)
        fields = [build_style_field(s.field, text_dim=guide.embed_dim, seed=int(seed), sigma=s.sigma, width=s.width,
                                    depth=s.depth, color_depth=s.color_depth, norm_depth=s.norm_depth,
                                    norm_ratio=s.norm_ratio).to(self.device) for seed in seeds]
        self.along_normal = bool(getattr(fields[0], "displacement_along_normal", False))
        params, buffers = stack_module_state(fields)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        self._template = copy.deepcopy(fields[0]).to("meta")
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=s.learning_rate, weight_decay=s.weight_decay,
                                          fused=self.device.type in ("cuda", "cpu"))
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=s.decay_step, gamma=s.lr_decay)
        self.generator = torch.Generator().manual_seed(s.seed)
        self.plan = AugmentPlan.xmesh(s.n_augs, s.n_normaugs, s.n_geoaugs, s.full_crop, s.norm_crop, s.geo_crop, s.geoloss)
        self.iteration = 0
        elev, azim = mes_views()
        self._eval_cams = make_cameras(elev, azim, EVAL_RADIUS, EVAL_FOVY, device=self.device)

    # ------------------------------------------------------------------------------------------
    def _field(self, params, buffers, p, text):
        return functional_call(self._template, (params, buffers), (p, text))

    def styled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vertices (R, V, 3) displaced and renormalised, colours (R, V, 3) = 0.5 + c)."""
        c, d = vmap(self._field)(self.params, self.buffers, self.p, self.text)
        moved = self.base_vertices + (self.normals * d if self.along_normal else d)
        centered = moved - moved.mean(dim=1, keepdim=True)
        verts = centered / centered.norm(dim=-1).amax(dim=1)[:, None, None]
        return verts, 0.5 + c

    def sample_cameras(self) -> Cameras:
        """V training views per run (view 0 at the front, the rest Gaussian), then V more for the geometry loss."""
        s = self.settings
        groups = 2 if s.geoloss and s.n_geoaugs > 0 else 1
        n = self.runs * groups
        elev = torch.zeros(n, s.views, dtype=torch.float64)
        azim = torch.zeros(n, s.views, dtype=torch.float64)
        if s.frontview_std > 0 and s.views > 1:
            elev[:, 1:] = torch.randn(n, s.views - 1, generator=self.generator, dtype=torch.float64) * (torch.pi / s.frontview_std)
            azim[:, 1:] = torch.randn(n, s.views - 1, generator=self.generator, dtype=torch.float64) * (2 * torch.pi / s.frontview_std)
        elev, azim = elev + s.frontview_center[0], azim + s.frontview_center[1]
        # order: run-major, then group, then view
        return make_cameras(elev.reshape(-1), azim.reshape(-1), TRAIN_RADIUS, TRAIN_FOVY, device=self.device)

    def augmentation_grids(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(R * A, S, S, 2) grids and masks; each run's A augmentations drawn independently."""
        s = self.settings
        specs = self.plan.specs
        crops = torch.empty(self.runs, len(specs), 4, dtype=torch.float64)
        for a, spec in enumerate(specs):
            crops[:, a] = sample_crops(self.runs, s.resolution, s.resolution, (spec.scale, spec.scale), self.generator)
        hom = sample_homographies(self.runs * len(specs), size, 0.5, s.perspective_p, self.generator)
        return grids_from_params(crops.view(-1, 4), hom, (s.resolution, s.resolution), size, self.device)

    def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed loss, (R, A) cosines) of one iteration's renders and augmentations."""
        s = self.settings
        verts, colors = self.styled()
        cams = self.sample_cameras()
        groups = 2 if s.geoloss and s.n_geoaugs > 0 else 1
        per_run = groups * s.views
        v_all = verts.repeat_interleave(per_run, dim=0)
        col = colors[:, None, None].expand(-1, groups, s.views, -1, -1)
        if groups == 2:
            col = torch.cat([col[:, :1], torch.full_like(col[:, 1:], 0.5)], dim=1)
        out = self.renderer.render(v_all, self.faces, col.reshape(-1, *colors.shape[1:]), cams, s.resolution,
                                   background=s.background)
        images = out.image.view(self.runs, groups, s.views, s.resolution, s.resolution, 3).permute(0, 1, 2, 5, 3, 4)
        size = self.guide.image_size
        grids, valid = self.augmentation_grids(size)
        fill = fill_value(s.background)
        fill_t = fill if isinstance(fill, float) else fill.to(images.device)
        source = torch.tensor([spec.source for spec in self.plan.specs], device=images.device)
        n_aug = len(self.plan.specs)
        picked = images[:, source]  # (R, A, V, 3, H, W)
        shifted = (picked - fill_t).reshape(self.runs * n_aug, s.views * 3, s.resolution, s.resolution)
        grids = torch.where(valid[..., None], grids, torch.full_like(grids, 4.0)).to(shifted.dtype)
        warped = F.grid_sample(shifted, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
        emb = self.guide.encode_images(warped.reshape(-1, 3, size, size), offset=fill)
        emb = emb.view(self.runs, n_aug, s.views, -1).mean(dim=2)
        cos = F.cosine_similarity(emb, self.text.expand(-1, n_aug, -1), dim=-1)
        return -cos.sum(), cos.detach()

    def step(self) -> torch.Tensor:
        """One iteration of every run; returns the (R,) training scores (-L1 of each run)."""
        loss, cos = self.loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.iteration += 1
        return cos[:, 0]

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluation_scores(self, views: int = 24) -> torch.Tensor:
        """(R,) deterministic scores: mean cosine of the first ``views`` fixed MES views (no augmentation),
        as :func:`attncraft.mesh.evaluation.fixed_view_score` scores one run."""
        return self.scores_of(*self.styled(), views=views)

    @torch.no_grad()
    def scores_of(self, verts: torch.Tensor, colors: torch.Tensor, views: int = 24, chunk: int = 2048) -> torch.Tensor:
        """(R,) deterministic scores of given (R, V, 3) vertices and colours against each run's prompt."""
        s = self.settings
        cams = Cameras(self._eval_cams.world_to_cam[:views], self._eval_cams.fovy, self._eval_cams.aspect)
        text = F.normalize(self.text[:, 0].float(), dim=-1)
        per = max(1, chunk // views)
        out = []
        for r0 in range(0, self.runs, per):
            r1 = min(self.runs, r0 + per)
            img = self.renderer.render(verts[r0:r1].repeat_interleave(views, 0), self.faces,
                                       colors[r0:r1].clamp(0, 1).repeat_interleave(views, 0),
                                       _repeat_cameras(cams, r1 - r0), s.resolution, background=s.background).image
            emb = F.normalize(self.guide.encode_images(self.guide.resize(img.permute(0, 3, 1, 2))), dim=-1)
            out.append((emb.view(r1 - r0, views, -1) * text[r0:r1, None]).sum(-1).mean(1))
        return torch.cat(out)

    @torch.no_grad()
    def color_fractions(self, asked: Sequence[str], views: int = 8) -> torch.Tensor:
        """(R,) ground-truth colour fractions (:func:`attncraft.mesh.metrics.batched_color_fractions`)."""
        from attncraft.mesh.metrics import batched_color_fractions

        verts, colors = self.styled()
        return batched_color_fractions(verts, self.faces, colors, asked, resolution=64, renderer=self.renderer, views=views)
