"""Batch jobs: manifests of many generations, run resumably on one machine's GPUs or on Ray.

* :mod:`~attncraft.batch.manifest` -- the manifest schema (JSON lines / YAML, sweeps), checked up front.
* :mod:`~attncraft.batch.jobs` -- the registry of job types (``register_job``), one per command.
* :mod:`~attncraft.batch.runner` -- ``run_batch``: hash-named atomic outputs, the status file, resuming.
* :mod:`~attncraft.batch.worker` / :mod:`~attncraft.batch.backends` -- where jobs run: this process,
  one worker process per GPU, or Ray actors.
* :mod:`~attncraft.batch.gallery` -- ``write_report``: the static HTML gallery.

Nothing here imports torch until a job runs.
"""

from attncraft.batch.jobs import JobRun, JobType, get_job_type, job_types, register_job

__all__ = ["JobRun", "JobType", "get_job_type", "job_types", "register_job", "load_manifest", "run_batch", "write_report"]


def __getattr__(name: str):
    if name == "load_manifest":
        from attncraft.batch.manifest import load_manifest

        return load_manifest
    if name == "run_batch":
        from attncraft.batch.runner import run_batch

        return run_batch
    if name == "write_report":
        from attncraft.batch.gallery import write_report

        return write_report
    raise AttributeError(name)
