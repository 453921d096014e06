"""Cost of the attention-processor core on an SD 1.5-size UNet (random weights), eager and compiled.

What it measures (one UNet call = one denoising step with batched CFG, batch 2, 512x512 -> 64x64
latent, fp16 by default):

* ``stock``   - diffusers' ``AttnProcessor2_0`` on every layer;
* ``core``    - :class:`AttncraftAttnProcessor` on every layer, no technique (target: <= 1 % over stock);
* ``capture`` - ``stock`` everywhere except the five 16x16 cross-attention layers, where an
  :class:`AttentionStore` records probabilities at every step (target: <= 3 % over stock), with the
  step tracker active and the timestep a device tensor, as in a real pipeline loop; the maps are
  computed when the UNet returns, batched across the five layers (``deferred_maps.py``);
* ``capture_per_layer`` - the same store forced onto the per-layer path (maps computed inside each
  layer), for comparison.

Variants are timed in interleaved rounds (ABC ABC ...) of ``--steps`` UNet calls with CUDA events,
after warm-up; the median round is reported, with peak memory per variant. With ``--compile`` each
variant is also run under ``torch.compile`` and ``torch._dynamo.explain`` reports graph breaks. The
compiled variants are interleaved too, each on its own copy of the UNet (timing them one after the
other let the host's drift pass for a cost: compiled SD 1.5 at batch 2 is about as host-bound as it
is device-bound on the H200 machine). Also reported per compiled variant: the host time to issue a
call, and with ``--profile DIR`` the device kernel time per call and the host syncs per call, from
``torch.profiler`` tables written to DIR.

The weights are random: the SD 1.5 architecture costs the same with random weights as with real
ones, and no real weights are reachable from the benchmark machines.

Usage: ``python benchmarks/bench_attention_core.py --device cuda --steps 20 --rounds 10 --compile --profile DIR``
(``--tiny --device cpu`` for a quick local check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from attncraft.attention_processors import AttentionStore, get_manager, select_layers
from attncraft.devices import DTYPES


def build_unet(tiny: bool) -> tuple[UNet2DConditionModel, int, int]:
    if tiny:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8,
        )
        return unet, 16, 32
    # SD 1.5 UNet: diffusers' defaults are the SD 1.x architecture, with cross_attention_dim 768.
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8), 64, 768


def sixteen_by_sixteen_cross(latent: int) -> object:
    level = {64: 2, 16: 0}.get(latent, 2)
    return select_layers(kinds="cross", levels=level)


def issue_calls(unet, inputs, timesteps, steps: int) -> None:
    """``steps`` UNet calls, the timestep decreasing like a sampler's."""
    for t in timesteps[:steps]:
        unet(inputs["sample"], t, encoder_hidden_states=inputs["ehs"])


def time_variant(unet, inputs, timesteps, steps: int, device) -> float:
    """Milliseconds per UNet call over ``steps`` calls."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        issue_calls(unet, inputs, timesteps, steps)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps
    t0 = time.perf_counter()
    issue_calls(unet, inputs, timesteps, steps)
    return (time.perf_counter() - t0) * 1000 / steps


def host_ms_per_call(unet, inputs, timesteps, steps: int, device) -> float:
    """Host milliseconds to *issue* ``steps`` calls (no sync inside): about equal to the timed
    ms per call when the host is the bottleneck, well below it when the GPU is."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    issue_calls(unet, inputs, timesteps, steps)
    issued = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return issued * 1000 / steps


