"""Batch runner throughput: jobs per minute against the ways people run many jobs without it.

Three measurements, one script (each prints a Markdown block for ``benchmarks/RESULTS.md``):

* ``--shapes-cpu``: the embedded Shapes SD on this machine's CPU. ``attncraft batch run`` of N image
  jobs (default 64: 16 Shapes prompts x 4 seeds, the model's default 25 steps at 64x64) against
  ``attncraft image`` called once per job, each a fresh process that imports the libraries and loads
  the model. ``--separate K`` times only K of the separate calls and extrapolates to N (said so in
  the output). Target: the runner >= 5x the separate calls.
* GPU, one GPU (default): an SD 1.5-size pipeline with **random weights** (UNet, VAE and CLIP text
  encoder of SD 1.5's architecture, fp16, saved once as a local model folder), 512x512, 25 steps,
  N jobs (default 32; distinct prompts and seeds). Variants, interleaved round by round: a plain loop
  of pipeline calls (load the pipeline, call it once per job, save each PNG), the per-GPU runner
  with one job a call (``--batch-size 1``), and the runner batching jobs (``--batch-size B``). Each
  is timed end to end (the loop's load included, the runner's worker start and load included) and
  without the model load. Target: the runner within 5 % of the loop, or faster by batching. The
  loop's images and the unbatched runner's are compared pixel for pixel.
* GPU scaling over 1, 2, 4 GPUs: ``benchmarks/bench_batch_scaling.py`` (same model, jobs and
  helpers as this script).

``--tiny``: the GPU measurements on a tiny random SD at 32x32, 2 steps, on the CPU (a smoke test of
the script itself; the numbers mean nothing).

GPU command (one H200, about 2 minutes with 24 jobs; ``--model-dir`` keeps the random-weight model
folder for the scaling script, which builds it if it is missing)::

    python benchmarks/bench_batch.py --jobs 24 --model-dir /tmp/sd15-random --out $OUT/bench   # $OUT/bench/RESULTS-batch.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES_PROMPTS = [
    f"a {color} {shape}{where}"
    for color, shape, where in [
        ("red", "circle", ""), ("blue", "square", " on the left"), ("green", "triangle", " on the right"),
        ("yellow", "star", ""), ("purple", "heart", " at the top"), ("orange", "cross", " at the bottom"),
        ("white", "circle", " on the right"), ("red", "star", " on the left"), ("blue", "heart", ""),
        ("green", "cross", " at the top"), ("yellow", "square", " at the bottom"), ("purple", "triangle", ""),
        ("orange", "circle", " on the left"), ("white", "star", " at the bottom"), ("red", "square", " at the top"),
        ("blue", "triangle", " on the right"),
    ]
]


def header(title: str, command: str, device: str) -> list[str]:
    return [f"## {datetime.date.today().isoformat()} — {title}", "",
            f"Hardware: {device}; Python {platform.python_version()}; host {platform.node()}, "
            f"{os.cpu_count()} CPU cores (load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the start).",
            f"Command: `{command}`", ""]


def write_manifest(path: Path, jobs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


# --------------------------------------------------------------------------------------------------
# Shapes SD on the CPU: the runner against one `attncraft image` process per job
# --------------------------------------------------------------------------------------------------


def shapes_jobs(count: int) -> list[dict]:
    seeds = max(1, -(-count // len(SHAPES_PROMPTS)))
    jobs = [{"command": "image", "prompt": p, "seed": s} for s in range(seeds) for p in SHAPES_PROMPTS]
    return jobs[:count]


def run_shapes_cpu(args, command: str) -> list[str]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = shapes_jobs(args.jobs)
    manifest = write_manifest(work / "shapes-cpu.jsonl", jobs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "ATTNCRAFT_PROGRESS": "0"}
    cli = [sys.executable, "-m", "attncraft.cli.app"]

    def timed(argv: list[str]) -> tuple[float, float]:
        """(wall seconds, CPU seconds of the child: user + system) of one command."""
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    out_runner = work / "runner"
    shutil.rmtree(out_runner, ignore_errors=True)
    out_separate = work / "separate"
    shutil.rmtree(out_separate, ignore_errors=True)
    measured = jobs[: args.separate or len(jobs)]
    half = len(measured) // 2
    separate: list[tuple[float, float]] = []

    def separate_calls(part: list[dict]) -> None:
        for job in part:
            separate.append(timed([*cli, "image", job["prompt"], "--seed", str(job["seed"]), "--device", "cpu",
                                   "--out", str(out_separate)]))

    # interleaved: half of the separate calls, the runner, the other half (the machine's load drifts)
    separate_calls(measured[:half])
    runner_wall, runner_cpu = timed([*cli, "batch", "run", str(manifest), "--out", str(out_runner), "--device", "cpu",
                                     "--batch-size", str(args.batch_size), "--no-report"])
    separate_calls(measured[half:])
    per_wall = sum(w for w, _c in separate) / len(separate)
    per_cpu = sum(c for _w, c in separate) / len(separate)
    n = len(jobs)
    extrapolated = len(measured) < n
    rate = lambda seconds: n / seconds * 60  # noqa: E731
    lines = header("batch runner vs separate `attncraft image` calls, Shapes SD on the CPU",
                   command, f"CPU ({platform.processor() or platform.machine()})")
    lines += [f"{n} image jobs ({len(SHAPES_PROMPTS)} Shapes prompts x seeds), 64x64, the model's default 25 steps; "
              "each process with torch's default threads. Jobs per minute of wall time, and per minute of CPU time "
              "(user + system of the processes: the fairer figure on a shared machine)."
              + (f" The separate calls are extrapolated from {len(measured)} timed calls (half before the runner, half "
                 f"after; wall {min(w for w, _ in separate):.1f}-{max(w for w, _ in separate):.1f} s each)." if extrapolated else ""),
              "",
              "| variant | wall time | CPU time | jobs / min (wall) | jobs / CPU-min | vs separate (wall) | vs separate (CPU) |",
              "|---|---|---|---|---|---|---|",
              f"| `attncraft batch run` (batch size {args.batch_size}, one process) | {runner_wall:.1f} s | {runner_cpu:.1f} s | "
              f"{rate(runner_wall):.1f} | {rate(runner_cpu):.1f} | **{per_wall * n / runner_wall:.2f}x** | "
              f"**{per_cpu * n / runner_cpu:.2f}x** |",
              f"| {n} separate `attncraft image` calls{' (extrapolated)' if extrapolated else ''} | {per_wall * n:.1f} s | "
              f"{per_cpu * n:.1f} s | {rate(per_wall * n):.1f} | {rate(per_cpu * n):.1f} | 1.00x | 1.00x |", ""]
    return lines


# --------------------------------------------------------------------------------------------------
# SD 1.5 size on the GPU: the runner against a plain loop
# --------------------------------------------------------------------------------------------------


def build_model_folder(folder: Path, tiny: bool, device: str) -> tuple[int, int]:
    """An SD 1.5-architecture pipeline with random weights saved as a local model folder (fp16 on GPU).

    Returns (image side, steps)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    build_device = torch.device(device)
    with build_device:
        if tiny:
            unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=16,
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                        norm_num_groups=8, attention_head_dim=8)
            vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, max_position_embeddings=77, bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407))
        else:
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                                up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                                sample_size=512)
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                                projection_dim=768, hidden_act="quick_gelu", bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if not tiny:
        pipe = pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    side = unet.config.sample_size * pipe.vae_scale_factor
    return side, (2 if tiny else 25)


