"""Per-frame prompt schedules: anchors, interpolation weights, exactness at anchors, linearity, parsing."""

from __future__ import annotations

import pytest
import torch

from attncraft.errors import InputError
from attncraft.video.prompts import (
    PromptSchedule,
    as_schedule,
    equally_spaced_anchors,
    interpolate_embeddings,
    parse_states,
)


def test_equally_spaced_anchors_truncate_like_vstar():
    assert equally_spaced_anchors(32, 3) == [0, 15, 31]
    assert equally_spaced_anchors(16, 4) == [0, 5, 10, 15]
    assert equally_spaced_anchors(16, 1) == [0]
    assert equally_spaced_anchors(3, 3) == [0, 1, 2]
    with pytest.raises(InputError, match="do not fit into 2 frames"):
        equally_spaced_anchors(2, 3)


def test_weights_are_one_hot_at_anchors_and_hold_outside():
    schedule = PromptSchedule.from_mapping({10: "b", 3: "a"})
    assert schedule.texts == ("a", "b") and schedule.frames == (3, 10)
    w = schedule.weights(14)
    assert w.shape == (14, 2)
    assert torch.equal(w.sum(dim=1), torch.ones(14, dtype=torch.float64))
    assert torch.equal(w[:4, 0], torch.ones(4, dtype=torch.float64))  # before the first anchor: state 0
    assert torch.equal(w[10:, 1], torch.ones(4, dtype=torch.float64))  # after the last: state 1
    assert w[6, 1] == pytest.approx(3 / 7)


def test_anchor_frames_carry_exactly_their_state_and_segments_are_linear():
    torch.manual_seed(0)
    states = torch.randn(3, 5, 4)
    schedule = PromptSchedule.from_states(["a", "b", "c"])
    frames = interpolate_embeddings(states, schedule.weights(16))
    anchors = schedule.anchors(16)
    assert anchors == [0, 7, 15] and frames.shape == (16, 5, 4) and frames.dtype == states.dtype
    for k, a in enumerate(anchors):
        assert torch.equal(frames[a], states[k])
    exact = interpolate_embeddings(states.double(), schedule.weights(16))
    for a, b in zip(anchors, anchors[1:]):
        segment = exact[a:b + 1]
        second = segment[2:] - 2 * segment[1:-1] + segment[:-2]
        assert second.abs().max() < 1e-12


def test_one_state_gives_identical_frames():
    torch.manual_seed(1)
    state = torch.randn(1, 77, 8, dtype=torch.float16)
    frames = interpolate_embeddings(state, PromptSchedule.single("a red circle").weights(8))
    assert all(torch.equal(frames[f], state[0]) for f in range(8))


def test_parse_states_anchored_plain_and_mixed():
    assert parse_states(["a red circle", "a blue circle"]) == PromptSchedule(("a red circle", "a blue circle"))
    anchored = parse_states(["12: a blue circle", "0: a red circle"])
    assert anchored.texts == ("a red circle", "a blue circle") and anchored.frames == (0, 12)
    with pytest.raises(InputError, match="some --state lines are anchored"):
        parse_states(["0: a red circle", "a blue circle"])
    with pytest.raises(InputError, match="anchored at frame 3"):
        parse_states(["3: a", "3: b"])
    with pytest.raises(InputError, match="frames 0..7"):
        anchored.anchors(8)


def test_as_schedule_and_round_trip():
    assert as_schedule("x") == PromptSchedule(("x",), (0,))
    assert as_schedule(["x", "y"]).frames is None
    assert as_schedule({0: "x", 4: "y"}).frames == (0, 4)
    schedule = PromptSchedule.from_states(["x", "y", "z"])
    assert PromptSchedule.from_dict(schedule.to_dict()) == schedule
    assert schedule.to_dict(9) == {"states": ["x", "y", "z"], "frames": [0, 4, 8]}
    for bad in (3, {"a": "x"}, [""]):
        with pytest.raises(InputError):
            as_schedule(bad)
