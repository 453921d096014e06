"""VSTAR as options of a video command: ``--vstar [--vstar-preset ... --vstar-sigma ...]`` (temporal
attention regularization) and ``--synopsis rule|llm [--llm PATH_OR_ID]`` (video synopsis prompting;
states the user gives with the video command's ``--state`` win). Declared once here; the
``*_from_options`` helpers check every value (errors name the option) before any model is loaded.
"""

from __future__ import annotations

import typer

VstarOption = typer.Option(False, "--vstar", help="VSTAR temporal attention regularization (steps 0..13 of 25): more change over the clip.")
VstarPresetOption = typer.Option("64D4", "--vstar-preset", help="64D4 (default), 64D1, 64D8, 64D1_32D8 (longer videos), ...")
VstarSigmaOption = typer.Option(None, "--vstar-sigma", help="Band width per level: '4' (full resolution) or '1,8' (levels 0 and 1); replaces the preset.")
SynopsisOption = typer.Option(None, "--synopsis", help="Split the prompt into per-frame states: rule (built-in rules) or llm (--llm).")
LlmOption = typer.Option(None, "--llm", help="A local transformers causal LM for --synopsis llm: a folder, a .gguf file or a cached Hub id.")


def vstar_from_options(enabled: bool, preset: str = "64D4", sigma: str | None = None):
    """The :class:`~attncraft.attention_processors.vstar.TemporalAttentionRegularization` asked for, or None."""
    from attncraft.attention_processors.vstar import VSTAR_PRESETS, TemporalAttentionRegularization, parse_sigmas
    from attncraft.errors import InputError

    if not enabled:
        if sigma is not None or preset != "64D4":
            raise InputError(f"{'--vstar-sigma' if sigma is not None else '--vstar-preset'} needs --vstar", "add --vstar, or drop the option")
        return None
    if preset not in VSTAR_PRESETS:
        raise InputError(f"unknown --vstar-preset {preset!r}", f"pass one of: {', '.join(VSTAR_PRESETS)}")
    sigmas = parse_sigmas(sigma, "--vstar-sigma") if sigma is not None else None
    return TemporalAttentionRegularization(preset, sigmas=sigmas)


def check_synopsis_options(synopsis: str | None, llm: str | None) -> str | None:
    """The synopsis method (``--llm`` alone implies ``llm``); a missing ``--llm`` path is refused here."""
    from pathlib import Path

    from attncraft.errors import InputError
    from attncraft.loading import reference_looks_like_path

    if llm is not None and synopsis is None:
        synopsis = "llm"
    if synopsis not in (None, "rule", "llm"):
        raise InputError(f"unknown --synopsis {synopsis!r}", "pass --synopsis rule or --synopsis llm")
    if synopsis == "llm" and not llm:
        raise InputError("--synopsis llm needs a language model", "pass --llm PATH_OR_ID, or use --synopsis rule")
    if synopsis == "rule" and llm:
        raise InputError("--llm is only read by --synopsis llm", "drop --llm or pass --synopsis llm")
    if llm and not Path(llm).expanduser().exists() and reference_looks_like_path(llm, (".gguf",)):
        raise InputError(f"the --llm path {llm!r} does not exist", "check the path, or pass a Hub id in the local cache")
    return synopsis


def synopsis_from_options(prompt: str, synopsis: str | None, llm: str | None, states: list[str] | None):
    """The :class:`~attncraft.video.synopsis.Synopsis` for ``prompt`` (``--state`` wins), or None."""
    from attncraft.video.synopsis import make_synopsis

    if states:  # explicit states win: the synopsis options are not read
        return make_synopsis(prompt, states=states)
    method = check_synopsis_options(synopsis, llm)
    return None if method is None else make_synopsis(prompt, method, llm=llm)
