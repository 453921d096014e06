"""``attncraft batch check``: lists the jobs of a manifest and counts them, without running anything."""

from __future__ import annotations

import pytest
from batch_helpers import write_jsonl
from cli_runner import run_cli


@pytest.mark.parametrize("count, word", [(1, "1 job (1 image)"), (3, "3 jobs (3 image)")])
def test_check_counts_the_jobs_in_words(tmp_path, capsys, count, word):
    manifest = write_jsonl(tmp_path / "jobs.jsonl",
                           [{"command": "image", "prompt": "a red circle", "seed": s, "steps": 2} for s in range(count)])
    code, out, err = run_cli(["batch", "check", str(manifest)], capsys)
    assert code == 0, err
    assert f"{word}: no problems" in out + err
    assert len([line for line in out.splitlines() if "jobs.jsonl" in line]) == count
    assert not (tmp_path / "outputs").exists()
