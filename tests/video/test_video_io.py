"""Video writing: every format round-trips (repeated frames too), sizes are kept, the sidecar carries
the settings, results take free names with their companions, contact sheets lay frames out in order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attncraft.errors import InputError
from attncraft.outputs import read_sidecar
from attncraft.outputs import read_png_settings
from attncraft.video import contact_sheet, frames_to_uint8, read_video, sheet_path, write_video


def _frames(f=4, h=20, w=28):
    frames = np.zeros((f, h, w, 3), np.uint8)
    for i in range(f):
        frames[i, :, : (i + 1) * w // f] = (255, 0, 0)
    return frames


def test_gif_round_trip_is_exact(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "clip.gif", frames, fps=10, settings={"prompt": "a red bar grows"})
    back = read_video(path)
    assert back.shape == frames.shape
    assert np.array_equal(back, frames)
    assert read_sidecar(path) == {"prompt": "a red bar grows"}


def test_mp4_round_trip_is_close_and_padded_to_macro_blocks(tmp_path):
    frames = _frames(h=20, w=28)
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)
    back = read_video(path)
    assert back.shape == (4, 32, 32, 3)
    assert np.abs(back[:, :20, :28].astype(int) - frames.astype(int)).mean() < 12


def test_tensor_frames_are_converted():
    t = torch.zeros(2, 3, 4, 5)
    t[:, 0] = 1.0
    arr = frames_to_uint8(t)
    assert arr.shape == (2, 4, 5, 3) and arr.dtype == np.uint8 and (arr[..., 0] == 255).all()


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="use .mp4, .gif or .webp"):
        write_video(tmp_path / "clip.avi", _frames())
    with pytest.raises(InputError, match="at least one frame"):
        write_video(tmp_path / "clip.gif", np.zeros((0, 4, 4, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_an_existing_video_is_never_replaced_unless_asked(tmp_path):
    first = write_video(tmp_path / "clip.gif", _frames(), settings={"seed": 1})
    second = write_video(tmp_path / "clip.gif", _frames(f=2), settings={"seed": 2})
    assert (first.name, second.name) == ("clip.gif", "clip-2.gif")
    assert read_sidecar(first) == {"seed": 1} and read_sidecar(second) == {"seed": 2}
    again = write_video(tmp_path / "clip.gif", _frames(f=3), settings={"seed": 3}, overwrite=True)
    assert again == first and len(read_video(first)) == 3 and read_sidecar(first) == {"seed": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip-2.gif", "clip-2.gif.json", "clip.gif", "clip.gif.json"]


def test_reading_downscales_while_decoding(tmp_path):
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[1] = 255  # Pillow merges identical frames
    path = write_video(tmp_path / "big.gif", frames)
    assert read_video(path, max_side=20).shape == (2, 10, 20, 3)
    with pytest.raises(InputError, match="has more than 1 frames"):
        read_video(path, max_frames=1)


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_repeated_frames_survive(tmp_path, ext):
    """The GIF and WebP encoders merge identical consecutive frames; the reader splits them again."""
    frames = _frames(f=6)
    frames[1:4] = frames[1]  # a pause of three frames
    frames[5] = frames[4]
    path = write_video(tmp_path / f"pause{ext}", frames, fps=7)
    assert np.array_equal(read_video(path), frames)
    still = write_video(tmp_path / f"still{ext}", np.repeat(frames[:1], 5, axis=0), fps=8)
    assert read_video(still).shape[0] == 5


def test_webp_round_trip_is_exact(tmp_path):
    frames = _frames(f=5)
    path = write_video(tmp_path / "clip.webp", frames, fps=8)
    assert np.array_equal(read_video(path), frames)


def test_contact_sheet_is_a_companion_with_the_settings(tmp_path):
    frames = _frames()
    first = write_video(tmp_path / "clip.gif", frames, settings={"seed": 1}, sheet=True, caption="a red bar")
    assert read_png_settings(sheet_path(first)) == {"seed": 1}
    assert read_sidecar(first) == {"seed": 1}
    (tmp_path / "other_frames.png").write_bytes(b"x")  # a companion alone takes the name too
    assert write_video(tmp_path / "other.gif", frames, sheet=True).name == "other-2.gif"
    with pytest.raises(InputError, match="not a finite number"):
        write_video(tmp_path / "bad.gif", frames, settings={"fps": float("nan")}, sheet=True)
    assert not list(tmp_path.glob("bad*"))


def test_contact_sheet_lays_frames_out_in_reading_order():
    frames = np.zeros((5, 4, 6, 3), np.uint8)
    for i in range(5):
        frames[i] = 10 * (i + 1)
    sheet = np.asarray(contact_sheet(frames, columns=3, pad=1))
    assert sheet.shape == (2 * 4 + 3, 3 * 6 + 4, 3)
    assert sheet[1, 1, 0] == 10 and sheet[1, 1 + 2 * 7, 0] == 30 and sheet[1 + 5, 1 + 7, 0] == 50
    assert sheet[0, 0, 0] == 255 and sheet[1 + 5, 1 + 14, 0] == 255  # padding, and the empty sixth cell
