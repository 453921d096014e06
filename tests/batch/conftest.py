"""Fixtures of the batch tests (helpers in ``batch_helpers.py``)."""

from __future__ import annotations

import pytest

from batch_helpers import Calls


@pytest.fixture
def calls(tmp_path, monkeypatch) -> Calls:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("ATTNCRAFT_TEST_CALLS", str(path))
    return Calls(path)
