"""``attncraft world``: draw scenes of the Shapes world and score images/videos against prompts.

* ``attncraft world render [--seed N] [--count N] [--size 64] [--video --frames 16] [--out DIR]``
  writes one PNG per scene (settings, caption and scene in its text chunks), a ground-truth JSON
  (scene, caption, per-object boxes and areas) and a mask PNG (pixel value k = object k, 0 =
  background); with ``--video`` a GIF per scene with a JSON sidecar holding the per-frame ground truth.
  Each scene is one result: its PNG (or GIF) takes the first free name ``scene_000``,
  ``scene_000-2``... and its mask and JSON are named after it; ``--overwrite`` replaces instead.
* ``attncraft world score FILE [--prompt TEXT] [--json]`` reads an image (PNG/JPEG) or a video
  (GIF/MP4/animated WebP) with the deterministic reader and prints per-attribute scores against the prompt; the
  prompt defaults to the caption stored in the file's settings (PNG text chunk or JSON sidecar).
  Inputs larger than the reader's working size are downscaled first (:mod:`attncraft.shapes.inputs`).

torch and the world modules are imported inside the commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from attncraft.cli.common import OverwriteOption, console
from attncraft.errors import InputError, short_reason

app = typer.Typer(help="The Shapes world: render scenes with ground truth, score images and videos.", no_args_is_help=True)

VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".mov", ".avi")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SCENE_COMPANIONS = ("_mask.png", ".json")
"""Files named after each rendered scene's PNG (``scene_000.png`` -> ``scene_000_mask.png``...)."""
MAX_SCENES = 100_000


