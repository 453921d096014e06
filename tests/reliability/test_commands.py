"""Every defence of the shared helpers, through the commands that use them (`image`, `world render |
score`, `mesh stylize | bench`): results never lost or silently wrong, bad input refused before any
work in one line with the fix, long work bounded. Refusals are checked for exit code 2, exactly one
`error:` line on stderr, and an unchanged folder (nothing added, removed or touched)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attncraft import outputs
from attncraft.errors import InputError
from attncraft.outputs import TMP_MARK, read_png_settings, read_sidecar

ROOT = Path(__file__).resolve().parents[2]
TINY_MESH_RUN = ("--clip", "random:test", "--iterations", "1", "--views", "1", "--resolution", "16",
                 "--turntable", "none", "--formats", "ply", "--device", "cpu")


@pytest.fixture
def ball(tmp_path):
    import trimesh

    path = tmp_path / "in" / "ball.obj"
    path.parent.mkdir()
    trimesh.creation.icosphere(subdivisions=1).export(path)
    return path


def _png_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


# ------------------------------------------------------------------------------------------------
# 1. Two processes saving 64 images each into one folder at the same instant: 128 files, none lost
# ------------------------------------------------------------------------------------------------


def test_concurrent_image_saves_lose_nothing(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from PIL import Image
        from attncraft.pipelines.text_to_image import TextToImageSettings, save_images
        folder, tag = sys.argv[1], sys.argv[2]
        settings = TextToImageSettings(prompt="a red circle", seed=0, count=64, extra={{"writer": tag}})
        images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(64)]
        print("ready", flush=True)
        sys.stdin.readline()  # both start saving when the parent says go
        paths = save_images(images, settings, folder)
        print(len(set(paths)), flush=True)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for tag in ("a", "b")]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reported = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and reported == ["64", "64"]
    files = list(tmp_path.iterdir())
    assert len(files) == 128 and all(p.suffix == ".png" for p in files)
    written = sorted((read_png_settings(p)["writer"], read_png_settings(p)["seed"]) for p in files)
    assert written == sorted((tag, seed) for tag in "ab" for seed in range(64))


# ------------------------------------------------------------------------------------------------
# 2. One rule for every command: never replace a result unless --overwrite
# ------------------------------------------------------------------------------------------------


def test_world_render_keeps_earlier_scenes_and_names_companions_after_them(tmp_path, cli):
    out = tmp_path / "w"
    assert cli("world", "render", "--count", "2", "--seed", "1", "--out", out)[0] == 0
    first = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert sorted(first) == ["scene_000.json", "scene_000.png", "scene_000_mask.png",
                             "scene_001.json", "scene_001.png", "scene_001_mask.png"]
    code, _, err = cli("world", "render", "--count", "2", "--seed", "5", "--out", out)
    assert code == 0, err
    assert {name: (out / name).read_bytes() for name in first} == first  # nothing replaced
    truth = json.loads((out / "scene_000-2.json").read_text())
    assert truth["mask"] == "scene_000-2_mask.png" and (out / truth["mask"]).is_file()
    assert read_png_settings(out / "scene_000-2.png")["seed"] == 5 and len(os.listdir(out)) == 12
    code, _, _ = cli("world", "render", "--count", "2", "--seed", "5", "--out", out, "--overwrite")
    assert code == 0 and len(os.listdir(out)) == 12 and read_png_settings(out / "scene_000.png")["seed"] == 5


def test_world_render_video_publishes_gif_and_sidecar_as_one_result(tmp_path, cli):
    args = ("world", "render", "--video", "--frames", "2", "--count", "1", "--objects", "1", "--out", tmp_path)
    assert cli(*args, "--seed", "1")[0] == 0
    before = (tmp_path / "scene_000.gif").read_bytes()
    assert cli(*args, "--seed", "2")[0] == 0
    assert (tmp_path / "scene_000.gif").read_bytes() == before
    assert read_sidecar(tmp_path / "scene_000.gif")["seed"] == 1 and read_sidecar(tmp_path / "scene_000-2.gif")["seed"] == 2
    assert sorted(os.listdir(tmp_path)) == ["scene_000-2.gif", "scene_000-2.gif.json", "scene_000.gif", "scene_000.gif.json"]


def test_mesh_stylize_reserves_a_result_folder_per_run(tmp_path, cli, ball):
    out = tmp_path / "m"
    for _ in range(2):
        code, stdout, err = cli("mesh", "stylize", ball, "a red ball", *TINY_MESH_RUN, "--out", out)
        assert code == 0, err
    assert sorted(os.listdir(out)) == ["ball-a-red-ball", "ball-a-red-ball-2"]
    first = (out / "ball-a-red-ball" / "ball.ply").read_bytes()
    code, stdout, _ = cli("mesh", "stylize", ball, "a red ball", *TINY_MESH_RUN, "--out", out, "--overwrite",
                          "--seed", "5")
    assert code == 0 and sorted(os.listdir(out)) == ["ball-a-red-ball", "ball-a-red-ball-2"]
    assert read_sidecar(out / "ball-a-red-ball" / "ball.ply")["seed"] == 5
    assert (out / "ball-a-red-ball" / "ball.ply").read_bytes() != first
    assert all(Path(p).parent.name == "ball-a-red-ball" for p in stdout.split())


def test_image_overwrite_replaces_only_when_asked(tmp_path, cli):
    args = ("image", "a red circle", "--steps", "1", "--out", tmp_path)
    assert cli(*args)[0] == 0
    assert cli(*args, "--guidance", "2", "--overwrite")[0] == 0
    assert _png_files(tmp_path) == ["a-red-circle_s0.png"]
    assert read_png_settings(tmp_path / "a-red-circle_s0.png")["guidance_scale"] == 2.0


# ------------------------------------------------------------------------------------------------
# 3. mesh bench: the resume key holds the mesh's content, the prompt and the settings
# ------------------------------------------------------------------------------------------------


def test_bench_recomputes_a_changed_mesh_of_the_same_name(tmp_path, tiny_guide):
    import trimesh

    from attncraft.mesh.benchmark import run_benchmark

    data = tmp_path / "data"
    (data / "meshes").mkdir(parents=True)
    (data / "prompts").mkdir()
    (data / "prompts" / "thing.txt").write_text("A red thing.\n")
    kwargs = dict(clip=tiny_guide, eval_every=1, eval_resolution=16, device="cpu", progress=False, iterations=1,
                  views=1, resolution=16, width=16, n_normaugs=1, n_geoaugs=1, compute_its=False)
    trimesh.creation.icosphere(subdivisions=1).export(data / "meshes" / "thing.obj")
    assert run_benchmark(data, tmp_path / "out", **kwargs).computed == 1
    assert run_benchmark(data, tmp_path / "out", **kwargs).cached == 1
    trimesh.creation.box().export(data / "meshes" / "thing.obj")  # another mesh, same name
    changed = run_benchmark(data, tmp_path / "out", **kwargs)
    assert (changed.computed, changed.cached) == (1, 0)
    records = sorted((tmp_path / "out" / "runs" / "thing").glob("*.json"))
    assert len(records) == 2  # the first mesh's result is kept, not replaced
    assert len({json.loads(r.read_text())["mesh_sha256"] for r in records}) == 2
    assert run_benchmark(data, tmp_path / "out", **kwargs, overwrite=True).computed == 1  # --overwrite recomputes


# ------------------------------------------------------------------------------------------------
# 4-6, 8-10, 13: refused before any work, in one line with the fix
# ------------------------------------------------------------------------------------------------


def test_path_like_mesh_argument_that_does_not_exist_is_an_error(tmp_path, refused, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(tmp_path, "mesh", "stylize", "path/to/Sofa", needles=("'path/to/Sofa' does not exist", "mesh stylize default"))
    refused(tmp_path, "mesh", "stylize", "Sofa.obj", needles=("does not exist",))
    refused(tmp_path, "mesh", "stylize", "path/to/Sofa", "a sofa", needles=("does not exist",))


def test_prompt_files_must_be_utf8_text(tmp_path, refused):
    data = tmp_path / "data"
    (data / "prompts").mkdir(parents=True)
    (data / "meshes").mkdir()
    out = tmp_path / "out"
    (data / "prompts" / "x.txt").write_bytes(bytes(range(256)) * 8)
    refused(tmp_path, "mesh", "bench", data, "--out", out, needles=("is a binary file, not text", "UTF-8"))
    (data / "prompts" / "x.txt").write_bytes("a red chair\na caf\xe9 table\n".encode("latin-1"))
    refused(tmp_path, "mesh", "bench", data, "--out", out, needles=("is not valid UTF-8 (line 2)",))
    assert not out.exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_guidance_is_refused(tmp_path, refused, value):
    refused(tmp_path, "image", "a red circle", "--guidance", value, "--out", tmp_path / "o",
            needles=("--guidance must be a finite number", "pass e.g. --guidance 7.5"))


def test_mesh_numbers_are_checked_and_sidecars_are_strict_json(tmp_path, refused, sphere_result_zero):
    refused(tmp_path, "mesh", "stylize", "default", "x", "--iterations", "0", "--out", tmp_path,
            needles=("--iterations must be between 1 and",))
    refused(tmp_path, "mesh", "stylize", "default", "x", "--lr", "nan", "--out", tmp_path, needles=("--lr must be a finite",))
    refused(tmp_path, "mesh", "bench", tmp_path, "--threshold", "inf", needles=("--threshold must be a finite",))
    # the Python API still allows 0 iterations: the sidecar then stores null, never NaN
    paths = sphere_result_zero.save(tmp_path / "zero", "ball", formats=["ply"], turntable=None, sheet=False)
    meta = json.loads(paths["sidecar"].read_text())  # strict JSON parses
    assert meta["result"]["final_clip_score"] is None and "NaN" not in paths["sidecar"].read_text()


@pytest.fixture
def sphere_result_zero(tiny_guide):
    import trimesh

    from attncraft.mesh.stylize import stylize_mesh

    return stylize_mesh(trimesh.creation.icosphere(subdivisions=1), "a ball", clip=tiny_guide, device="cpu",
                        progress=False, iterations=0, views=1, resolution=16, width=16)


def test_non_utf8_prompts_are_refused(tmp_path, refused):
    undecodable = b"a red \xff circle".decode("utf-8", "surrogateescape")  # what argv holds for such bytes
    needle = "the prompt is not valid UTF-8 text (undecodable byte at character 7)"
    refused(tmp_path, "image", undecodable, "--out", tmp_path, needles=(needle,))
    refused(tmp_path, "mesh", "stylize", "default", undecodable, "--out", tmp_path, needles=(needle,))
    png = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(png)
    refused(tmp_path, "world", "score", png, "--prompt", undecodable, needles=(needle,))


def test_output_folder_is_checked_before_any_model_is_loaded(tmp_path, refused, monkeypatch):
    loads = []
    monkeypatch.setattr("attncraft.loading.load_text_to_image", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("attncraft.mesh.stylize.stylize_mesh", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("attncraft.mesh.stylize.make_guide", lambda *a, **k: loads.append(a))
    target = tmp_path / "a-file"
    target.write_text("keep")
    bench = tmp_path / "bench"
    (bench / "prompts").mkdir(parents=True)
    (bench / "prompts" / "ball.txt").write_text("a red ball\n")
    for out, needle in ((target, "is a file, not a folder"), ("/dev/full", "is a file, not a folder"),
                        (target / "sub", "a part of the path is a file")):
        refused(tmp_path, "image", "x", "--out", out, needles=(needle,))
        refused(tmp_path, "world", "render", "--out", out, needles=(needle,))
        refused(tmp_path, "mesh", "stylize", "default", "x", "--out", out, needles=(needle,))
        refused(tmp_path, "mesh", "bench", bench, "--out", out, needles=(needle,))
    # a folder that refuses writes (read-only for this user, whoever runs the tests: root too)
    ro = tmp_path / "ro"
    ro.mkdir()
    monkeypatch.setattr(outputs, "_temporary", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
    refused(tmp_path, "image", "x", "--out", ro, needles=("cannot write to the output folder", "Permission denied"))
    refused(tmp_path, "mesh", "stylize", "default", "x", "--out", ro, needles=("cannot write to the output folder",))
    assert loads == [] and target.read_text() == "keep"


def test_seeds_beyond_64_bits_are_refused(tmp_path, refused):
    huge = str(2**64 + 5)
    for args in (("image", "x", "--seed", huge), ("world", "render", "--seed", huge),
                 ("mesh", "stylize", "default", "x", "--seed", huge)):
        refused(tmp_path, *args, "--out", tmp_path, needles=("--seed must be between 0 and 1844674407370955161", "pass e.g. --seed 0"))


def test_wording_of_sizes_counts_folders_and_token_limits(tmp_path, refused):
    refused(tmp_path, "image", "x", "--height", "100000", "--out", tmp_path, needles=("pass e.g. --height 4096",))
    refused(tmp_path, "image", "x", "--width", "30", "--out", tmp_path, needles=("pass e.g. --width 32",))
    line = refused(tmp_path, "image", "x", "--count", "0", "--out", tmp_path, needles=("--count must be between 1 and 64",))
    assert "several runs" not in line
    refused(tmp_path, "mesh", "bench", tmp_path / "no-such-folder", needles=("no-such-folder does not exist",))
    long_prompt = " ".join(["red"] * 76)
    image_line = refused(tmp_path, "image", long_prompt, "--out", tmp_path, needles=("76 tokens long",))
    mesh_line = refused(tmp_path, "mesh", "stylize", "default", long_prompt, "--clip", "random:test", "--out", tmp_path,
                        needles=("76 tokens long",))
    assert image_line == mesh_line == "error: the prompt is 76 tokens long; this text encoder reads at most 75; shorten the prompt"


def test_disk_full_while_writing_names_the_file_and_leaves_nothing(tmp_path, refused, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "w"
    out.mkdir()
    refused(tmp_path, "world", "render", "--count", "1", "--out", out,
            needles=(f"no space left on the device while writing {out / 'scene_000.png'}", "free some space"))


def test_ffmpeg_failure_is_not_published(tmp_path, monkeypatch):
    """imageio's writer ignored ffmpeg's exit status, so a full disk gave a truncated MP4."""
    import imageio_ffmpeg

    from attncraft.video import write_video

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Error writing trailer: No space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: str(fake))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"no space left on the device while writing .*clip\.mp4"):
        write_video(out / "clip.mp4", np.zeros((3, 16, 16, 3), np.uint8))
    assert os.listdir(out) == []


# ------------------------------------------------------------------------------------------------
# 7. A truncated mesh file is an error (--allow-partial uses what is there, saying what was dropped)
# ------------------------------------------------------------------------------------------------


def test_truncated_mesh_files_are_refused(tmp_path, refused, ball):
    import trimesh

    from attncraft.mesh.exports import export_mesh
    from attncraft.mesh.io import load_mesh

    text = ball.read_bytes()
    cut = tmp_path / "in" / "cut.obj"
    cut.write_bytes(text[: text.index(b"\nf ", int(len(text) * 0.8)) + 4])  # ends inside a face record: "f 1"
    refused(tmp_path, "mesh", "stylize", cut, "a chair", "--out", tmp_path, needles=("looks truncated", "ends inside a record", "--allow-partial"))
    partial = load_mesh(cut, allow_partial=True)
    assert 0 < partial.num_faces < 80 and any("ends inside a record" in n for n in partial.notes)
    # cut between two records: our own OBJ exports declare their counts, so it is still detected
    ours = export_mesh(tmp_path / "in" / "ours.obj", *_sphere(trimesh))
    data = ours.read_bytes()
    (tmp_path / "in" / "ours_cut.obj").write_bytes(data[: data.rindex(b"\nf ", 0, int(len(data) * 0.9)) + 1])
    with pytest.raises(InputError, match=r"declares 80 faces but holds \d+"):
        load_mesh(tmp_path / "in" / "ours_cut.obj")
    # formats with counts in their header
    ply = trimesh.creation.icosphere(subdivisions=1).export(file_type="ply", encoding="ascii")
    (tmp_path / "in" / "cut.ply").write_bytes(ply[: int(len(ply) * 0.8)])
    with pytest.raises(InputError, match=r"declares 80 faces but holds"):
        load_mesh(tmp_path / "in" / "cut.ply")
    assert load_mesh(ours).num_faces == 80


def _sphere(trimesh):
    mesh = trimesh.creation.icosphere(subdivisions=1)
    return mesh.vertices, mesh.faces


# ------------------------------------------------------------------------------------------------
# 11. Corrupt videos: one line, no ffmpeg banner, no pip advice
# ------------------------------------------------------------------------------------------------


def test_corrupt_videos_give_one_line(tmp_path, refused):
    from attncraft.video import write_video

    rng = np.random.default_rng(0)
    good_mp4 = write_video(tmp_path / "good.mp4", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    good_gif = write_video(tmp_path / "good.gif", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8))
    cases = {
        "noise.mp4": (rng.bytes(3000), "not a valid MP4 (no MP4 header)"),
        "cut.mp4": (good_mp4.read_bytes()[: good_mp4.stat().st_size // 2], "not a valid MP4 (moov atom not found)"),
        "noise.gif": (rng.bytes(3000), "not a valid GIF (no GIF header)"),
        "cut.gif": (good_gif.read_bytes()[:40], "not a valid GIF (damaged or truncated data"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        line = refused(tmp_path, "world", "score", tmp_path / name, "--prompt", "a red circle",
                       needles=(f"cannot read video {tmp_path / name}: it is {needle}",))
        assert "ffmpeg version" not in line and "pip" not in line and len(line) < 300


# ------------------------------------------------------------------------------------------------
# 12. A pickled CLIP is not opened; the message says what it is and how to convert a trusted one
# ------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this writes a marker file: proof of whether a pickle was opened."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "the pickle ran"))


def test_pickled_clip_is_refused_and_converted_when_trusted(tmp_path, refused):
    import torch

    from attncraft.checkpoints import main as convert
    from attncraft.mesh.clip_guidance import build_random_clip, load_clip

    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    build_random_clip("test").config.save_pretrained(hostile)
    (hostile / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    refused(tmp_path, "mesh", "stylize", "default", "x", "--clip", hostile, "--out", tmp_path,
            needles=("holds only a pickled checkpoint (pytorch_model.bin)", "it was not loaded",
                     f"python -m attncraft.checkpoints {hostile}", "--trust-pickle"))
    single = tmp_path / "model.ckpt"
    single.write_bytes(pickle.dumps(_Payload(marker)))
    refused(tmp_path, "image", "x", "--model", single, "--out", tmp_path, needles=("is a pickle", "was not loaded"))
    assert not marker.exists()

    trusted = tmp_path / "trusted"
    model = build_random_clip("test")
    model.config.save_pretrained(trusted)
    torch.save(model.state_dict(), trusted / "pytorch_model.bin")
    with pytest.raises(Exception, match="pickled checkpoint"):
        load_clip(str(trusted), "cpu")
    assert convert([str(trusted)]) == 0 and (trusted / "model.safetensors").is_file()
    loaded, _, _ = load_clip(str(trusted), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert convert([str(hostile)]) != 0 and not marker.exists()  # conversion never runs a payload either


# ------------------------------------------------------------------------------------------------
# 14. world score on a huge image: downscaled up front, said on stderr
# ------------------------------------------------------------------------------------------------


def test_world_score_downscales_huge_images(tmp_path, cli, monkeypatch):
    import attncraft.shapes.reader as reader

    assert cli("world", "render", "--count", "1", "--size", "128", "--seed", "4", "--out", tmp_path)[0] == 0
    png = tmp_path / "scene_000.png"
    caption = read_png_settings(png)["caption"]
    big = tmp_path / "big.png"
    with Image.open(png) as im:
        im.resize((4000, 4000), Image.Resampling.NEAREST).save(big)
    sizes = []
    real_read = reader.read_image
    monkeypatch.setattr(reader, "read_image", lambda image, *a, **k: sizes.append(image.size) or real_read(image, *a, **k))
    start = time.perf_counter()
    code, out, err = cli("world", "score", big, "--prompt", caption, "--json")
    print(f"world score of a 4000x4000 PNG: {time.perf_counter() - start:.2f} s")  # measured, not asserted
    assert code == 0, err
    assert "big.png is 4000x4000 pixels; scoring it downscaled to 256x256" in err
    assert sizes == [(256, 256)] and all(v == 1.0 for v in json.loads(out)["scores"].values())
    # beyond the pixel limit it is refused from the header, before anything is decoded
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 20000, 20000)
    code, _, err = cli("world", "score", bomb, "--prompt", caption)
    assert code == 2 and err.count("\n") == 1 and "20000x20000 pixels, more than the 100 megapixels" in err


def _png_header(path, width, height):
    import struct
    import zlib

    def chunk(kind, data=b""):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT") + chunk(b"IEND"))


# ------------------------------------------------------------------------------------------------
# 15. A mesh that will not fit in memory is refused up front, with the figure
# ------------------------------------------------------------------------------------------------


def test_stylize_memory_estimate_refuses_before_optimising(tmp_path, refused, ball, monkeypatch):
    from attncraft.mesh import memory
    from attncraft.mesh.stylize import StylizeSettings

    steps = []
    monkeypatch.setattr("attncraft.mesh.stylize.XMeshOptimization.__init__", lambda *a, **k: steps.append(1))
    monkeypatch.setattr("attncraft.devices.available_memory", lambda device: 50 * 2**20)
    refused(tmp_path, "mesh", "stylize", ball, "a ball", *TINY_MESH_RUN, "--out", tmp_path,
            needles=("stylizing 42 vertices with 1 view of 16 px needs about", "more than the 52 MB available",
                     "--skip-memory-check"))
    assert steps == []
    # the figure for the case that filled 14 GB without a word: a 2M-vertex mesh at the X-Mesh settings
    need = memory.estimate_memory(2_000_000, StylizeSettings())
    assert 40e9 < need < 60e9  # 24.4 kB a vertex (measured), plus renders


# ------------------------------------------------------------------------------------------------
# 16. Temporaries of a killed run are removed by the next run into that folder
# ------------------------------------------------------------------------------------------------


def test_temporaries_of_killed_runs_are_cleaned(tmp_path, cli, ball):
    killer = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from attncraft.outputs import unique_output
        with unique_output(sys.argv[1], "scene_000", ".png") as out:
            out.tmp.write_bytes(b"")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    for folder in (tmp_path / "w", tmp_path / "m"):
        proc = subprocess.run([sys.executable, "-c", killer, str(folder)], timeout=60)
        assert proc.returncode == -signal.SIGKILL
        assert any(TMP_MARK in name for name in os.listdir(folder))
    assert cli("world", "render", "--count", "1", "--out", tmp_path / "w")[0] == 0
    assert not any(TMP_MARK in name for name in os.listdir(tmp_path / "w"))
    assert cli("mesh", "stylize", ball, "a ball", *TINY_MESH_RUN, "--out", tmp_path / "m")[0] == 0
    assert not any(TMP_MARK in name for name in os.listdir(tmp_path / "m"))
