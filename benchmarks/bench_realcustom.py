"""RealCustom sampling against plain SDXL CFG sampling, at SDXL size (random weights), interleaved.

What it measures (SDXL UNet, CLIP-L + OpenCLIP-bigG-size text encoders, a SigLIP-so400m-size image
encoder at 384 px (729 tokens of 1152 channels, the release's SigLIP part), RealCustom parts for
all 70 cross-attention layers; all random weights, which cost the same time as trained ones;
1024x1024, 25 steps of DPM-Solver (single-step, order 2, as the release), bf16):

* ``plain``            - ``StableDiffusionXLPipeline`` sampling, CFG batched (2 rows per UNet call);
* ``release``          - RealCustom, release guidance, the mask recomputed at every step: one call of
  3 rows (text-only rows for the mask, unconditional + zero image, text + image) per step;
* ``release_reuse``    - the same, the mask reused from the middle step on (``mask_reused_step=12``):
  2 rows per call from there;
* ``release_condmask`` / ``release_condmask_reuse`` - the option ``mask_pass="conditional"``: the
  word map read from the text + image rows of the guidance call, so no text-only rows (2 rows per
  call, as plain CFG, after step 0's one text-only row), recomputed every step / reused from the
  middle step;
* ``paper`` / ``paper_reuse`` - the paper's guidance (Eq. 13, 3 rows per call throughout) with the
  adaptive scoring module, mask recomputed every step / reused from the middle step.

Counted in each variant's first (warm-up) run, printed beside the times: UNet calls and the rows in
all of them, word maps computed ((row, layer) pairs), visual-branch attention calls, image-encoder
calls, on CUDA the host syncs (synchronising CUDA operations, counted with
``torch.cuda.set_sync_debug_mode``), and the aten operators of one sampling step (:class:`OpCounter`,
``torch.profiler``: what the host issues, the cost of an eager launch-bound UNet).

Every RealCustom run also includes its one-time work (encoding the subject and the zero image,
one text-only call for the first mask). Timed are whole 25-step sampling runs that stop at the
latents (``output_type="latent"``: the VAE decode is the same in every variant), variants
interleaved in rotating order, after one warm-up run each; the median of ``--rounds`` runs and
the peak memory are reported, with the ratio to ``plain``. The UNet call alone at batch 2 and 3
(the anchors 99.5 / 102.4 ms on an H200) is timed the same way. Targets: at most 1.2x with the
mask recomputed every step, 1.1x with it reused from the middle step (goal 1.1x / 1.05x).

Usage: ``python benchmarks/bench_realcustom.py --device cuda`` (about 2.5 minutes on an H200, model
building included); ``--variants plain,release`` runs a subset; ``--tiny --device cpu`` for a quick
local check. ``--profile DIR``, after the timed rounds, profiles one more run of each variant
(``torch.profiler``, CPU and CUDA activity) and prints host time (until the last launch returns), wall
time and the summed kernel time per run: where wall time exceeds kernel time, the GPU waited on the
host (a launch-bound run), where they agree, the extra cost is GPU work. The top kernels of each
variant go to ``DIR/realcustom_profile.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # profiling.py beside it

VARIANTS = {
    "plain": None,
    "release": dict(guidance_mode="release", use_scoring=False),
    "release_reuse": dict(guidance_mode="release", use_scoring=False, mask_reused_step="middle"),
    "release_condmask": dict(guidance_mode="release", use_scoring=False, mask_pass="conditional"),
    "release_condmask_reuse": dict(guidance_mode="release", use_scoring=False, mask_pass="conditional",
                                   mask_reused_step="middle"),
    "paper": dict(guidance_mode="paper", use_scoring=True, image_guidance_scale=3.0),
    "paper_reuse": dict(guidance_mode="paper", use_scoring=True, image_guidance_scale=3.0, mask_reused_step="middle"),
}


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    """The pipeline (random weights) and a subject image."""
    from diffusers import AutoencoderKL, DPMSolverSinglestepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, SiglipVisionConfig, SiglipVisionModel

    from attncraft.pipelines.realcustom import RealCustomXLPipeline
    from attncraft.realcustom.encoder import wrap_vision_model
    from attncraft.realcustom.modules import RealCustomAdapter
    from attncraft.tokenizer import load_clip_tokenizer

    def text(hidden, layers, heads, proj=None):
        return CLIPTextConfig(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                              hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, projection_dim=proj or hidden, hidden_act="gelu")

    if tiny:
        unet_cfg = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=32, cross_attention_dim=64,
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80, norm_num_groups=8)
        te1, te2 = text(32, 2, 2), text(32, 2, 2, 32)
        vae_cfg = dict(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                       up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                    image_size=32, patch_size=8)
    else:
        unet_cfg = dict(sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280),
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
                        addition_embed_type="text_time", addition_time_embed_dim=256,
                        projection_class_embeddings_input_dim=2816)
        te1, te2 = text(768, 12, 12), text(1280, 32, 20, 1280)
        vae_cfg = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                       up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, scaling_factor=0.13025)
        vision = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                    image_size=384, patch_size=14)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_encoder, text_encoder_2 = CLIPTextModel(te1), CLIPTextModelWithProjection(te2)
        encoder = wrap_vision_model(SiglipVisionModel(vision))
        adapter = RealCustomAdapter.from_unet(unet, encoder.hidden_size, init="random", encoder="siglip (random)")
    scheduler = DPMSolverSinglestepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                             solver_order=2, lower_order_final=True, prediction_type="epsilon")
    tok = load_clip_tokenizer()
    pipe = RealCustomXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tok,
                                tokenizer_2=tok, unet=unet, scheduler=scheduler).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_realcustom(adapter.to(dtype), encoder.to(device=device, dtype=dtype))
    subject = torch.rand(3, 768 if not tiny else 64, 768 if not tiny else 64, generator=torch.Generator().manual_seed(0))
    return pipe, subject


def run(pipe, variant: str, subject, size: int, steps: int) -> None:
    kwargs = dict(VARIANTS[variant] or {})
    if kwargs.get("mask_reused_step") == "middle":
        kwargs["mask_reused_step"] = steps // 2
    common = dict(prompt="a photo of a toy on a wooden table", num_inference_steps=steps, height=size, width=size,
                  guidance_scale=3.5, output_type="latent", generator=torch.Generator(device="cpu").manual_seed(0))
    if VARIANTS[variant] is None:
        pipe(**common)
    else:
        pipe(subject_image=subject, subject_word="toy", **common, **kwargs)


class Counters:
    """Per-run counts of what a variant's sampling does (see the module docstring); counting wraps
    a few functions for one run, so it is done outside the timed runs."""

    def __init__(self, pipe, device: torch.device):
        self.pipe, self.device = pipe, device
        self.counts: dict[str, int] = {}

    def __enter__(self):
        import attncraft.attention_processors.realcustom as rc

        c = self.counts = {"unet_calls": 0, "unet_rows": 0, "word_maps": 0, "visual_attention": 0, "visual_flops": 0,
                           "encoder_calls": 0}

        def unet_hook(module, args, kwargs):
            c["unet_calls"] += 1
            c["unet_rows"] += int((args[0] if args else kwargs["sample"]).shape[0])

        def encoder_hook(module, args):
            c["encoder_calls"] += 1

        add, attention = rc.WordMapReader._add, rc.sdpa

        def counted_add(reader, call, probs):
            c["word_maps"] += int(probs.shape[0] * probs.shape[1])
            return add(reader, call, probs)

        def counted_attention(q, k, *args, **kwargs):
            c["visual_attention"] += 1
            c["visual_flops"] += 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]  # Q K^T and P V
            return attention(q, k, *args, **kwargs)

        self._undo = [lambda: setattr(rc.WordMapReader, "_add", add), lambda: setattr(rc, "sdpa", attention)]
        rc.WordMapReader._add, rc.sdpa = counted_add, counted_attention
        for handle in (self.pipe.unet.register_forward_pre_hook(unet_hook, with_kwargs=True),
                       self.pipe.realcustom_encoder.register_forward_pre_hook(encoder_hook)):
            self._undo.append(handle.remove)
        self._syncs = None
        if self.device.type == "cuda":
            self._syncs = warnings.catch_warnings(record=True)
            self._seen = self._syncs.__enter__()
            warnings.simplefilter("always")
            try:
                torch.cuda.set_sync_debug_mode("warn")
            except (RuntimeError, AttributeError):  # not counted on this build; the timing goes on
                self._syncs.__exit__(None, None, None)
                self._syncs = None
        return self

    def __exit__(self, *exc):
        for undo in self._undo:
            undo()
        if self._syncs is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._syncs.__exit__(*exc)
            self.counts["host_syncs"] = sum("synchroniz" in str(w.message) for w in self._seen)
        return False


class OpCounter:
    """aten operators the host issues in one sampling step of a run: profiled (``torch.profiler``, CPU
    activity only) from the UNet call of the second-to-last step to that of the last step, so the
    step's UNet call, its hooks and the pipeline's work between calls (guidance, scheduler, mask).
    That step reads the next mask in ``release``/``paper`` and reuses it in the ``_reuse`` variants.
    ``ops`` counts every aten operator event (nested ones too: roughly the kernels), ``top`` those
    called from outside another aten operator (the calls the Python side makes)."""

    def __init__(self, pipe, calls: int):
        self.pipe, self.calls = pipe, calls
        self.ops = self.top = None

    def __enter__(self):
        from torch.profiler import ProfilerActivity, profile

        self._seen, self._prof = 0, None

        def hook(module, args, kwargs):
            self._seen += 1
            if self._seen == self.calls - 1:
                self._prof = profile(activities=[ProfilerActivity.CPU])
                self._prof.__enter__()
            elif self._seen == self.calls and self._prof is not None:
                self._prof.__exit__(None, None, None)
                self._count(self._prof.events())

        self._handle = self.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True, prepend=True)
        return self

    def _count(self, events) -> None:
        spans = sorted((e.time_range.start, e.time_range.end) for e in events if e.name.startswith("aten::"))
        self.ops, self.top, open_until = len(spans), 0, -1
        for start, end in spans:
            if start >= open_until:  # not inside the previous top-level operator
                self.top += 1
                open_until = end
        self._prof = None

    def __exit__(self, *exc):
        self._handle.remove()
        if self._prof is not None:  # fewer calls than expected: no complete step
            self._prof.__exit__(None, None, None)
            self._prof = None
        return False


def profile_variants(pipe, names: list[str], subject, size: int, steps: int, device) -> tuple[dict, list[str]]:
    """One profiled run per variant: {name: host / wall / kernel ms and kernel launches per run}, and the
    markdown of each variant's top kernels."""
    from profiling import kernel_table, profiled

    summary, lines = {}, []
    for name in names:
        host, wall, kernels = profiled(lambda: run(pipe, name, subject, size, steps), device)
        busy = sum(ms for ms, _ in kernels.values()) if kernels else None
        summary[name] = {"host_ms": host, "wall_ms": wall, "kernel_ms": busy,
                         "kernel_launches": int(round(sum(n for _, n in kernels.values()))) if kernels else None}
        lines += [f"### {name}", "", f"One run: host {host:.0f} ms (until the last launch returns), wall {wall:.0f} ms, "
                  + (f"summed kernel time {busy:.0f} ms ({summary[name]['kernel_launches']} launches)." if kernels
                     else "no CUDA kernels recorded (CPU run)."), ""]
        if kernels:
            lines += kernel_table(kernels, "run")
    return summary, lines