def gpu_jobs(count: int, folder: Path, side: int, steps: int, dtype: str) -> list[dict]:
    words = ["castle", "forest", "river", "robot", "city", "garden", "harbor", "desert"]
    return [{"command": "image", "prompt": f"a painting of a {words[i % len(words)]}, study {i}", "seed": 1000 + i,
             "model": str(folder), "steps": steps, "width": side, "height": side, "guidance": 7.5, "dtype": dtype}
            for i in range(count)]


def plain_loop(folder: Path, jobs: list[dict], device: str, dtype: str, out: Path) -> dict:
    """What a user writes without the runner: load the pipeline, call it per job, save each PNG."""
    import torch
    from diffusers import StableDiffusionPipeline

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    from attncraft.devices import DTYPES

    pipe = StableDiffusionPipeline.from_pretrained(folder, dtype=DTYPES[dtype], safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    pipe.set_progress_bar_config(disable=True)
    _sync(device)
    loaded = time.perf_counter()
    for i, job in enumerate(jobs):
        generator = torch.Generator(device=device).manual_seed(job["seed"])
        image = pipe(prompt=[job["prompt"]], num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                     width=job["width"], height=job["height"], generator=[generator]).images[0]
        image.save(out / f"{i:04d}.png")
    _sync(device)
    end = time.perf_counter()
    del pipe
    _free(device)
    return {"wall": end - start, "load": loaded - start}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def runner(jobs_manifest: Path, out: Path, *, backend: str, gpus: list[int] | None, device: str, batch_size: int,
           workers: int | None = None) -> dict:
    """``run_batch`` on a fresh output folder: on ``gpus`` (one worker each), else ``workers`` on ``device``."""
    from attncraft.batch.manifest import load_manifest
    from attncraft.batch.runner import run_batch

    jobs = load_manifest(jobs_manifest)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = run_batch(jobs, out, backend=backend, gpus=gpus, workers=len(gpus) if gpus else workers,
                        device=device if not gpus else "auto", batch_size=batch_size, progress=False)
    wall = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"runner: {len(summary.failed)} jobs failed, first: {summary.failed[0]}")
    return {"wall": wall, "load": summary.load_seconds, "jobs": summary.busy_seconds, "backend": summary.backend,
            "stems": {j.id: j.stem for j in jobs}}


