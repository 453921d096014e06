"""The shared output helpers: unique names under concurrency, overwrite only when asked, output
folder checks before any work, strict JSON, and clean-up of temporaries left by killed runs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from attncraft import outputs
from attncraft.errors import InputError
from attncraft.outputs import (
    TMP_MARK,
    clean_stale_temporaries,
    prepare_output_dir,
    read_png_settings,
    reserve_dir,
    save_png_with_settings,
    unique_output,
    write_sidecar,
)

ROOT = Path(__file__).resolve().parents[2]


def test_unique_output_never_replaces_and_overwrite_does(tmp_path):
    for text in ("one", "two", "three"):
        with unique_output(tmp_path, "r", ".txt") as out:
            out.tmp.write_text(text)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"r.txt": "one", "r-2.txt": "two", "r-3.txt": "three"}
    with unique_output(tmp_path, "r", ".txt", overwrite=True) as out:
        out.tmp.write_text("four")
    assert out.path == tmp_path / "r.txt" and out.path.read_text() == "four"
    assert len(list(tmp_path.iterdir())) == 3


def test_companions_make_a_stem_taken(tmp_path):
    (tmp_path / "scene_000_mask.png").write_bytes(b"old")
    with unique_output(tmp_path, "scene_000", ".png", companions=("_mask.png", ".json")) as out:
        out.tmp.write_bytes(b"new")
    assert out.path.name == "scene_000-2.png"
    assert (tmp_path / "scene_000_mask.png").read_bytes() == b"old"


def test_failed_write_leaves_nothing_and_keeps_the_old_result(tmp_path):
    (tmp_path / "r.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with unique_output(tmp_path, "r", ".txt", overwrite=True) as out:
            out.tmp.write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"] and (tmp_path / "r.txt").read_text() == "good"


def test_concurrent_writers_lose_no_file(tmp_path):
    """Two processes publishing 64 files each under the same names at the same instant: 128 files."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from attncraft.outputs import unique_output
        folder, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
        while time.time() < start:
            pass
        for i in range(64):
            with unique_output(folder, "image_s0", ".txt") as out:
                out.tmp.write_text(f"{{tag}} {{i}}")
        """
    )
    start = f"{__import__('time').time() + 1.5:.3f}"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag, start]) for tag in ("a", "b")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    contents = sorted(p.read_text() for p in tmp_path.iterdir())
    assert len(contents) == 128
    assert contents == sorted(f"{tag} {i}" for tag in "ab" for i in range(64))


def test_png_default_publishes_a_new_name(tmp_path):
    first = save_png_with_settings(Image.new("RGB", (4, 4)), tmp_path / "x.png", {"seed": 1})
    second = save_png_with_settings(Image.new("RGB", (4, 4)), tmp_path / "x.png", {"seed": 2})
    assert (first.name, second.name) == ("x.png", "x-2.png")
    assert read_png_settings(first) == {"seed": 1} and read_png_settings(second) == {"seed": 2}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_settings_are_strict_json(tmp_path, bad):
    with pytest.raises(InputError, match=r"guidance_scale is not a finite number"):
        save_png_with_settings(Image.new("RGB", (4, 4)), tmp_path / "x.png", {"guidance_scale": bad})
    with pytest.raises(InputError, match=r"result\.scores\[1\] is not a finite number"):
        write_sidecar(tmp_path / "v.mp4", {"seed": 0}, result={"scores": [0.5, bad]})
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sidecar_is_valid_json(tmp_path):
    side = write_sidecar(tmp_path / "v.mp4", {"a": 1.5}, frames=3)
    assert json.loads(side.read_text()) == {"attncraft": {"a": 1.5}, "frames": 3}


def test_prepare_output_dir_refuses_a_file_and_unwritable_folders(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep")
    with pytest.raises(InputError, match="is a file, not a folder"):
        prepare_output_dir(target)
    with pytest.raises(InputError, match="a part of the path is a file"):
        prepare_output_dir(target / "sub")
    with pytest.raises(InputError, match="is a file, not a folder"):
        prepare_output_dir("/dev/full")
    assert target.read_text() == "keep"
    created = prepare_output_dir(tmp_path / "a" / "b")
    assert created.is_dir() and list(created.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_prepare_output_dir_refuses_a_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(InputError, match="cannot write to the output folder"):
            prepare_output_dir(ro)
    finally:
        ro.chmod(0o700)


def test_prepare_output_dir_refuses_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(InputError, match=r"has only 0\.0 MB free"):
        prepare_output_dir(tmp_path)


def test_disk_full_while_writing_names_the_file(tmp_path):
    def fill(_tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(InputError, match=r"no space left on the device while writing .*r\.png"):
        with unique_output(tmp_path, "r", ".png") as out:
            fill(out.tmp)
    assert list(tmp_path.iterdir()) == []


def test_reserve_dir_is_unique_unless_overwrite(tmp_path):
    a = reserve_dir(tmp_path, "mesh-a-red-torus")
    b = reserve_dir(tmp_path, "mesh-a-red-torus")
    assert (a.name, b.name) == ("mesh-a-red-torus", "mesh-a-red-torus-2")
    assert reserve_dir(tmp_path, "mesh-a-red-torus", overwrite=True) == a


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = outputs._host_tag()
    stale = tmp_path / f".scene_000.{TMP_MARK}{host}-{dead.pid}-abcd.png"
    alive = tmp_path / f".scene_001.{TMP_MARK}{host}-{os.getpid()}-abcd.png"
    foreign = tmp_path / f".scene_002.{TMP_MARK}otherhost-{dead.pid}-abcd.png"
    hidden_user_file = tmp_path / ".notes.png"
    for p in (stale, alive, foreign, hidden_user_file):
        p.write_bytes(b"")
    assert clean_stale_temporaries(tmp_path) == [stale]
    old = 3 * outputs.STALE_FOREIGN_SECONDS
    os.utime(foreign, (os.path.getmtime(foreign) - old,) * 2)
    prepare_output_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, hidden_user_file.name])


def test_prepare_output_dir_refuses_a_folder_that_refuses_writes(tmp_path, monkeypatch):
    """The same check as above for any user (root writes through permissions): a write that fails."""
    def refuse(folder, stem, suffix):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs, "_temporary", refuse)
    with pytest.raises(InputError, match=r"cannot write to the output folder .*: Permission denied; pass a folder"):
        prepare_output_dir(tmp_path)


def test_reserve_dir_with_overwrite_removes_stale_temporaries(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = reserve_dir(tmp_path, "result")
    stale = folder / f".mesh.{TMP_MARK}{outputs._host_tag()}-{dead.pid}-abcd.ply"
    stale.write_bytes(b"")
    (folder / "mesh.ply").write_bytes(b"kept until replaced")
    assert reserve_dir(tmp_path, "result", overwrite=True) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["mesh.ply"]