def unet_flops_per_row(pipe, size: int) -> float:
    """FLOPs of one UNet row at ``size`` (SDXL conditioning), counted on the meta device (no compute)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = pipe.unet.config
    latent = size // pipe.vae_scale_factor
    proj = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
        added = {"text_embeds": torch.zeros(1, proj), "time_ids": torch.zeros(1, 6)}
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            unet(torch.zeros(1, 4, latent, latent), torch.tensor(500.0), encoder_hidden_states=torch.zeros(
                1, 77, config.cross_attention_dim), added_cond_kwargs=added)
    return float(counter.get_total_flops())


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000.0


def unet_anchor(pipe, device, dtype, size: int, rows: int, calls: int) -> float:
    """ms of one UNet call at ``rows`` rows (SDXL conditioning), mean over ``calls`` calls."""
    latent = size // pipe.vae_scale_factor
    x = torch.randn(rows, 4, latent, latent, device=device, dtype=dtype)
    ehs = torch.randn(rows, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=dtype)
    proj = pipe.unet.config.projection_class_embeddings_input_dim - 6 * pipe.unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(rows, proj, device=device, dtype=dtype),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * rows, device=device, dtype=dtype)}
    t = torch.tensor(500, device=device)

    def go():
        for _ in range(calls):
            pipe.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=added)

    return timed(go, device) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--anchor-calls", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="tiny SDXL-shaped models for a CPU smoke run")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset (plain is always run)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="after the timed rounds, profile one run per variant: host, wall and kernel time, "
                             "top kernels in DIR/realcustom_profile.md")
    args = parser.parse_args(argv)
    names = ["plain"] + [v for v in args.variants.split(",") if v and v != "plain"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; pick from {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    from attncraft.devices import DTYPES

    dtype = DTYPES[args.dtype]
    t_build = time.perf_counter()
    pipe, subject = build(args.tiny, device, dtype)
    build_s = time.perf_counter() - t_build
    size = 64 if args.tiny else args.size
    counts: dict[str, dict[str, int]] = {}
    times: dict[str, list[float]] = {v: [] for v in names}
    peaks: dict[str, float] = {}

    with torch.inference_mode():
        for name in names:  # warm-up, and what each variant does (counted)
            calls = args.steps + (VARIANTS[name] is not None)  # RealCustom: one text-only call at step 0
            with Counters(pipe, device) as counter, OpCounter(pipe, calls) as ops:
                run(pipe, name, subject, size, args.steps)
            counts[name] = {**counter.counts, "aten_ops_per_step": ops.ops, "top_level_ops_per_step": ops.top}
        anchors = {2: [], 3: []}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times[name].append(timed(lambda: run(pipe, name, subject, size, args.steps), device))
                if device.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
            for rows in (2, 3):
                anchors[rows].append(unet_anchor(pipe, device, dtype, size, rows, args.anchor_calls))
        profiled, profile_lines = (profile_variants(pipe, names, subject, size, args.steps, device)
                                   if args.profile is not None else ({}, []))
    base = statistics.median(times["plain"])
    results = {name: {"ms_per_run": statistics.median(times[name]), "rounds": times[name],
                      "ratio": statistics.median(times[name]) / base, "paired_ratio": statistics.median(
                          t / p for t, p in zip(times[name], times["plain"])),
                      **counts[name], "peak_gib": peaks.get(name),
                      **({"profile": profiled[name]} if name in profiled else {})} for name in names}
    results["anchors_ms"] = {str(k): statistics.median(v) for k, v in anchors.items()}
    row_flops = unet_flops_per_row(pipe, size)
    results["unet_tflop_per_row"] = row_flops / 1e12
    plain_flops = results["plain"]["unet_rows"] * row_flops
    for name in names:  # what the arithmetic alone costs against plain: UNet rows and the visual branch
        r = results[name]
        r["flop_ratio"] = (r["unet_rows"] * row_flops + r["visual_flops"]) / plain_flops
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    import diffusers

    print(f"### RealCustom vs plain SDXL sampling ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__})")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"{'tiny SDXL-shaped models' if args.tiny else 'SDXL architecture, random weights'} (UNet, two text encoders, "
          f"SigLIP-so400m-size image encoder, RealCustom parts on {len(pipe.realcustom_adapter.layer_names)} cross-attention "
          f"layers), {size}x{size}, {args.steps} steps, {args.dtype}, batch 1, median of {args.rounds} interleaved runs "
          f"to the latents; build {build_s:.0f} s.  ")
    print(f"UNet call alone: {results['anchors_ms']['2']:.1f} ms at batch 2, {results['anchors_ms']['3']:.1f} ms at batch 3; "
          f"{row_flops / 1e9:.1f} GFLOP per row (counted).")
    print()
    print("| variant | ms / run (median) | ms / step | ratio to plain | paired ratio | UNet calls | rows in all calls "
          "| FLOP ratio | word maps (row x layer) | visual attention calls | image-encoder calls | host syncs "
          "| aten ops / step (top-level) | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        r = results[name]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        ops = "-" if r["aten_ops_per_step"] is None else f"{r['aten_ops_per_step']} ({r['top_level_ops_per_step']})"
        print(f"| {name} | {r['ms_per_run']:.0f} | {r['ms_per_run'] / args.steps:.1f} | {r['ratio']:.3f} | "
              f"{r['paired_ratio']:.3f} | {r['unet_calls']} | {r['unet_rows']} | {r['flop_ratio']:.3f} | {r['word_maps']} | "
              f"{r['visual_attention']} | {r['encoder_calls']} | {r.get('host_syncs', '-')} | {ops} | {peak} |")
    print()
    print("FLOP ratio: (UNet rows x FLOPs per row + the visual branch's attention FLOPs) / plain's, the time ratio a "
          "compute-bound GPU cannot beat for that schedule.  ")
    print("aten ops / step: every aten operator the host issued in the second-to-last step (its UNet call, hooks "
          "and the pipeline's work up to the last step's call; in brackets those not called from inside another "
          "operator), profiled once in the warm-up run; the eager UNet being launch-bound, RealCustom's host cost.  ")
    print("Targets: release <= 1.2x (goal 1.1x), release_reuse <= 1.1x (goal 1.05x); with the mask read from the "
          "text + image rows: release_condmask, release_condmask_reuse.")
    if profiled:
        print()
        print("Profiled runs (one per variant, after the timed rounds): host ms until the last launch returns / wall ms "
              "/ summed kernel ms / wall minus kernels (the GPU waiting on the host).")
        print()
        print("| variant | host ms | wall ms | kernel ms | GPU idle ms | kernel launches |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in names:
            p = profiled[name]
            k = "-" if p["kernel_ms"] is None else f"{p['kernel_ms']:.0f}"
            idle = "-" if p["kernel_ms"] is None else f"{p['wall_ms'] - p['kernel_ms']:.0f}"
            print(f"| {name} | {p['host_ms']:.0f} | {p['wall_ms']:.0f} | {k} | {idle} | {p['kernel_launches'] or '-'} |")
        args.profile.mkdir(parents=True, exist_ok=True)
        (args.profile / "realcustom_profile.md").write_text("\n".join(profile_lines) + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