def compare_pngs(a: Path, b: Path, names_a: list[str], names_b: list[str]) -> tuple[bool, int]:
    """Whether the images are equal pixel for pixel, and the largest difference (0-255)."""
    import numpy as np
    from PIL import Image

    worst = 0
    for x, y in zip(names_a, names_b):
        pa = np.asarray(Image.open(a / x).convert("RGB")).astype(int)
        pb = np.asarray(Image.open(b / y).convert("RGB")).astype(int)
        worst = max(worst, int(np.abs(pa - pb).max()))
    return worst == 0, worst


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def run_single_gpu(args, command: str, folder: Path, side: int, steps: int, device: str, dtype: str) -> list[str]:
    work = Path(args.work)
    jobs = gpu_jobs(args.jobs, folder, side, steps, dtype)
    manifest = write_manifest(work / "gpu-jobs.jsonl", jobs)
    gpus = None if args.tiny else [int(args.gpus.split(",")[0])]
    results: dict[str, list[dict]] = {"loop": [], "runner-b1": [], f"runner-b{args.batch_size}": []}
    for _round in range(args.rounds):
        results["loop"].append(plain_loop(folder, jobs, device, dtype, work / "loop"))
        results["runner-b1"].append(runner(manifest, work / "runner-b1", backend="local", gpus=gpus, device=device, batch_size=1))
        results[f"runner-b{args.batch_size}"].append(
            runner(manifest, work / f"runner-b{args.batch_size}", backend="local", gpus=gpus, device=device,
                   batch_size=args.batch_size))
    stems = results["runner-b1"][0]["stems"]
    from attncraft.batch.manifest import load_manifest

    ordered = [f"{stems[j.id]}.png" for j in load_manifest(manifest)]
    loop_names = [f"{i:04d}.png" for i in range(len(jobs))]
    equal_b1, diff_b1 = compare_pngs(work / "loop", work / "runner-b1", loop_names, ordered)
    equal_bb, diff_bb = compare_pngs(work / "runner-b1", work / f"runner-b{args.batch_size}", ordered, ordered)
    what = "tiny random SD, 32x32, 2 steps (smoke test: numbers mean nothing)" if args.tiny else \
        "SD 1.5 architecture, **random weights**, fp16, 512x512, 25 steps, CFG 7.5, DDIM"
    lines = header("batch runner vs a plain loop of pipeline calls, one GPU", command, _device_name(device))
    lines += [f"{len(jobs)} jobs ({what}); variants interleaved, {args.rounds} round(s); median over rounds. "
              "'Generating' is the time spent generating and saving: for the loop its wall time less the model load, "
              "for the runner the time its worker spent running jobs (so without the worker process's start, its "
              "imports and the model load, which the 'start-up' column holds).", "",
              "| variant | wall (everything) | start-up + model load | jobs / min (end to end) | jobs / min (generating) | "
              "vs loop (generating) | vs loop (end to end) |",
              "|---|---|---|---|---|---|---|"]
    base = base_wall = None
    for name, rows in results.items():
        middle = len(rows) // 2
        wall = sorted(r["wall"] for r in rows)[middle]
        busy = sorted(r["wall"] - r["load"] if name == "loop" else r["jobs"] for r in rows)[middle]
        rate, rate_run = len(jobs) / wall * 60, len(jobs) / max(busy, 1e-9) * 60
        base, base_wall = base or rate_run, base_wall or rate
        label = "plain loop" if name == "loop" else f"per-GPU runner, batch size {name.split('-b')[1]}"
        lines.append(f"| {label} | {wall:.1f} s | {wall - busy:.1f} s | {rate:.1f} | {rate_run:.1f} | "
                     f"**{rate_run / base:.3f}x** | {rate / base_wall:.3f}x |")
    lines += ["", f"Runner (batch size 1) images equal to the loop's pixel for pixel: {'yes' if equal_b1 else f'no (largest difference {diff_b1}/255)'}; "
              f"batched vs unbatched: {'equal' if equal_bb else f'largest difference {diff_bb}/255'}.", ""]
    return lines


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.processor() or platform.machine()})"


