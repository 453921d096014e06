"""Options and helpers shared by CLI commands (model, device, output folder, progress)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)

MODEL_HELP = "Model: 'shapes' (embedded default), a diffusers folder, a .safetensors/.ckpt file, or a Hub id."
ModelOption = typer.Option("shapes", "--model", "-m", help=MODEL_HELP)
DeviceOption = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
DtypeOption = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16/fp16 on CUDA), fp32, fp16 or bf16.")
AttentionBackendOption = typer.Option(
    "sdpa", "--attention-backend",
    help="Fused attention kernel: sdpa (PyTorch, default) or xformers (CUDA only; the optional xformers extra).",
)
OutOption = typer.Option(Path("outputs"), "--out", "-o", help="Output folder (created if needed).")
OverwriteOption = typer.Option(
    False, "--overwrite",
    help="Replace existing results of the same name. Without it nothing is replaced: new results get the next free name (-2, -3...).",
)
TrustPickleOption = typer.Option(
    False, "--trust-pickle",
    help="Allow pickled checkpoints (.bin/.ckpt/.pt), which can run code when opened. "
         "Better: convert a trusted one once with 'python -m attncraft.checkpoints PATH'.",
)


# options of the image-making commands (image, customize; video and edit take some of them)
CountOption = typer.Option(1, "--count", "-n", help="Number of images.")
WidthOption = typer.Option(None, "--width", help="Width in pixels (default: the model's native size).")
HeightOption = typer.Option(None, "--height", help="Height in pixels (default: the model's native size).")
NegativeOption = typer.Option(None, "--negative", help="Negative prompt.")
SchedulerOption = typer.Option(None, "--scheduler", help="ddim, ddpm, pndm, lms, euler, euler-a, heun, dpm, dpm-karras, unipc.")
ConfigOption = typer.Option(None, "--config", help="For single-file checkpoints: a diffusers folder or Hub id of the same architecture.")


def quiet_libraries() -> None:
    """Silence library chatter (deprecations, torchvision fallbacks) that is not for CLI users."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "huggingface_hub", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()  # "Loading weights" bars
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()  # "Loading pipeline components" bars
    except ImportError:  # pragma: no cover
        pass
