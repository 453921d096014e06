"""BroadWay as options of a video command (``--broadway``, ``--broadway-alpha/beta/tau/preset/reference``).

The options are declared here once and added to a command's signature; :func:`broadway_from_options`
turns their values into the technique, with every error naming the option to change, before any
model is loaded.
"""

from __future__ import annotations

import typer

BroadwayOption = typer.Option(
    False, "--broadway",
    help="BroadWay: temporal self-guidance + Fourier motion enhancement on the first 20 % of steps (more motion).",
)  # fmt: skip
BroadwayPresetOption = typer.Option("animatediff", "--broadway-preset", help="animatediff (tau 7, alpha 0.6, beta 1.5) or videocrafter2.")
BroadwayAlphaOption = typer.Option(None, "--broadway-alpha", help="Temporal self-guidance strength, 0..1 (default: the preset's).")
BroadwayBetaOption = typer.Option(None, "--broadway-beta", help="Motion enhancement, the least scale of the high band (default: the preset's).")
BroadwayTauOption = typer.Option(
    None, "--broadway-tau",
    help="Half-width of the enhanced band around Nyquist (at most frames/2 - 1), or all_nondc (default: the preset's).",
)  # fmt: skip

BroadwayReferenceOption = typer.Option(
    None, "--broadway-reference",
    help="Up block whose temporal maps guide (default: 1 on UNets with 3+ up blocks such as SD 1.5, else 0, as on Shapes).",
)  # fmt: skip


def broadway_from_options(
    enabled: bool,
    preset: str = "animatediff",
    alpha: float | None = None,
    beta: float | None = None,
    tau: str | int | None = None,
    num_frames: int | None = None,
    reference_block: int | None = None,
):
    """The :class:`~attncraft.attention_processors.broadway.BroadWay` the options ask for, or None.

    Tuning options without ``--broadway`` are an error (they would silently do nothing). Without
    ``reference_block`` the technique carries the published ``up_blocks.1``; a command resolves it
    from the loaded model (:func:`~attncraft.attention_processors.broadway.default_reference_block`).
    """
    from attncraft.attention_processors.broadway import ALL_NON_DC, BROADWAY_PRESETS, BroadWay
    from attncraft.errors import InputError
    from attncraft.validation import check_finite, check_int_range

    if not enabled:
        given = [name for name, value in (("--broadway-alpha", alpha), ("--broadway-beta", beta), ("--broadway-tau", tau),
                                          ("--broadway-reference", reference_block)) if value is not None]  # fmt: skip
        if given or preset != "animatediff":
            raise InputError(f"{(given or ['--broadway-preset'])[0]} needs --broadway", "add --broadway, or drop the option")
        return None
    if preset not in BROADWAY_PRESETS:
        raise InputError(f"unknown --broadway-preset {preset!r}", f"pass one of: {', '.join(BROADWAY_PRESETS)}")
    if alpha is not None:
        alpha = check_finite("--broadway-alpha", alpha, 0.0, 1.0)
    if beta is not None:
        beta = check_finite("--broadway-beta", beta, 0.0, example=1.5)
    if tau is not None and str(tau) != ALL_NON_DC:
        tau = check_int_range("--broadway-tau", tau, 0, example=7)
    if reference_block is not None:
        reference_block = check_int_range("--broadway-reference", reference_block, 0, example=1)
    technique = BroadWay(preset, alpha=alpha, beta=beta, tau=tau, reference_block=1 if reference_block is None else reference_block)
    if num_frames is not None:
        technique.check_frames(num_frames)
    return technique
