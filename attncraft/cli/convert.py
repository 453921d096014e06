"""``attncraft convert``: one-time conversions of released checkpoints into diffusers folders.

``attncraft convert fancyvideo CKPT --out DIR``: FancyVideo's DeepSpeed checkpoint
(``mp_rank_00_model_states.pt``, a pickle: needs ``--trust-pickle``) or the third-party
``FancyVideo_v1.safetensors`` -> ``DIR``, a diffusers ``MotionAdapter`` folder with the 9-channel
``conv_in``, plus ``DIR/conditioning`` (the fps / motion-score embeddings) and ``DIR/conversion.json``
(what was kept and what was left out). Loading is strict (see :mod:`attncraft.fancyvideo.convert`).
"""

from __future__ import annotations

from pathlib import Path

import typer

from attncraft.cli.common import OverwriteOption, TrustPickleOption, console, quiet_libraries

app = typer.Typer(help="Convert released checkpoints into diffusers folders (once).", no_args_is_help=True)


@app.command("fancyvideo")
def fancyvideo(
    checkpoint: Path = typer.Argument(..., help="mp_rank_00_model_states.pt (DeepSpeed) or FancyVideo_v1.safetensors."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (a MotionAdapter folder plus conditioning/)."),
    trust_pickle: bool = TrustPickleOption,
    overwrite: bool = OverwriteOption,
    dtype: str = typer.Option("keep", "--dtype", help="keep (as stored), fp32, fp16 or bf16."),
) -> None:
    """Convert the released FancyVideo checkpoint into a diffusers MotionAdapter folder (strict)."""
    quiet_libraries()
    import torch

    from attncraft.errors import InputError
    from attncraft.fancyvideo.convert import convert_fancyvideo
    from attncraft.validation import check_input_file

    dtypes = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype not in dtypes:
        raise InputError(f"unknown --dtype {dtype!r}", f"pass one of {', '.join(dtypes)}")
    check_input_file(checkpoint, "FancyVideo checkpoint")
    parts = convert_fancyvideo(checkpoint, out, trust_pickle=trust_pickle, overwrite=overwrite, dtype=dtypes[dtype])
    for line in parts.report.lines():
        console.print(line, markup=False, highlight=False)
    console.print(f"wrote {out}/ (MotionAdapter, conv_in_channels={parts.adapter.config.conv_in_channels}) and "
                  f"{out}/conditioning/", markup=False, highlight=False)
    typer.echo(str(out))

