"""Test-wide settings: offline Hub, one torch thread (fastest on 2 cores, see the diffusers notes),
no progress bars, and session-scoped tiny-model factories."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ATTNCRAFT_PROGRESS"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clip_tokenizer():
    from attncraft.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()