def write_profile(unet, inputs, timesteps, steps: int, device, path: str, title: str) -> dict[str, float]:
    """Profile ``steps`` calls with ``torch.profiler``; write the top ops to ``path``.

    Returns the totals that tell a host-side slowdown from a device-side one: device kernel time
    per call, and the number of host syncs (``aten::_local_scalar_dense``, stream/device syncs,
    device-to-host copies) per call.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        time_variant(unet, inputs, timesteps, steps, device)
    averages = prof.key_averages()
    # a value read on the host, an explicit sync, or a device-to-host copy (host-to-device copies
    # are asynchronous and do not count)
    sync_names = {"aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"}
    syncs = sum(e.count for e in averages if e.key in sync_names or e.key.startswith("Memcpy DtoH"))
    device_ms = sum(getattr(e, "self_device_time_total", 0.0) for e in averages) / 1000 / steps if cuda else 0.0
    with open(path, "w") as fh:
        fh.write(f"{title}: {steps} calls; device kernel time {device_ms:.2f} ms / call; host syncs {syncs / steps:.1f} / call\n\n")
        if cuda:
            fh.write(averages.table(sort_by="self_device_time_total", row_limit=30) + "\n")
        fh.write(averages.table(sort_by="cpu_time_total", row_limit=40) + "\n")
    return {"device_ms_per_call": device_ms, "syncs_per_call": syncs / steps}


def processor_call_overhead(device, dtype) -> dict[str, float]:
    """Microseconds per processor call (host side dominates: the eager UNet is launch-bound)."""
    from diffusers.models.attention_processor import Attention

    from attncraft.attention_processors import AttncraftAttnProcessor
    from attncraft.attention_processors.context import AttentionContext
    from attncraft.attention_processors.layers import describe_layer

    attn = Attention(query_dim=64, cross_attention_dim=64, heads=2, dim_head=32).to(device=device, dtype=dtype)
    h = torch.randn(2, 16, 64, device=device, dtype=dtype)
    e = torch.randn(2, 8, 64, device=device, dtype=dtype)
    procs = {"stock": AttnProcessor2_0(), "core": AttncraftAttnProcessor(describe_layer("x.attn2", attn, None), AttentionContext())}
    samples: dict[str, list[float]] = {k: [] for k in procs}
    with torch.inference_mode():
        for _ in range(7):
            for name, proc in procs.items():
                attn.set_processor(proc)
                for _ in range(200):
                    attn(h, encoder_hidden_states=e)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(2000):
                    attn(h, encoder_hidden_states=e)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                samples[name].append((time.perf_counter() - t0) / 2000 * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def capture_stores(latent: int) -> dict[str, AttentionStore]:
    """The store of each capture variant: deferred maps, or forced onto the per-layer path."""
    stores = {v: AttentionStore(sixteen_by_sixteen_cross(latent)) for v in ("capture", "capture_per_layer")}
    stores["capture_per_layer"].reads_maps_after_forward = False
    return stores


def install_variant(manager, variant: str, stores: dict[str, AttentionStore]) -> None:
    """Install what ``variant`` adds to stock processors (nothing for ``stock``)."""
    if variant == "core":
        manager.install_core()
    elif variant in stores:
        manager.install(stores[variant])


def compile_variants(args, results, copies, inputs, timesteps, device, latent) -> None:
    """Compiled timings, interleaved like the eager ones.

    Each variant is its own copy of the UNet with its processors installed once: switching the
    processors of one model would fail dynamo's guards and time recompilations. All copies share
    one dynamo cache (one code object, guarded per instance), so the rounds can alternate between
    them; a graph compiled during the timed rounds is counted and reported.
    """
    managers = {}
    for variant, unet in copies.items():
        unet.set_attn_processor(AttnProcessor2_0())
        managers[variant] = get_manager(unet)
        install_variant(managers[variant], variant, capture_stores(latent))
    with torch.inference_mode():
        for variant, unet in copies.items():
            explain = torch._dynamo.explain(unet)(inputs["sample"], timesteps[0], encoder_hidden_states=inputs["ehs"])
            results[variant]["graph_breaks"] = explain.graph_break_count
            results[variant]["graphs"] = explain.graph_count
        torch._dynamo.reset()  # drop explain's cache entries, which would otherwise be reused
        compiled = {v: torch.compile(u) for v, u in copies.items()}
        for variant, model in compiled.items():
            t0 = time.perf_counter()
            for _ in range(2):
                # two whole runs: a technique's first call of a run can take another graph than
                # the rest (the store's first call creates its sums), and both must be compiled
                # before timing, or a round pays for a compilation (hence at least two calls)
                managers[variant].start_run()
                time_variant(model, inputs, timesteps, min(max(args.warmup, 2), args.steps), device)
            results[variant]["compile_warmup_s"] = time.perf_counter() - t0
        graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        names = list(compiled)
        times: dict[str, list[float]] = {v: [] for v in names}
        for r in range(args.rounds):
            for variant in names[r % len(names):] + names[: r % len(names)]:
                managers[variant].start_run()
                times[variant].append(time_variant(compiled[variant], inputs, timesteps, args.steps, device))
        for variant in names:
            managers[variant].start_run()
            results[variant]["compiled_host_ms_per_call"] = host_ms_per_call(compiled[variant], inputs, timesteps, args.steps, device)
        results["graphs_compiled_while_timing"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
        for variant in names:
            results[variant]["compiled_rounds"] = times[variant]
            results[variant]["compiled_ms_per_call"] = statistics.median(times[variant])
            if "stock" in times:
                results[variant]["compiled_paired_ratio"] = statistics.median(
                    t / s for t, s in zip(times[variant], times["stock"]))
        if args.profile:  # last: the profiler can slow later kernel launches down
            for variant in names:
                managers[variant].start_run()
                results[variant]["compiled_profile"] = write_profile(
                    compiled[variant], inputs, timesteps, args.steps, device,
                    f"{args.profile}/profile_compiled_{variant}.txt", f"compiled {variant}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-variants", default="stock,core,capture", help="variants to compile (comma-separated)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also profile each compiled variant (torch.profiler tables into DIR)")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet for a CPU smoke run")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    def fresh_unet():
        torch.manual_seed(0)  # every copy gets the same weights
        unet, latent, ctx_dim = build_unet(args.tiny)
        return unet.to(device=device, dtype=dtype).eval(), latent, ctx_dim

    unet, latent, ctx_dim = fresh_unet()
    n_proc = len(unet.attn_processors)
    g = torch.Generator(device=device).manual_seed(0)
    inputs = {
        "sample": torch.randn(2, 4, latent, latent, device=device, dtype=dtype, generator=g),
        "ehs": torch.randn(2, 77, ctx_dim, device=device, dtype=dtype, generator=g),
    }
    timesteps = torch.linspace(999, 0, args.steps, device=device).round().long()
    variants = ["stock", "core", "capture", "capture_per_layer"]
    stock = {k: AttnProcessor2_0() for k in unet.attn_processors}
    manager = get_manager(unet)
    stores = capture_stores(latent)

    def use(variant: str) -> None:
        manager.remove_all()
        unet.set_attn_processor(dict(stock))
        install_variant(manager, variant, stores)
        manager.start_run()

    results: dict[str, dict] = {}
    with torch.inference_mode():
        use("capture")
        captured_layers = [layer.name for layer in manager.layers_for(stores["capture"])]
        for variant in variants:  # warm-up
            use(variant)
            time_variant(unet, inputs, timesteps, min(args.warmup, args.steps), device)
        rounds: dict[str, list[float]] = {v: [] for v in variants}
        peaks: dict[str, float] = {}
        for r in range(args.rounds):
            # rotate the order every round so no variant always runs first or last
            for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
                use(variant)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rounds[variant].append(time_variant(unet, inputs, timesteps, args.steps, device))
                if device.type == "cuda":
                    peaks[variant] = max(peaks.get(variant, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        for variant in variants:
            results[variant] = {"ms_per_call": statistics.median(rounds[variant]), "min_ms": min(rounds[variant]),
                                "rounds": rounds[variant], "peak_gib": peaks.get(variant)}
        maps = stores["capture"].layer_maps()
        assert len(maps) == len(captured_layers), "store did not record every selected layer"
        for name, m in stores["capture_per_layer"].layer_maps().items():  # the two paths record the same maps
            torch.testing.assert_close(maps[name] / maps[name].sum(-1, keepdim=True), m / m.sum(-1, keepdim=True),
                                       rtol=1e-3, atol=1e-5)

    if args.compile:
        del unet, manager, stores  # the compiled copies take its place in memory
        wanted = [v for v in variants if v in args.compile_variants.split(",")]
        compile_variants(args, results, {v: fresh_unet()[0] for v in wanted}, inputs, timesteps, device, latent)

    micro = processor_call_overhead(device, dtype)
    base = results["stock"]["ms_per_call"]
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"### Attention core overhead ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python {' '.join(sys.argv)}`  ")
    print(f"UNet: {'tiny' if args.tiny else 'SD 1.5 architecture, random weights'}, latent {latent}x{latent}, "
          f"batch 2 (CFG), {args.dtype}, {args.steps} calls per round, median of {args.rounds} interleaved rounds.  ")
    print(f"Captured layers ({len(captured_layers)}): {', '.join(captured_layers)}")
    print()
    print("| variant | ms / UNet call (median) | min | ratio to stock (median) | ratio (min) | peak GiB | compiled ms / call | compiled ratio | graph breaks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    cbase = results["stock"].get("compiled_ms_per_call")
    for variant in variants:
        r = results[variant]
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        comp = f"{r['compiled_ms_per_call']:.2f}" if "compiled_ms_per_call" in r else "-"
        cratio = f"{r['compiled_ms_per_call'] / cbase:.4f}" if cbase and "compiled_ms_per_call" in r else "-"
        breaks = str(r.get("graph_breaks", "-"))
        min_ratio = r["min_ms"] / results["stock"]["min_ms"]
        print(f"| {variant} | {r['ms_per_call']:.2f} | {r['min_ms']:.2f} | {r['ms_per_call'] / base:.4f} | {min_ratio:.4f} | {peak} | {comp} | {cratio} | {breaks} |")
    print()
    if args.compile:
        print(f"Compiled: one UNet copy per variant, {args.rounds} interleaved rounds; graphs compiled while "
              f"timing: {results['graphs_compiled_while_timing']}.")
        print()
        print("| compiled variant | paired ratio (median) | host ms to issue a call | device kernel ms / call | host syncs / call | compile + warm-up s |")
        print("| --- | --- | --- | --- | --- | --- |")
        for variant in variants:
            r = results[variant]
            if "compiled_ms_per_call" not in r:
                continue
            prof = r.get("compiled_profile", {})
            dev = f"{prof['device_ms_per_call']:.2f}" if prof else "-"
            syncs = f"{prof['syncs_per_call']:.1f}" if prof else "-"
            paired = f"{r['compiled_paired_ratio']:.4f}" if "compiled_paired_ratio" in r else "-"
            print(f"| {variant} | {paired} | {r['compiled_host_ms_per_call']:.2f} | {dev} | {syncs} | {r['compile_warmup_s']:.0f} |")
        print()
    print(f"Host-side cost of one processor call on a small attention layer (median of 7 x 2000 calls): "
          f"stock {micro['stock']:.2f} us, core {micro['core']:.2f} us; x{n_proc} layers = "
          f"{(micro['core'] - micro['stock']) * n_proc / 1000:.3f} ms per UNet call "
          f"({(micro['core'] - micro['stock']) * n_proc / 1000 / base * 100:.2f} % of the stock call).")
    results["processor_call_us"] = micro
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
