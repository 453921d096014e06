"""Per-frame prompts: a video's text as states anchored at frames, interpolated frame by frame.

A :class:`PromptSchedule` is an ordered set of *states* (sub-prompts), each anchored at a frame:
``{0: "a red circle on the left", 15: "a red circle on the right"}``, or a list of states spread
evenly over the clip (:meth:`PromptSchedule.from_states`, anchors ``trunc(linspace(0, F - 1, K))``,
as VSTAR's synopsis prompting places its sub-prompts). Each state is encoded once by the text
encoder; frame ``f`` between anchors ``a_k <= f <= a_{k+1}`` gets

    e_f = (1 - w) * E_k + w * E_{k+1},   w = (f - a_k) / (a_{k+1} - a_k),

so anchor frames carry exactly their state's embedding, frames inside a segment move linearly, and
frames before the first anchor (after the last one) hold the first (last) state. The same
interpolation as diffusers' FreeNoise prompt dictionary, without FreeNoise's sliding windows.

The interpolation is a ``(frames, states)`` weight matrix (:meth:`PromptSchedule.weights`) with at
most two non-zero entries per row, applied to the ``(states, tokens, dim)`` embeddings
(:func:`interpolate_embeddings`). Pipelines stack the per-frame embeddings of a batch b-major,
``(batch * frames, tokens, dim)``, which is the layout ``UNetMotionModel`` reads.

:func:`parse_states` reads the CLI's ``--state`` values and states files: every line either
``FRAME: text`` (anchored) or plain text (spread evenly), not a mix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attncraft.errors import InputError

__all__ = ["PromptSchedule", "equally_spaced_anchors", "interpolate_embeddings", "parse_states", "as_schedule"]

_ANCHORED = re.compile(r"^\s*(\d+)\s*:\s*(.*\S)\s*$")


def equally_spaced_anchors(num_frames: int, num_states: int) -> list[int]:
    """Anchor frame of each of ``num_states`` states spread over ``num_frames`` frames.

    ``trunc(linspace(0, F - 1, K))`` in exact integer arithmetic (VSTAR casts the float linspace to
    an integer, which truncates): F = 32, K = 3 gives 0, 15, 31. Needs ``K <= F`` so that no two
    states share a frame.
    """
    if num_states < 1:
        raise InputError("a prompt schedule needs at least one state", "pass a prompt or at least one --state")
    if num_states > num_frames:
        raise InputError(
            f"{num_states} states do not fit into {num_frames} frames (each state needs its own frame)",
            f"pass at most {num_frames} states, or more --frames",
        )
    if num_states == 1:
        return [0]
    return [(k * (num_frames - 1)) // (num_states - 1) for k in range(num_states)]


@dataclass(frozen=True)
class PromptSchedule:
    """States of a video, in time order; ``frames[k]`` anchors ``texts[k]`` (``None``: spread evenly
    over whatever number of frames the video gets, see :meth:`anchors`)."""

    texts: tuple[str, ...]
    frames: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.texts:
            raise InputError("a prompt schedule needs at least one state", "pass a prompt or at least one --state")
        for text in self.texts:
            if not isinstance(text, str) or not text.strip():
                raise InputError("every state of a prompt schedule must be a non-empty text", "remove empty states")
        if self.frames is not None:
            if len(self.frames) != len(self.texts):
                raise InputError("a prompt schedule needs one frame per state", "anchor every state at a frame")
            if any(not isinstance(f, int) or isinstance(f, bool) or f < 0 for f in self.frames):
                raise InputError(f"state frames must be whole numbers >= 0, got {list(self.frames)}", "anchor states at frames 0, 1, ...")
            if any(b <= a for a, b in zip(self.frames, self.frames[1:])):
                raise InputError(f"state frames must increase, got {list(self.frames)}", "list the states in time order, one per frame")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def single(cls, text: str) -> PromptSchedule:
        return cls((text,), (0,))

    @classmethod
    def from_states(cls, texts: Iterable[str]) -> PromptSchedule:
        """States spread evenly over the clip (anchors fixed once the frame count is known)."""
        return cls(tuple(texts), None)

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, str]) -> PromptSchedule:
        """``{frame: text}`` (any order; sorted by frame)."""
        for key in mapping:
            if not isinstance(key, int) or isinstance(key, bool):
                raise InputError(f"prompt schedule keys must be frame numbers, got {key!r}", "use {0: 'text', 15: 'text'}")
        items = sorted(mapping.items())
        return cls(tuple(t for _, t in items), tuple(f for f, _ in items))

    # -- queries -----------------------------------------------------------------------------
    @property
    def num_states(self) -> int:
        return len(self.texts)

    @property
    def is_single(self) -> bool:
        return len(self.texts) == 1

    def anchors(self, num_frames: int) -> list[int]:
        """Anchor frame of each state in a video of ``num_frames`` frames."""
        if self.frames is None:
            return equally_spaced_anchors(num_frames, len(self.texts))
        if self.frames[-1] >= num_frames:
            raise InputError(
                f"a state is anchored at frame {self.frames[-1]}, but the video has frames 0..{num_frames - 1}",
                f"anchor states below {num_frames}, or pass more --frames",
            )
        return list(self.frames)

    def weights(self, num_frames: int) -> torch.Tensor:
        """``(num_frames, num_states)`` float64 interpolation weights (rows sum to 1)."""
        anchors = self.anchors(num_frames)
        w = torch.zeros(num_frames, len(anchors), dtype=torch.float64)
        w[: anchors[0] + 1, 0] = 1.0
        w[anchors[-1]:, -1] = 1.0
        for k, (a, b) in enumerate(zip(anchors, anchors[1:])):
            span = b - a
            for f in range(a, b + 1):
                t = (f - a) / span
                w[f] = 0.0
                w[f, k] = 1.0 - t
                w[f, k + 1] = t
        return w

    def text_at(self, frame: int, num_frames: int) -> str:
        """The state whose anchor is the last one at or before ``frame`` (for display)."""
        anchors = self.anchors(num_frames)
        k = max([i for i, a in enumerate(anchors) if a <= frame] or [0])
        return self.texts[k]

    def to_dict(self, num_frames: int | None = None) -> dict[str, Any]:
        """JSON form: the states and their anchors (resolved when ``num_frames`` is given)."""
        frames = self.frames if num_frames is None else tuple(self.anchors(num_frames))
        return {"states": list(self.texts), "frames": list(frames) if frames is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptSchedule:
        frames = data.get("frames")
        return cls(tuple(data["states"]), tuple(int(f) for f in frames) if frames is not None else None)


def interpolate_embeddings(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-frame embeddings ``(F, T, D)`` from state embeddings ``(K, T, D)`` and weights ``(F, K)``.

    Computed in float32 (float64 for float64 input) and returned in the embeddings' dtype; a weight
    row that is one-hot reproduces its state's embedding exactly.
    """
    if embeddings.ndim != 3 or weights.ndim != 2 or weights.shape[1] != embeddings.shape[0]:
        raise ValueError(f"need (K, T, D) embeddings and (F, K) weights, got {tuple(embeddings.shape)} and {tuple(weights.shape)}")
    work = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
    w = weights.to(device=embeddings.device, dtype=work)
    # a one-hot row is 1 * E_k plus zeros: exact in any summation order
    return torch.einsum("fk,ktd->ftd", w, embeddings.to(work)).to(embeddings.dtype)


