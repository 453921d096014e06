"""Batch runner scaling over the GPUs of one host: the per-GPU runner and the Ray backend.

The same N image jobs (default 64; SD 1.5 architecture with **random weights**, fp16, 512x512, 25
steps, CFG 7.5, DDIM, distinct prompts and seeds; the model and jobs of ``bench_batch.py``) with the
per-GPU runner (``--backend local``: one worker process per GPU) and, where Ray is installed, the Ray
backend (a local Ray instance, one GPU actor per worker), on the first 1, 2, 4 GPUs of ``--gpus``.
Reported: jobs per minute, speedup over 1 GPU of the same backend, where the wall time goes (worker
start and model load, denoising + saving, the rest: Python, PNG encoding, the coordinator, workers
idle at the end), and whether every run wrote the same PNG bytes as the first run.

``--tiny``: a tiny random SD at 32x32, 2 steps, on 1, 2, ... CPU worker processes (a smoke test of
the script; the numbers mean nothing).

GPU commands (``--model-dir`` reuses the model folder ``bench_batch.py`` built, or builds it)::

    python benchmarks/bench_batch_scaling.py --gpus 0 --scaling 1 --backends local --out $OUT/bench        # one H200, ~1 min
    python benchmarks/bench_batch_scaling.py --gpus 0,1,2,3 --scaling 1,2,4 --out $OUT/bench              # 4 GPUs

Both leave ``$OUT/bench/RESULTS-batch-scaling.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_batch import (  # noqa: E402
    REPO,
    _device_name,
    gpu_arguments,
    gpu_jobs,
    header,
    run_gpu_measurement,
    runner,
    same_bytes,
    write_manifest,
)


def run_scaling(args, command: str, folder: Path, side: int, steps: int, device: str, dtype: str) -> list[str]:
    work = Path(args.work)
    gpus = [int(g) for g in args.gpus.split(",")] if not args.tiny else list(range(8))
    jobs = gpu_jobs(args.jobs, folder, side, steps, dtype)
    manifest = write_manifest(work / "scaling-jobs.jsonl", jobs)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    notes = []
    if "ray" in backends:
        try:
            import ray  # noqa: F401
        except ImportError:
            backends.remove("ray")
            notes.append("Ray is not installed on this machine: the Ray backend was not measured.")
    rows = []
    reference = None
    for n in [int(x) for x in args.scaling.split(",")]:
        if n > len(gpus):
            notes.append(f"{n} GPUs asked for, {len(gpus)} given in --gpus: skipped.")
            continue
        for backend in backends:
            out = work / f"scaling-{backend}-{n}"
            if backend == "ray":
                import ray

                ray.init(num_gpus=0 if args.tiny else n, num_cpus=n if args.tiny else None, include_dashboard=False,
                         log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
            try:
                # Ray: n actors of one GPU each, placed by Ray on the GPUs it was given; --tiny: n CPU workers
                r = runner(manifest, out, backend=backend, gpus=None if args.tiny else gpus[:n], device=device,
                           batch_size=args.batch_size, workers=n)
            finally:
                if backend == "ray":
                    ray.shutdown()
            reference = reference or out
            r.update(n=n, backend_name=backend, equal=same_bytes(reference, out))
            rows.append(r)
    base = {}
    lines = header("batch runner scaling over GPUs of one host", command, _device_name(device))
    what = ("tiny random SD on CPU workers (smoke test: numbers mean nothing)" if args.tiny else
            "SD 1.5 architecture, **random weights**")
    lines += [f"{len(jobs)} jobs ({what}, {dtype}, {side}x{side}, {steps} steps), "
              f"batch size {args.batch_size}; outputs compared byte for byte with the first run. Per worker: the mean "
              "over workers of model load and of denoising + saving; the rest is worker start-up (process or actor, "
              "imports), Python and the coordinator, and workers idle at the end.", "",
              f"| backend | {'workers' if args.tiny else 'GPUs'} | wall | jobs / min | speedup | model load (per worker) | "
              "denoise + save (per worker) | rest | same PNGs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rate = len(jobs) / r["wall"] * 60
        base.setdefault(r["backend_name"], rate)
        load, busy = r["load"] / r["n"], r["jobs"] / r["n"]
        lines.append(f"| {r['backend_name']} | {r['n']} | {r['wall']:.1f} s | {rate:.1f} | {rate / base[r['backend_name']]:.2f}x | "
                     f"{load:.1f} s | {busy:.1f} s | {max(r['wall'] - load - busy, 0):.1f} s | {'yes' if r['equal'] else 'NO'} |")
    lines += ["", *notes, ""] if notes else [""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=None, help="Jobs (default 64; 8 with --tiny).")
    parser.add_argument("--scaling", default="1,2,4", help="GPU counts (with --tiny: CPU worker counts), e.g. 1,2,4.")
    parser.add_argument("--backends", default="local,ray", help="Backends to measure: local, ray.")
    gpu_arguments(parser, "RESULTS-batch-scaling.md")
    args = parser.parse_args()
    run_gpu_measurement(args, run_scaling, 64, "RESULTS-batch-scaling.md")


if __name__ == "__main__":
    main()