def _object_boxes(masks: Any) -> list[dict[str, Any]]:
    """Bounding box (x0, y0, x1, y1, exclusive) and area of each non-empty (H, W) mask."""
    out = []
    for m in masks:
        if not bool(m.any()):
            out.append({"area": 0, "bbox": None})
            continue
        ys, xs = m.nonzero(as_tuple=True)
        out.append({"area": int(m.sum()), "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
    return out


def _label_image(masks: Any):
    """(K, H, W) bool masks -> PIL 'L' image with value k + 1 on object k."""
    import numpy as np
    from PIL import Image

    lab = np.zeros(tuple(masks.shape[-2:]), dtype=np.uint8)
    for k, m in enumerate(masks):
        lab[m.cpu().numpy()] = k + 1
    return Image.fromarray(lab, mode="L")


def _to_pil(image: Any):
    from PIL import Image

    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, mode="RGB")


@app.command("render")
def render(
    seed: int = typer.Option(0, "--seed", help="Seed of the scenes (and captions)."),
    count: int = typer.Option(4, "--count", "-n", help="Number of scenes."),
    size: int = typer.Option(64, "--size", help="Canvas size in pixels (64 or 128; 32..1024 accepted)."),
    video: bool = typer.Option(False, "--video", help="Render moving scenes as GIFs instead of still PNGs."),
    frames: int = typer.Option(16, "--frames", help="Frames per video (with --video)."),
    objects: str = typer.Option("1-3", "--objects", help="Objects per scene: N or MIN-MAX within 1-3."),
    patterns: bool = typer.Option(True, "--patterns/--no-patterns", help="Allow striped/dotted/checkered objects."),
    fps: int = typer.Option(8, "--fps", help="Frames per second of the GIFs."),
    out: Path = typer.Option(Path("outputs/world"), "--out", "-o", help="Output folder (created if needed)."),
    overwrite: bool = OverwriteOption,
) -> None:
    """Render seeded scenes with their captions and ground truth."""
    from attncraft.validation import check_int_range, check_seed

    check_int_range("--count", count, 1, MAX_SCENES)
    check_seed(seed, count)
    if video:
        check_int_range("--fps", fps, 1, 100, example=8)
    if not 32 <= size <= 1024:
        raise InputError(f"--size {size} is out of range", "use --size 64 or --size 128 (32..1024 accepted)")
    if video and not 2 <= frames <= 64:
        raise InputError(f"--frames {frames} is out of range", "use 2..64 frames (16 is the default, 32 the longest trained)")
    try:
        lo, _, hi = objects.partition("-")
        num_objects = (int(lo), int(hi or lo))
        if not 1 <= num_objects[0] <= num_objects[1] <= 3:
            raise ValueError
    except ValueError:
        raise InputError(f"--objects {objects!r} is not a count or range within 1-3", "use e.g. --objects 2 or --objects 1-3") from None

    from attncraft.outputs import atomic_path, prepare_output_dir, save_png_with_settings, to_strict_json, write_sidecar
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.world import render_scenes, render_video, sample_scenes

    out = prepare_output_dir(out)  # before any work; also removes temporaries of killed runs
    scenes = sample_scenes(count, seed=seed, num_objects=num_objects, patterns=patterns, motion=video)
    written = []
    if video:
        from attncraft.video import write_video

        result = render_video(scenes, num_frames=frames, size=size)
        for i, scene in enumerate(scenes):
            caption = caption_scene(scene, seed=seed * 1000 + i)
            settings = {"command": "world render --video", "seed": seed, "index": i, "size": size,
                        "frames": frames, "fps": fps, "caption": caption}  # fmt: skip
            path = write_video(out / f"scene_{i:03d}.gif", result.images[i], fps=fps, overwrite=overwrite)
            per_frame = [
                [{"x": round(s.x, 4), "y": round(s.y, 4), "radius": round(s.radius, 4), "angle": round(s.angle, 2),
                  "color": s.color, "visible": s.visible, **box}  # fmt: skip
                 for s, box in zip(states, _object_boxes(result.masks[i, f, : len(scene.objects)]))]
                for f, states in enumerate(result.states[i])
            ]
            write_sidecar(path, settings, scene=scene.to_dict(), caption=caption, frames=per_frame)
            written.append((path, caption))
    else:
        result = render_scenes(scenes, size=size)
        for i, scene in enumerate(scenes):
            caption = caption_scene(scene, seed=seed * 1000 + i)
            settings = {"command": "world render", "seed": seed, "index": i, "size": size, "caption": caption,
                        "scene": scene.to_dict()}  # fmt: skip
            # the PNG reserves the result's name; its mask and ground truth are named after it
            path = save_png_with_settings(_to_pil(result.images[i]), out / f"scene_{i:03d}.png", settings,
                                          overwrite=overwrite, companions=SCENE_COMPANIONS)
            mask_path = path.with_name(f"{path.stem}_mask.png")
            with atomic_path(mask_path) as tmp:
                _label_image(result.masks[i, : len(scene.objects)]).save(tmp, format="PNG")
            truth = {"caption": caption, "scene": scene.to_dict(), "size": size, "mask": mask_path.name,
                     "objects": _object_boxes(result.masks[i, : len(scene.objects)])}  # fmt: skip
            with atomic_path(path.with_name(f"{path.stem}.json")) as tmp:
                tmp.write_text(to_strict_json(truth, indent=2) + "\n")
            written.append((path, caption))

    from rich.table import Table

    table = Table(title=f"{len(written)} scene(s) in {out}")
    table.add_column("file")
    table.add_column("caption")
    for path, caption in written:
        table.add_row(path.name, caption)
    console.print(table)


def _note(line: str | None) -> None:
    if line:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _stored_caption(path: Path) -> str | None:
    """The caption saved by ``world render`` (PNG text chunk or JSON sidecar), if any."""
    from attncraft.outputs import read_png_settings, sidecar_path

    try:
        if path.suffix.lower() == ".png":
            return read_png_settings(path).get("caption")
        side = sidecar_path(path)
        if side.exists():
            return json.loads(side.read_text()).get("caption")
    except (OSError, ValueError):
        return None
    return None


def _is_video(path: Path) -> bool:
    """GIF/MP4/... by extension; a WebP file is a video when it holds several frames."""
    if path.suffix.lower() == ".webp":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                return getattr(im, "n_frames", 1) > 1
        except (UnidentifiedImageError, OSError):
            return False
    return path.suffix.lower() in VIDEO_SUFFIXES


@app.command("score")
def score(
    file: Path = typer.Argument(..., help="Image (PNG/JPEG) or video (GIF/MP4) to read."),
    prompt: str = typer.Option(None, "--prompt", "-p", help="Prompt to score against (default: the caption stored in the file)."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores (and what the reader saw) as JSON."),
) -> None:
    """Score an image or video against a prompt with the deterministic Shapes reader."""
    from attncraft.validation import check_input_file, check_text

    check_input_file(file, "image or video")
    if prompt is not None:
        check_text("prompt", prompt)
    if prompt is None:
        prompt = _stored_caption(file)
        if prompt is None:
            raise InputError(f"{file} stores no caption", 'pass the prompt with --prompt "a red circle on the left"')

    from attncraft.shapes.captions import CaptionError, parse_caption
    from attncraft.shapes.inputs import load_image_for_reader, load_video_for_reader
    from attncraft.shapes.reader import read_image, read_video
    from attncraft.shapes.scoring import score_image, score_video

    try:
        parsed = parse_caption(prompt)
    except CaptionError:
        from attncraft.shapes.world import SHAPES

        raise InputError(
            f"cannot parse the prompt {prompt!r}: it names no shape",
            f"describe objects with the Shapes vocabulary, e.g. 'a red circle on the left' (shapes: {', '.join(SHAPES)})",
        ) from None

    try:
        if _is_video(file):
            loaded = load_video_for_reader(file)
            _note(loaded.note(file))
            frames = list(loaded.data)
            if len(frames) < 2:
                raise InputError(f"{file} holds {len(frames)} frame(s)", "score a video of at least 2 frames, or a PNG image")
            sizes = {f.shape[:2] for f in frames}
            if len(sizes) != 1:
                raise InputError(f"the frames of {file} differ in size", "score a video whose frames share one size")
            read = read_video(frames)
            scores = score_video(frames, parsed, read=read)
            seen: Any = [[o.to_dict() for o in t.objects[:1]] + [{"frames": len(t.frames)}] for t in read.tracks]
        else:
            loaded = load_image_for_reader(file)
            _note(loaded.note(file))
            image = loaded.data
            scene = read_image(image)
            scores = score_image(image, parsed, read=scene)
            seen = scene.to_dict()
    except (OSError, RuntimeError) as exc:
        raise InputError(f"cannot read {file}: {short_reason(exc)}", "pass a PNG/JPEG image or a GIF/MP4 video") from None

    if as_json:
        typer.echo(json.dumps({"file": str(file), "prompt": prompt, "scores": scores, "parsed": parsed.to_dict(),
                               "read": seen, "reasons": scores.reasons}, indent=2, sort_keys=True))  # fmt: skip
        return
    from rich.console import Console
    from rich.table import Table

    stdout = Console()
    stdout.print(f"{file.name}: {prompt}", markup=False, highlight=False)
    table = Table()
    table.add_column("attribute")
    table.add_column("score", justify="right")
    for key, value in scores.items():
        table.add_row(key, f"{value:.2f}")
    stdout.print(table)
    for reason in scores.reasons:
        stdout.print(f"rejected: {reason}", markup=False, highlight=False)
