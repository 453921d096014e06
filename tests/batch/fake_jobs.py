"""A fast job type for the batch tests: no model, files of known content, faults on demand.

It joins the registry the way every command does (a Typer signature and one ``register_job``), so
the tests exercise the same path. Every ``load`` and ``run`` call appends a line to the file named
by ``ATTNCRAFT_TEST_CALLS`` (when set), so tests count model loads and calls across processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import typer

from attncraft.batch.jobs import register_job
from attncraft.errors import InputError
from attncraft.validation import check_int_range, check_text

CALLS_ENV = "ATTNCRAFT_TEST_CALLS"
COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230), "yellow": (240, 220, 0)}


def solid(
    label: str = typer.Argument(..., help="Caption of the result."),
    color: str = typer.Option("red", "--color", help="red, green, blue or yellow."),
    size: int = typer.Option(32, "--size", help="Side in pixels."),
    seed: int = typer.Option(0, "--seed", help="A setting that makes jobs distinct."),
    variant: str = typer.Option("a", "--variant", help="Which 'model' to load."),
    media: str = typer.Option("png", "--media", help="png, gif or folder (a mesh-like result)."),
    fail: bool = typer.Option(False, "--fail", help="Raise while running."),
    die_if: Path = typer.Option(None, "--die-if", help="SIGKILL the running process if this file exists."),
    out: Path = typer.Option(Path("outputs"), "--out"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Draw a solid colour square (a test job)."""


def check(label, color="red", size=32, media="png", **_other) -> None:
    check_text("label", label)
    check_int_range("--size", size, 8, 512, example=32)
    if color not in COLORS:
        raise InputError(f"unknown colour {color!r}", f"pass --color with one of {', '.join(COLORS)}")
    if media not in ("png", "gif", "folder"):
        raise InputError(f"unknown --media {media!r}", "pass png, gif or folder")


def note(text: str) -> None:
    path = os.environ.get(CALLS_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(text + "\n")


class Model:
    def __init__(self, variant: str):
        self.variant = variant


def load(options, device):
    note(f"load {options['variant']}")
    return Model(options["variant"])


def run(model, jobs) -> None:
    from PIL import Image

    note("run " + " ".join(job.options["label"] for job in jobs))
    for job in jobs:
        o = job.options
        if o["die_if"] is not None and Path(o["die_if"]).exists():
            time.sleep(0.5)  # dies while working, not in the instant the previous answer leaves
            os.kill(os.getpid(), signal.SIGKILL)
        if o["fail"]:
            raise RuntimeError(f"job {o['label']} was asked to fail <b>")
        rgb = COLORS[o["color"]]
        image = Image.new("RGB", (o["size"], o["size"]), rgb)
        settings = {"label": o["label"], "color": o["color"], "size": o["size"], "seed": o["seed"]}
        if o["media"] == "png":
            job.save_png(image, settings)
        elif o["media"] == "gif":
            second = image.copy()
            second.paste((0, 0, 0), (0, 0, 4, 4))  # an animation whose every frame is mostly the colour
            with job.file(".gif") as tmp:
                image.save(tmp, format="GIF", save_all=True, append_images=[second], duration=200, loop=0)
        else:
            folder = job.folder()
            image.save(folder / "turntable.gif", format="GIF")
            (folder / "mesh.glb").write_bytes(b"glTF")
        job.settings = settings
        job.metrics["brightness"] = sum(rgb) / 765


register_job("solid", solid, check=check, load=load, run=run, model_options=("variant",),
             batch_options=("label", "color", "seed", "fail"), name_option="label")
