"""Kernel accounting shared by the benchmarks' ``--profile`` options (``torch.profiler``).

A profiled span is summarised as host time (until the last launch returns), wall time (after a device
sync) and the summed time of the CUDA kernels it ran; wall minus kernels is the time the GPU waited on
the host. On the CPU no kernels are recorded and the kernel figures are None.
"""

from __future__ import annotations


def profiler_activities(device) -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profiled(fn, device, per: int = 1) -> tuple[float, float, dict[str, list[float]]]:
    """Run ``fn`` under ``torch.profiler`` after a device sync: (host ms until it returns, wall ms after a
    second sync, :func:`kernel_times`), each divided by ``per`` (the iterations ``fn`` runs)."""
    import time

    import torch
    from torch.profiler import profile

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=profiler_activities(device)) as prof:
        t0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - t0) * 1000 / per
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1000 / per
    return host, wall, kernel_times(prof.events(), per)


def kernel_times(events, per: int) -> dict[str, list[float]]:
    """CUDA kernels of profiler ``events``: name -> [ms, launches], each divided by ``per``."""
    kernels: dict[str, list[float]] = {}
    for event in events:
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            entry = kernels.setdefault(event.name, [0.0, 0])
            entry[0] += event.time_range.elapsed_us() / 1000 / per
            entry[1] += 1 / per
    return kernels


def kernel_table(kernels: dict[str, list[float]], unit: str, top: int = 12) -> list[str]:
    """Markdown rows of the ``top`` kernels by time (``unit``: what the figures are per)."""
    busy = sum(ms for ms, _ in kernels.values())
    lines = [f"| kernel | ms / {unit} | launches / {unit} | share of kernel time |", "|---|---|---|---|"]
    for name, (ms, count) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        short = name if len(name) <= 90 else name[:87] + "..."
        lines.append(f"| `{short.replace('|', '/')}` | {ms:.2f} | {count:.0f} | {ms / busy:.1%} |")
    return lines + [""]
