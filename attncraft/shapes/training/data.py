"""Training data for the Shapes models: seeded scene streams and on-device pools.

A training step at batch 512 takes a few milliseconds on an H200, far less than drawing and
captioning 512 scenes in Python. So each trainer keeps a **pool** of ready examples on the training
device (rendered images, or VAE latents, plus tokenised captions), samples its batches from it, and
keeps **refreshing** it from a stream of fresh scenes:

* :class:`SceneChunks` draws chunks of scenes (seeded: chunk ``k`` uses seed ``TRAIN_SEED_BASE + k``,
  disjoint from the evaluation seeds ``0..N``) and captions and tokenises them (several captions per
  scene, with different grammar seeds and levels of detail);
* :class:`ChunkStream` runs it in worker processes (a ``DataLoader``; numpy arrays only, so no
  shared memory is needed) and hands chunks over through a background thread without blocking the
  training loop; with ``workers=0`` it is synchronous and deterministic (CPU smoke runs, tests);
* :class:`DevicePool` is a ring buffer of per-example tensors on the device; rendering happens on
  the training device (:func:`render_uint8`).
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from attncraft.shapes.world import Scene, render_scenes, sample_scenes

TRAIN_SEED_BASE = 10_000_000
"""Training chunks use seeds ``TRAIN_SEED_BASE + k``; evaluation uses small seeds (0..N)."""

MAX_LENGTH = 77
BOS_ID, EOS_ID = 49406, 49407


@dataclass
class Chunk:
    index: int
    scenes: list[Scene]
    tokens: np.ndarray | None  # (n, C, MAX_LENGTH) int32, C captions per scene
    captions: list[list[str]] | None = None
    swapped: np.ndarray | None = None  # like tokens, the contrast captions (SceneChunks' contrast)


def _identity(x):
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class SceneChunks(IterableDataset):
    """An endless, seeded stream of :class:`Chunk` (scenes + tokenised captions; with ``motion``,
    moving scenes captioned with their motion clauses)."""

    def __init__(
        self,
        chunk_size: int,
        caption_omits: Sequence[float] = (0.0,),
        num_objects: int | tuple[int, int] = (1, 3),
        patterns: bool = True,
        seed_base: int = TRAIN_SEED_BASE,
        keep_text: bool = False,
        motion: bool = False,
        relation: float | None = None,
        vertical: float = 0.5,
        contrast: str | None = None,
    ):
        super().__init__()
        self.chunk_size = chunk_size
        self.caption_omits = tuple(caption_omits)
        self.num_objects = num_objects
        self.patterns = patterns
        self.seed_base = seed_base
        self.keep_text = keep_text
        self.motion = motion
        self.relation = relation  # share of relation captions of multi-object scenes (None: the grammar's)
        self.vertical = vertical  # share of vertical relations where a horizontal one holds too
        if contrast not in (None, "motion", "relation"):
            raise ValueError(f"unknown contrast {contrast!r}: None, 'motion' or 'relation'")
        # also the contrast captions (Chunk.swapped), same seeds: "motion", the scene with every motion
        # turned the other way; "relation", each caption with its relation words flipped
        self.contrast = contrast

    @property
    def relation_share(self) -> float:
        """Probability that a caption of a still multi-object scene states a relation."""
        from attncraft.shapes.captions import RELATION_SHARE

        return RELATION_SHARE if self.relation is None else self.relation

    def chunk(self, k: int) -> Chunk:
        from attncraft.shapes.captions import caption_scene

        scenes = sample_scenes(self.chunk_size, seed=self.seed_base + k, num_objects=self.num_objects,
                               patterns=self.patterns, motion=self.motion)
        if not self.caption_omits:
            return Chunk(k, scenes, None)
        n_c = len(self.caption_omits)
        base = (self.seed_base + k) * self.chunk_size * n_c
        rel = self.relation_share
        caps = [
            [caption_scene(s, seed=base + i * n_c + c, omit=omit, relation=rel, vertical=self.vertical)
             for c, omit in enumerate(self.caption_omits)]
            for i, s in enumerate(scenes)
        ]
        tokens = tokenize_fast([c for row in caps for c in row]).reshape(len(scenes), n_c, MAX_LENGTH)
        swapped = None
        if self.contrast == "relation":
            from attncraft.shapes.captions import flip_relations

            swapped = tokenize_fast([flip_relations(c) for row in caps for c in row]).reshape(len(scenes), n_c, MAX_LENGTH)
        elif self.contrast == "motion":
            from attncraft.shapes.training.motion import swap_motions

            swapped = tokenize_fast([
                caption_scene(swap_motions(s), seed=base + i * n_c + c, omit=omit, relation=rel, vertical=self.vertical)
                for i, s in enumerate(scenes) for c, omit in enumerate(self.caption_omits)
            ]).reshape(len(scenes), n_c, MAX_LENGTH)  # fmt: skip
        return Chunk(k, scenes, tokens, caps if self.keep_text else None, swapped)

    def __iter__(self):
        info = get_worker_info()
        w, n_w = (info.id, info.num_workers) if info is not None else (0, 1)
        k = w
        while True:
            yield self.chunk(k)
            k += n_w


def tokenize(texts: Sequence[str]) -> np.ndarray:
    """CLIP token ids, padded to 77 with the end token (as the SD pipelines do), (n, 77) int32."""
    from attncraft.tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer()
    ids = tok(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="np")
    return np.asarray(ids["input_ids"], dtype=np.int32)


_PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_ASCII_CAPTION = re.compile(r"^[\x20-\x7e]*$")


class CachedTokenizer:
    """The CLIP tokenizer with a per-word cache: ~10x faster on the caption grammar's small vocabulary.

    CLIP's BPE works on each pre-tokenised piece (word, digit or punctuation run) independently, so
    the ids of a caption are BOS + the concatenated ids of its pieces + EOS, padded with EOS. Texts
    that are not plain ASCII go through the real tokenizer; :meth:`__call__` can check a sample of
    each batch against it (``check``) and falls back to it on any difference.
    """

    def __init__(self):
        self._cache: dict[str, list[int]] = {}
        self.mismatches = 0

    def _piece(self, piece: str) -> list[int]:
        ids = self._cache.get(piece)
        if ids is None:
            from attncraft.tokenizer import load_clip_tokenizer

            ids = load_clip_tokenizer()(piece, add_special_tokens=False)["input_ids"]
            self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int] | None:
        text = " ".join(text.split()).lower()
        if not _ASCII_CAPTION.match(text):
            return None
        ids = [BOS_ID]
        for piece in _PIECE.findall(text):
            ids.extend(self._piece(piece))
        ids = ids[: MAX_LENGTH - 1] + [EOS_ID]
        return ids + [EOS_ID] * (MAX_LENGTH - len(ids))

    def __call__(self, texts: Sequence[str], check: int = 16) -> np.ndarray:
        rows = [self.encode(t) for t in texts]
        if any(r is None for r in rows):
            return tokenize(texts)
        out = np.asarray(rows, dtype=np.int32)
        if check:
            step = max(1, len(texts) // check)
            sample = list(range(0, len(texts), step))[:check]
            if not np.array_equal(out[sample], tokenize([texts[i] for i in sample])):
                self.mismatches += 1
                return tokenize(texts)
        return out


_CACHED = CachedTokenizer()


def tokenize_fast(texts: Sequence[str], check: int = 16) -> np.ndarray:
    """:func:`tokenize`, through the per-word cache (checked against the real tokenizer on a sample)."""
    return _CACHED(texts, check=check)


class ChunkStream:
    """Chunks from :class:`SceneChunks`, made in ``workers`` processes (0: in this process, on demand).

    If the worker processes cannot start or die (no shared memory for semaphores, say), the stream
    falls back to making chunks in this process (``synchronous`` becomes True) and says so once.
    """

    def __init__(self, dataset: SceneChunks, workers: int = 0, prefetch: int = 4, queue_size: int = 8):
        self.dataset = dataset
        self.workers = workers
        self._stop = threading.Event()
        self._q: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._served = 0
        self._it = None
        if workers > 0:
            try:
                loader = DataLoader(
                    dataset, batch_size=None, num_workers=workers, collate_fn=_identity, prefetch_factor=prefetch,
                    worker_init_fn=_worker_init, multiprocessing_context="fork",
                )
                self._it = iter(loader)
                self._q = queue.Queue(maxsize=queue_size)
                self._thread = threading.Thread(target=self._pump, daemon=True)
                self._thread.start()
            except Exception as exc:  # pragma: no cover - depends on the machine
                self._fallback(exc)
        else:
            self._it = iter(dataset)

    @property
    def synchronous(self) -> bool:
        return self._q is None

    def _fallback(self, exc: BaseException) -> None:
        print(f"[data] scene worker processes unavailable ({type(exc).__name__}: {exc}); "
              "generating scenes in the main process", flush=True)
        self._q = None
        self._thread = None
        # continue with chunk indices no worker can have produced
        self._it = (self.dataset.chunk(k) for k in itertools.count(1_000_000 + self._served))

    def _pump(self) -> None:
        try:
            for chunk in self._it:
                while not self._stop.is_set():
                    try:
                        self._q.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as exc:  # surfaced by get()
            self._error = exc

    def get(self, block: bool = True) -> Chunk | None:
        """The next chunk; ``None`` when ``block=False`` and none is ready yet."""
        if self._q is not None and self._error is not None and self._q.empty():
            self._fallback(self._error)
        if self._q is None:
            self._served += 1
            return next(self._it)
        try:
            chunk = self._q.get(block=block, timeout=120 if block else None)
        except queue.Empty:
            if block:
                self._fallback(RuntimeError("scene workers produced nothing for 120 s"))
                return self.get(block=True)
            return None
        self._served += 1
        return chunk

    def close(self) -> None:
        self._stop.set()
        if self._q is not None:
            while True:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    break
        if self._thread is not None:
            self._thread.join(timeout=5)
        shutdown = getattr(self._it, "_shutdown_workers", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # pragma: no cover
                pass
        self._it = None


class DevicePool:
    """A ring buffer of per-example tensors on the device; batches are drawn uniformly from it."""

    def __init__(self, capacity: int, specs: dict[str, tuple[tuple[int, ...], torch.dtype]], device: torch.device):
        self.capacity = capacity
        self.device = device
        self.data = {k: torch.empty((capacity, *shape), dtype=dtype, device=device)
                     for k, (shape, dtype) in specs.items()}
        self.size = 0
        self.pos = 0
        self.added = 0

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def add(self, **tensors: torch.Tensor) -> None:
        n = next(iter(tensors.values())).shape[0]
        n = min(n, self.capacity)
        idx = (torch.arange(n, device=self.device) + self.pos) % self.capacity
        for k, v in tensors.items():
            self.data[k][idx] = v[:n].to(self.device, self.data[k].dtype, non_blocking=True)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        self.added += n

    def sample_index(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.size, (batch,), device=self.device, generator=generator)


def render_uint8(scenes: Sequence[Scene], device: torch.device, size: int = 64) -> torch.Tensor:
    """Render scenes on ``device``: (N, 3, size, size) uint8."""
    img = render_scenes(scenes, size=size, device=device).images
    return (img * 255.0).round_().to(torch.uint8)


def render_uint8_with_mask(scenes: Sequence[Scene], device: torch.device, size: int = 64,
                           dilate: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Render scenes on ``device``: images (N, 3, size, size) uint8 and the union of the object masks,
    dilated by ``dilate`` pixels (to cover the anti-aliased rims), (N, 1, size, size) uint8."""
    res = render_scenes(scenes, size=size, device=device)
    img = (res.images * 255.0).round_().to(torch.uint8)
    mask = res.masks.any(dim=1, keepdim=True).float()
    if dilate:
        mask = torch.nn.functional.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
    return img, mask.to(torch.uint8)


