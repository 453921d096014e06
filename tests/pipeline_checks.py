"""diffusers' standard pipeline behaviours as reusable checks, for any pipeline class of the project.

Every check takes

* ``make``: a zero-argument factory returning a ready pipeline (a technique's pipeline class built
  from tiny components, or a stock pipeline with techniques installed; progress bars off);
* ``call``: the keyword arguments of one generation (prompt, steps, size, frames, guidance...),
  without ``generator`` and ``output_type``, which the checks set;
* optionally ``reference``: a factory of the pipeline the output must match (e.g. the stock
  pipeline), compared under the same feature exactly (``reference_atol=0``, the default) or within
  it. It may return one pipeline built once: the checks switch the features they turn on in it off
  again (``make`` must build a fresh pipeline, since save/load and ``from_pipe`` keep using it).

What each check asserts:

* :func:`check_output_types` - ``np``, ``pt``, ``pil`` and ``latent`` outputs are the same result
  (``pt`` is ``np`` with channels first, ``pil`` is ``np`` rounded to bytes, ``latent`` decodes to ``np``);
* :func:`check_batch_matches_single` - a batch of prompts with one generator per prompt gives each
  prompt's single-prompt result;
* :func:`check_callback_on_step_end` - the callback runs once per step with the requested tensors,
  observing does not change the output, and latents it returns replace the pipeline's;
* :func:`check_save_load` - ``save_pretrained`` then ``from_pretrained`` (then ``prepare``, e.g.
  installing techniques again) gives the same output;
* :func:`check_from_pipe` - a pipeline made with ``from_pipe`` shares the components and gives the
  same output;
* :func:`check_attention_slicing`, :func:`check_fused_qkv` - the output stays within ``atol`` of the
  plain one, and back to it when the feature is switched off;
* :func:`check_freeu` - FreeU changes the output, and switching it off restores it exactly.

:func:`run_standard_checks` runs them all. Typical use in a technique's tests::

    from pipeline_checks import run_standard_checks

    def test_my_pipeline_behaves_like_a_diffusers_pipeline(tmp_path):
        run_standard_checks(lambda: MyPipeline(**tiny_components()), dict(prompt="a red circle",
                            num_inference_steps=2, height=32, width=32), tmp_path)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

Factory = Callable[[], Any]


def generate(pipe, call: dict, seed: int = 0, output_type: str = "np", **extra):
    """One generation with a fresh ``torch.Generator`` seeded ``seed``; returns images or frames."""
    kwargs = {**call, **extra}
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    output = pipe(output_type=output_type, **kwargs)
    return output.frames if hasattr(output, "frames") else output.images


def assert_same(actual, expected, atol: float = 0.0, what: str = "output") -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert diff <= atol, f"{what}: max difference {diff:.3g} > {atol}"


def _compare(result, reference: Factory | None, run: Callable[[Any], Any], atol: float, what: str) -> None:
    if reference is not None:
        assert_same(result, run(reference()), atol, f"{what} (against the reference pipeline)")


def _decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """The ``np`` output the pipeline would have made from ``latents`` (SD-family and AnimateDiff)."""
    with torch.no_grad():
        if hasattr(pipe, "video_processor"):
            video = pipe.decode_latents(latents, 16) if _takes_chunk(pipe) else pipe.decode_latents(latents)
            return pipe.video_processor.postprocess_video(video=video, output_type="np")
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="np")


def _takes_chunk(pipe) -> bool:
    import inspect

    return "decode_chunk_size" in inspect.signature(pipe.decode_latents).parameters


def check_output_types(make: Factory, call: dict, reference: Factory | None = None, reference_atol: float = 0.0) -> None:
    pipe = make()
    as_np = generate(pipe, call)
    as_pt = generate(pipe, call, output_type="pt")
    as_pil = generate(pipe, call, output_type="pil")
    latents = generate(pipe, call, output_type="latent")
    assert isinstance(as_np, np.ndarray) and isinstance(as_pt, torch.Tensor)
    assert_same(as_pt.movedim(-3, -1).cpu().numpy(), as_np, 0.0, "pt output")
    pil = np.stack([np.stack([np.asarray(f) for f in x]) if isinstance(x, list) else np.asarray(x) for x in as_pil])
    assert_same(pil, (as_np * 255).round().astype(np.uint8), 0.0, "pil output")
    assert latents.shape[1] == pipe.unet.config.out_channels  # 9 inputs but 4 latent channels for FancyVideo
    assert_same(_decode(pipe, latents), as_np, 1e-6, "decoded latent output")
    _compare(as_np, reference, lambda p: generate(p, call), reference_atol, "np output")


def check_batch_matches_single(make: Factory, call: dict, prompts: tuple[str, str] = ("a red circle", "a blue square"),
                               reference: Factory | None = None, atol: float = 1e-4, reference_atol: float = 0.0) -> None:
    pipe = make()
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    batch = generate(pipe, {**call, "prompt": list(prompts)}, generator=gens)
    assert len(batch) == len(prompts)
    for i, prompt in enumerate(prompts):
        single = generate(pipe, {**call, "prompt": prompt}, seed=i)
        assert_same(batch[i:i + 1], single, atol, f"batch item {i}")

    def run_reference(p):
        return generate(p, {**call, "prompt": list(prompts)},
                        generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))])

    _compare(batch, reference, run_reference, reference_atol, "batched output")


def check_callback_on_step_end(make: Factory, call: dict, reference: Factory | None = None,
                               reference_atol: float = 0.0) -> None:
    pipe = make()
    plain = generate(pipe, call)
    seen = []

    def observe(p, i, t, kwargs):
        seen.append((i, tuple(kwargs["latents"].shape)))
        return kwargs

    observed = generate(pipe, call, callback_on_step_end=observe, callback_on_step_end_tensor_inputs=["latents"])
    steps = call.get("num_inference_steps", 50)
    assert [i for i, _ in seen] == list(range(steps))
    assert_same(observed, plain, 0.0, "output with an observing callback")

    def shift(p, i, t, kwargs):
        return {"latents": kwargs["latents"] + 0.5} if i == steps - 1 else kwargs

    shifted = generate(pipe, call, callback_on_step_end=shift, callback_on_step_end_tensor_inputs=["latents"])
    assert np.abs(shifted - plain).max() > 1e-3, "latents returned by the callback were ignored"
    _compare(observed, reference, lambda p: generate(p, call), reference_atol, "callback output")


def check_save_load(make: Factory, call: dict, tmp_path: Path, prepare: Callable[[Any], None] | None = None,
                    reference: Factory | None = None, atol: float = 1e-4, reference_atol: float = 0.0) -> None:
    """``atol``: reloaded weights can run a few ulps apart (stock tiny AnimateDiff: 4e-7)."""
    pipe = make()
    before = generate(pipe, call)
    folder = Path(tmp_path) / "saved-pipeline"
    pipe.save_pretrained(folder)
    loaded = type(pipe).from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    if prepare is not None:
        prepare(loaded)
    assert_same(generate(loaded, call), before, atol, "output after save_pretrained/from_pretrained")
    _compare(before, reference, lambda p: generate(p, call), reference_atol, "output before saving")


def check_from_pipe(make: Factory, call: dict, target: type | None = None, reference: Factory | None = None,
                    reference_atol: float = 0.0) -> None:
    pipe = make()
    before = generate(pipe, call)
    other = (target or type(pipe)).from_pipe(pipe)
    other.set_progress_bar_config(disable=True)
    assert other.unet is pipe.unet
    assert_same(generate(other, call), before, 0.0, "output of the from_pipe pipeline")
    _compare(before, reference, lambda p: generate(p, call), reference_atol, "output")


def _switch_check(make, call, enable, disable, reference, atol_feature, atol_reference, what):
    pipe = make()
    plain = generate(pipe, call)
    enable(pipe)
    switched = generate(pipe, call)
    assert_same(switched, plain, atol_feature, f"output with {what}")
    disable(pipe)
    assert_same(generate(pipe, call), plain, atol_feature, f"output after switching {what} off")

    def run_reference(p):
        enable(p)
        try:
            return generate(p, call)
        finally:
            disable(p)

    _compare(switched, reference, run_reference, atol_reference, f"output with {what}")


def check_attention_slicing(make: Factory, call: dict, reference: Factory | None = None, atol: float = 1e-3,
                            reference_atol: float = 0.0) -> None:
    _switch_check(make, call, lambda p: p.enable_attention_slicing(slice_size=1), lambda p: p.disable_attention_slicing(),
                  reference, atol, reference_atol, "attention slicing")


def check_fused_qkv(make: Factory, call: dict, reference: Factory | None = None, atol: float = 1e-3,
                    reference_atol: float = 0.0) -> None:
    _switch_check(make, call, lambda p: p.fuse_qkv_projections(), lambda p: p.unfuse_qkv_projections(),
                  reference, atol, reference_atol, "fused QKV projections")


FREEU = dict(s1=0.9, s2=0.2, b1=1.2, b2=1.4)


def check_freeu(make: Factory, call: dict, reference: Factory | None = None, reference_atol: float = 0.0) -> None:
    pipe = make()
    plain = generate(pipe, call)
    pipe.enable_freeu(**FREEU)
    freeu = generate(pipe, call)
    assert np.abs(freeu - plain).max() > 1e-4, "FreeU did not change the output"
    pipe.disable_freeu()
    assert_same(generate(pipe, call), plain, 0.0, "output after disable_freeu")

    def run_reference(p):
        p.enable_freeu(**FREEU)
        try:
            return generate(p, call)
        finally:
            p.disable_freeu()

    _compare(freeu, reference, run_reference, reference_atol, "FreeU output")


def run_standard_checks(make: Factory, call: dict, tmp_path: Path, reference: Factory | None = None,
                        prepare: Callable[[Any], None] | None = None, skip: tuple[str, ...] = ()) -> None:
    """All checks above; ``skip`` names checks to leave out (e.g. ``("fused_qkv",)``)."""
    checks = {
        "output_types": lambda: check_output_types(make, call, reference),
        "batch": lambda: check_batch_matches_single(make, call, reference=reference),
        "callback": lambda: check_callback_on_step_end(make, call, reference),
        "save_load": lambda: check_save_load(make, call, tmp_path, prepare, reference),
        "from_pipe": lambda: check_from_pipe(make, call, reference=reference),
        "attention_slicing": lambda: check_attention_slicing(make, call, reference),
        "fused_qkv": lambda: check_fused_qkv(make, call, reference),
        "freeu": lambda: check_freeu(make, call, reference),
    }
    unknown = set(skip) - set(checks)
    assert not unknown, f"unknown checks to skip: {sorted(unknown)}"
    for name, check in checks.items():
        if name not in skip:
            check()
