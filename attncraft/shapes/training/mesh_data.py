"""Training data of the mesh-reading shapes CLIP: renders of painted procedural meshes and captions.

The CPU part (scene descriptions, captions, token ids) is a seeded stream of chunks with the same
interface as the 2-D world's :class:`~attncraft.shapes.training.data.SceneChunks`, so it runs in the
same worker processes (:class:`~attncraft.shapes.training.data.ChunkStream`); the renders are made on
the training device when a chunk enters the pool (:func:`render_mesh_uint8`), with the project's
own renderer (:func:`attncraft.mesh.procedural.render_mesh_scenes`).

Seeds: mesh chunk ``k`` uses seed ``MESH_SEED_BASE + k`` (>= 10,000,000 like every training seed);
the evaluation draws its meshes from seed 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import IterableDataset

from attncraft.shapes.mesh_world import MeshScene, caption_mesh_scene, sample_mesh_scenes
from attncraft.shapes.training.data import MAX_LENGTH, Chunk, SceneChunks, tokenize_fast

MESH_SEED_BASE = 20_000_000


class MeshChunks(SceneChunks):
    """An endless, seeded stream of :class:`~attncraft.shapes.training.data.Chunk` of mesh scenes
    (iterated like :class:`~attncraft.shapes.training.data.SceneChunks`, of which only ``chunk`` differs)."""

    def __init__(self, chunk_size: int, caption_omits: Sequence[float] = (0.0,), seed_base: int = MESH_SEED_BASE,
                 keep_text: bool = False):
        IterableDataset.__init__(self)
        self.chunk_size = chunk_size
        self.caption_omits = tuple(caption_omits)
        self.seed_base = seed_base
        self.keep_text = keep_text

    def chunk(self, k: int) -> Chunk:
        scenes = sample_mesh_scenes(self.chunk_size, seed=self.seed_base + k)
        n_c = len(self.caption_omits)
        base = (self.seed_base + k) * self.chunk_size * n_c
        caps = [[caption_mesh_scene(s, seed=base + i * n_c + c, omit=omit) for c, omit in enumerate(self.caption_omits)]
                for i, s in enumerate(scenes)]
        tokens = tokenize_fast([c for row in caps for c in row]).reshape(len(scenes), n_c, MAX_LENGTH)
        return Chunk(k, scenes, tokens, caps if self.keep_text else None)


def render_mesh_uint8(scenes: Sequence[MeshScene], device: torch.device, generator: torch.Generator | None = None,
                      size: int = 64) -> torch.Tensor:
    """Render mesh scenes on ``device`` with the training randomisation: (N, 3, size, size) uint8."""
    from attncraft.mesh.procedural import RenderStyle, render_mesh_scenes

    img = render_mesh_scenes(scenes, device=device, style=RenderStyle("train", size), generator=generator)
    return (img * 255.0).round_().to(torch.uint8)
