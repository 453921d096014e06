"""Helpers for the temporal-attention techniques' tests: one short tiny-AnimateDiff run and a probe
that keeps the final maps the processors use.

Runs are 32x32 (16x16 latent), 8 frames, 2 steps, batched CFG, ``output_type="latent"`` (the VAE
adds nothing to what these tests check and costs a third of the run).
"""

from __future__ import annotations

import torch

from attncraft.attention_processors import AttentionTechnique, apply_techniques, select_layers

FRAMES = 8


def run_latents(pipe, *techniques, steps: int = 2, frames: int = FRAMES, seed: int = 0, guidance: float = 7.5):
    """Latents of one tiny run with ``techniques`` applied (none: the stock pipeline)."""
    generator = torch.Generator().manual_seed(seed)
    with apply_techniques(pipe, *techniques):
        return pipe("a red circle moves right", num_frames=frames, height=32, width=32, num_inference_steps=steps,
                    guidance_scale=guidance, generator=generator, output_type="latent").frames


class Probe(AttentionTechnique):
    """Observer (runs after every editor) that keeps each temporal map it sees, per (step, layer)."""

    name = "probe"
    order = 1000
    edits_maps = False  # an observer: where no editor acts, the output stays the fused kernel's

    def __init__(self, selector=None):
        super().__init__(selector or select_layers(kinds="temporal"))
        self.maps: dict[tuple[int, str], torch.Tensor] = {}

    def edit_probs(self, call, probs):
        self.maps[(call.step_index, call.layer.name)] = probs.detach().float().clone()
        return probs


def count_active_calls(technique, hook: str) -> set[tuple[int, int]]:
    """Wrap ``technique``'s ``hook`` so that it records (run, UNet call) each time it runs; returns that set."""
    seen: set[tuple[int, int]] = set()
    original = getattr(technique, hook)

    def wrapped(call, tensor):
        seen.add((call.context.run_index, call.context.unet_calls))
        return original(call, tensor)

    setattr(technique, hook, wrapped)
    return seen
