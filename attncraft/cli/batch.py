"""``attncraft batch``: many jobs from a manifest, resumable, on this machine's GPUs or on Ray.

* ``attncraft batch run MANIFEST --out DIR`` runs the jobs of a JSON-lines or YAML manifest (schema:
  :mod:`attncraft.batch.manifest`) into DIR; running it again runs only what is not finished.
* ``attncraft batch check MANIFEST`` checks a manifest and lists its jobs without running anything.
* ``attncraft batch schema [COMMAND]`` lists the keys a job of each command takes.
* ``attncraft batch report DIR`` writes ``DIR/index.html``, a gallery of the results and failures.
"""

from __future__ import annotations

from pathlib import Path

import typer

from attncraft.cli.common import console
from attncraft.errors import InputError

app = typer.Typer(help="Batch jobs from a manifest: resumable, one worker per GPU or Ray, HTML gallery.",
                  no_args_is_help=True)

JobModuleOption = typer.Option(
    None, "--job-module",
    help="Also import this module for its job types (repeatable; ATTNCRAFT_JOB_MODULES works too).")


def _echo(message: str) -> None:
    console.print(message, markup=False, highlight=False, soft_wrap=True)


def _parse_gpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        gpus = []
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise InputError(f"--gpus {text!r} is not a list of GPU numbers", "pass e.g. --gpus 0,1")
    return gpus


def _load(manifest: Path, job_modules: list[str] | None):
    import os

    from attncraft.batch.manifest import ManifestError, load_manifest

    # job types' checks may import transformers/diffusers: keep their import-time chatter out,
    # without importing them here (quiet_libraries does the rest when a job type loads a model)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

    try:
        return load_manifest(manifest, extra_modules=job_modules or ())
    except ManifestError as exc:
        if len(exc.problems) > 1:
            for problem in exc.problems:
                _echo(f"  {problem}")
        raise


@app.command("run")
def run(
    manifest: Path = typer.Argument(..., help="Manifest: .jsonl (one job a line) or .yaml."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created if needed; shared by every worker)."),
    backend: str = typer.Option("local", "--backend", help="local (this machine) or ray."),
    workers: int = typer.Option(None, "--workers", "-w", help="Worker processes (local) or actors (ray). Default: one per --gpus entry, else 1 (local) / one per cluster GPU (ray)."),
    gpus: str = typer.Option(None, "--gpus", help="GPUs of this machine, one worker each, e.g. 0,1 (local); with ray: that many actors of one GPU each."),
    device: str = typer.Option("auto", "--device", help="Device of every job without --gpus: auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(8, "--batch-size", help="Most jobs one pipeline call draws together (1: one job a call)."),
    score: bool = typer.Option(False, "--score", help="Score every image against its prompt with the Shapes reader (metrics in the sidecar and report)."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--skip-failed", help="Run jobs that failed before again (default) or leave them."),
    ray_address: str = typer.Option(None, "--ray-address", help="Ray cluster: ray://HOST:10001, auto, or leave out for a local instance."),
    threads: int = typer.Option(None, "--threads", help="Torch threads per worker (default: the cores shared among the workers)."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write DIR/index.html at the end."),
    job_module: list[str] = JobModuleOption,
) -> None:
    """Run a manifest's jobs into --out; finished jobs are never run again."""
    # library chatter is silenced by each job type when it loads its model (quiet_libraries)
    from attncraft.batch.gallery import write_report
    from attncraft.batch.runner import raise_for_summary, run_batch
    from attncraft.outputs import prepare_output_dir
    from attncraft.validation import check_int_range

    if backend not in ("local", "ray"):
        raise InputError(f"unknown backend {backend!r}", "pass --backend local or --backend ray")
    gpu_list = _parse_gpus(gpus)
    if workers is not None:
        check_int_range("--workers", workers, 1, 1024, example=2)
        if gpu_list and backend == "local" and workers != len(gpu_list):
            raise InputError(f"--workers {workers} and --gpus {gpus} disagree: the local backend runs one worker per GPU",
                             "leave out --workers")
    check_int_range("--batch-size", batch_size, 1, 1024, example=8)
    if threads is not None:
        check_int_range("--threads", threads, 1, 1024, example=4)
    if device != "auto" and gpu_list:
        raise InputError("--device and --gpus both given", "pass one of them")
    jobs = _load(manifest, job_module)  # every problem of the manifest, before any work
    out = prepare_output_dir(out)
    if gpu_list and (backend == "local" or workers is None):
        workers = len(gpu_list)  # one worker per GPU (on Ray: that many actors of one GPU each)
    summary = run_batch(jobs, out, backend=backend, workers=workers, gpus=gpu_list, device=device, batch_size=batch_size,
                        score=score, retry_failed=retry_failed, ray_address=ray_address, threads=threads,
                        extra_modules=job_module or (), log=_echo)
    rate = f" ({summary.done / summary.seconds * 60:.1f} jobs/min)" if summary.done and summary.seconds else ""
    _echo(f"{summary.done} done, {len(summary.failed)} failed, {summary.already_done} already done"
          f"{f', {summary.skipped_failed} failed before and skipped' if summary.skipped_failed else ''}"
          f" in {summary.seconds:.1f} s{rate}")
    for failure in summary.failed[:20]:
        _echo(f"  failed: {failure['source']}: {failure['error']}")
    if report and summary.stopped is None:  # a batch stopped by a full disk writes nothing more
        typer.echo(str(write_report(out)))
    raise_for_summary(summary, out)


@app.command("check")
def check(
    manifest: Path = typer.Argument(..., help="Manifest: .jsonl (one job a line) or .yaml."),
    job_module: list[str] = JobModuleOption,
) -> None:
    """Check a manifest and list its jobs (id, output name, where) without running anything."""
    jobs = _load(manifest, job_module)
    commands: dict[str, int] = {}
    for job in jobs:
        commands[job.command] = commands.get(job.command, 0) + 1
        typer.echo(f"{job.id[:12]}  {job.stem}  {job.source}")
    _echo(f"{len(jobs)} job{'s' if len(jobs) != 1 else ''} ({', '.join(f'{n} {c}' for c, n in sorted(commands.items()))}): no problems")


@app.command("schema")
def schema(
    command: str = typer.Argument(None, help="Only this command's keys."),
    job_module: list[str] = JobModuleOption,
) -> None:
    """List the keys of every job type: the command's own options, their types and defaults."""
    from attncraft.batch.jobs import job_types
    from attncraft.batch.manifest import describe_schema

    types = job_types(tuple(job_module or ()))
    if command is not None and command not in types:
        raise InputError(f"unknown command {command!r}", f"pass one of {', '.join(types)}")
    for name, job_type in types.items():
        if command is not None and name != command:
            continue
        typer.echo(f"{name}: {job_type.description}")
        typer.echo("  command   text   required   (this job type)")
        for key, kind, default, help_text in describe_schema(job_type):
            typer.echo(f"  {key:<20} {kind:<13} {default:<12} {help_text}")
        typer.echo("  sweep     {KEY: [VALUES] or {start, stop, step}}   grid of every combination")
        typer.echo("")


@app.command("report")
def report(
    folder: Path = typer.Argument(..., help="The --out folder of an 'attncraft batch run'."),
    title: str = typer.Option(None, "--title", help="Page title."),
) -> None:
    """Write FOLDER/index.html: thumbnails, videos, mesh turntables, settings, metrics, failed jobs."""
    from attncraft.batch.gallery import write_report

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", "pass the --out folder of an 'attncraft batch run'")
    typer.echo(str(write_report(folder, title=title)))