def gpu_arguments(parser: argparse.ArgumentParser, out_name: str) -> None:
    """The options the one-GPU comparison and the scaling script share."""
    parser.add_argument("--tiny", action="store_true", help="Tiny random SD on the CPU (smoke test).")
    parser.add_argument("--batch-size", type=int, default=8, help="Jobs per pipeline call of the batched variant.")
    parser.add_argument("--gpus", default="0", help="GPUs to use, e.g. 0,1,2,3.")
    parser.add_argument("--dtype", default="fp16", help="dtype of the GPU jobs.")
    parser.add_argument("--model-dir", default=None,
                        help="Folder of the random-weight model: built there if it holds none, reused if it does "
                             "(default: a temporary folder, removed at the end).")
    parser.add_argument("--out", default=None, help=f"Folder for {out_name} (the Markdown block; nothing else).")
    parser.add_argument("--work", default=None, help="Work folder for the jobs' outputs (default: a new temporary folder).")


def run_gpu_measurement(args, measure, default_jobs: int, out_name: str) -> None:
    """Build (or reuse) the random-weight model, call ``measure(args, command, folder, side, steps,
    device, dtype)`` for its Markdown lines, print them and write them to ``--out``/``out_name``."""
    import torch

    from attncraft.cli.common import quiet_libraries

    quiet_libraries()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ATTNCRAFT_PROGRESS", "0")
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: pass --tiny for the CPU smoke test")
    dtype = "float32" if args.tiny else {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[args.dtype]
    job_dtype = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}[dtype]
    args.jobs = args.jobs or (8 if args.tiny else default_jobs)
    own_work = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="bench-batch-")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    own_model = args.model_dir is None
    model_dir = Path(args.model_dir or tempfile.mkdtemp(prefix="sd15-random-"))
    info = model_dir / "bench-model.json"
    start = time.perf_counter()
    if info.is_file() and json.loads(info.read_text()).get("tiny") == args.tiny:
        side, steps = json.loads(info.read_text())["side_steps"]
        built = f"random-weight model folder reused from {model_dir}"
    else:
        side, steps = build_model_folder(model_dir, args.tiny, device)
        info.write_text(json.dumps({"tiny": args.tiny, "side_steps": [side, steps]}))
        built = f"random-weight model folder built and saved in {time.perf_counter() - start:.1f} s, not counted"
    try:
        lines = measure(args, command, model_dir, side, steps, device, job_dtype)
    finally:
        if own_model:
            shutil.rmtree(model_dir, ignore_errors=True)
        if own_work:
            shutil.rmtree(args.work, ignore_errors=True)
    lines.append(f"({built})")
    write_results(lines, args.out, out_name)


def write_results(lines: list[str], out: str | None, name: str) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if out:  # the Markdown block only: the images stay in --work
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / name).write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes-cpu", action="store_true", help="Shapes SD on the CPU: runner vs separate CLI calls.")
    parser.add_argument("--separate", type=int, default=8, help="--shapes-cpu: separate calls actually timed (0: all).")
    parser.add_argument("--jobs", type=int, default=None, help="Jobs (default 64 for --shapes-cpu, 32 on one GPU, 8 with --tiny).")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds (one GPU).")
    gpu_arguments(parser, "RESULTS-batch.md")
    args = parser.parse_args()
    if args.shapes_cpu:
        args.jobs = args.jobs or 64
        own_work = args.work is None
        args.work = args.work or tempfile.mkdtemp(prefix="bench-batch-")
        try:
            lines = run_shapes_cpu(args, "python benchmarks/bench_batch.py " + " ".join(sys.argv[1:]))
        finally:
            if own_work:
                shutil.rmtree(args.work, ignore_errors=True)
        write_results(lines, args.out, "RESULTS-batch.md")
    else:
        run_gpu_measurement(args, run_single_gpu, 32, "RESULTS-batch.md")


if __name__ == "__main__":
    main()
