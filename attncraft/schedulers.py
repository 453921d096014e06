"""Named samplers for ``--scheduler``: short names mapped to diffusers scheduler classes.

The new scheduler is built with ``from_config`` from the pipeline's current one, so the model's
training noise schedule and prediction type (epsilon or v, as SD 2.x uses) carry over.
"""

from __future__ import annotations

from typing import Any

import diffusers

from attncraft.errors import InputError

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {}),
    "dpm-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def set_scheduler(pipe, name: str) -> None:
    """Replace ``pipe.scheduler`` by the named one, keeping the model's noise schedule."""
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}", f"pass one of {', '.join(SCHEDULERS)}")
    class_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)


_OWN_SCHEDULER = "_attncraft_own_scheduler"


def use_scheduler(pipe, name: str | None) -> None:
    """Run ``pipe`` with the named scheduler, or with the one it was loaded with for ``None``.

    The pipeline's own scheduler is remembered the first time, and a named one is built from it: a
    pipeline that serves many runs (a batch worker) never carries one run's choice into the next.
    """
    own = pipe.__dict__.get(_OWN_SCHEDULER)
    if own is None:
        own = pipe.scheduler
        object.__setattr__(pipe, _OWN_SCHEDULER, own)
    pipe.scheduler = own
    if name:
        set_scheduler(pipe, name)