def to_unit(images_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (0..255) -> float in [-1, 1] (the VAE and shapes CLIP pixel convention)."""
    return images_u8.to(dtype) * (2.0 / 255.0) - 1.0


def fill_pool(pool: DevicePool, stream: ChunkStream, encode: Callable[[Chunk], dict[str, torch.Tensor]],
              limit_s: float | None = None, log: Callable[[str], None] | None = None) -> int:
    """Fill ``pool`` from ``stream`` (blocking) until full or ``limit_s`` seconds have passed."""
    import time

    t0 = time.time()
    chunks = 0
    while not pool.full:
        chunk = stream.get(block=True)
        pool.add(**encode(chunk))
        chunks += 1
        if limit_s is not None and time.time() - t0 > limit_s and pool.size > 0:
            break
    if log:
        log(f"pool: {pool.size} examples from {chunks} chunks in {time.time() - t0:.1f}s")
    return chunks


def refresh_pool(pool: DevicePool, stream: ChunkStream, encode: Callable[[Chunk], dict[str, torch.Tensor]]) -> bool:
    """Replace the oldest examples by one fresh chunk, if one is ready (always, when synchronous)."""
    chunk = stream.get(block=False)
    if chunk is None:
        return False
    pool.add(**encode(chunk))
    return True


def maybe_refresh(step: int, every: int, pool: DevicePool, stream: ChunkStream,
                  encode: Callable[[Chunk], dict[str, torch.Tensor]]) -> bool:
    """Refresh every ``every`` steps; much more rarely when chunks are made in this process on a GPU run
    (drawing a chunk in Python would otherwise stall the GPU)."""
    if stream.synchronous and pool.device.type == "cuda":
        every = max(every, 200)
    if step == 0 or step % every:
        return False
    return refresh_pool(pool, stream, encode)


def captioned_batch(pool: DevicePool, batch: int, text_encoder, empty: torch.Tensor, dropout: float,
                    autocast) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch from ``pool`` (``latents`` and ``tokens`` of several captions per example): the
    latents (float32) and the text states of one random caption each, replaced by ``empty`` (the
    empty prompt's states, ``(1, T, D)``) with probability ``dropout`` (for classifier-free guidance)."""
    z0, ids = _pool_batch(pool, batch)
    with torch.no_grad(), autocast:
        cond = text_encoder(ids).last_hidden_state.float()
    drop = torch.rand(batch, device=pool.device) < dropout
    return z0, torch.where(drop[:, None, None], empty.expand(batch, -1, -1), cond)


def captioned_ids(pool: DevicePool, batch: int, empty_ids: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`captioned_batch` for a text encoder being trained: the latents and the token ids of one
    random caption each, replaced by ``empty_ids`` (the empty prompt's ids, ``(1, T)``) with probability
    ``dropout``; the caller encodes them (with gradients), so the empty prompt's states are always the
    current encoder's, as at sampling."""
    z0, ids = _pool_batch(pool, batch)
    drop = torch.rand(batch, device=pool.device) < dropout
    return z0, torch.where(drop[:, None], empty_ids.expand(batch, -1), ids)


def caption_fields(n_caps: int, contrast: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The pool fields of ``n_caps`` tokenised captions per example (and of their contrast captions)."""
    fields = {"tokens": ((n_caps, MAX_LENGTH), torch.int32)}
    if contrast:
        fields["swapped"] = ((n_caps, MAX_LENGTH), torch.int32)
    return fields


def caption_tensors(chunk: Chunk) -> dict[str, torch.Tensor]:
    """A chunk's caption tokens (and contrast captions) for :meth:`DevicePool.add`."""
    out = {"tokens": torch.from_numpy(chunk.tokens)}
    if chunk.swapped is not None:
        out["swapped"] = torch.from_numpy(chunk.swapped)
    return out


def contrast_ids(pool: DevicePool, batch: int, empty_ids: torch.Tensor, dropout: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`captioned_ids` with the contrast captions of a pool made with ``SceneChunks(contrast=...)``:
    the latents, the ids of one random caption each (``empty_ids`` with probability ``dropout``), the
    ids of the same caption's contrast version, and which rows count for a contrast term (a contrast
    caption that differs, not dropped)."""
    idx = pool.sample_index(batch)
    cap = torch.randint(0, pool.data["tokens"].shape[1], (batch,), device=pool.device)
    ids, swapped = pool.data["tokens"][idx, cap].long(), pool.data["swapped"][idx, cap].long()
    drop = torch.rand(batch, device=pool.device) < dropout
    rows = (swapped != ids).any(dim=1) & ~drop
    return pool.data["latents"][idx].float(), torch.where(drop[:, None], empty_ids.expand(batch, -1), ids), swapped, rows


def _pool_batch(pool: DevicePool, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random examples of ``pool``: their latents (float32) and the ids of one random caption each."""
    idx = pool.sample_index(batch)
    cap = torch.randint(0, pool.data["tokens"].shape[1], (batch,), device=pool.device)
    return pool.data["latents"][idx].float(), pool.data["tokens"][idx, cap].long()