def as_schedule(prompt: Any) -> PromptSchedule:
    """One video's prompt as a schedule: a string, ``{frame: text}``, a :class:`PromptSchedule`, or a
    list/tuple of strings (states spread evenly)."""
    if isinstance(prompt, PromptSchedule):
        return prompt
    if isinstance(prompt, str):
        return PromptSchedule.single(prompt)
    if isinstance(prompt, Mapping):
        return PromptSchedule.from_mapping(prompt)
    if isinstance(prompt, (list, tuple)) and all(isinstance(p, str) for p in prompt):
        return PromptSchedule.from_states(prompt)
    raise InputError(
        f"cannot use a {type(prompt).__name__} as a video prompt",
        "pass a string, a {frame: text} dict, a list of states, or a PromptSchedule",
    )


def parse_states(lines: Sequence[str], what: str = "--state") -> PromptSchedule:
    """``--state`` values or the lines of a states file: all ``FRAME: text`` (anchored at those
    frames) or all plain text (spread evenly over the clip)."""
    if not lines:
        raise InputError(f"no {what} given", "pass at least one state")
    matches = [_ANCHORED.match(line) for line in lines]
    if all(matches):
        return PromptSchedule.from_mapping(_unique_frames({int(m[1]): m[2] for m in matches}, matches, what))
    if any(matches):
        raise InputError(
            f"some {what} lines are anchored at a frame ('12: text') and some are not",
            "anchor every state at a frame, or none (then they are spread evenly)",
        )
    return PromptSchedule.from_states(line.strip() for line in lines)


def _unique_frames(mapping: dict[int, str], matches: list, what: str) -> dict[int, str]:
    if len(mapping) != len(matches):
        frames = [int(m[1]) for m in matches]
        dup = next(f for f in frames if frames.count(f) > 1)
        raise InputError(f"two {what} lines are anchored at frame {dup}", "anchor each state at its own frame")
    return mapping
