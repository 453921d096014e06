"""Test-wide settings: offline Hub, one torch thread (fastest on 2 cores, see the diffusers notes),
no progress bars, and session-scoped tiny-model factories."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["ATTNCRAFT_PROGRESS"] = "0"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# Without a GPU, Triton kernels (TAR's, attncraft/attention_processors/ctgm_kernels.py) run in Triton's CPU
# interpreter. The switch is read when Triton is imported, so it is set here, before any test imports it.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def clip_tokenizer():
    from attncraft.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


@pytest.fixture
def fake_xformers(monkeypatch):
    """Install a stand-in ``xformers`` package on a machine that "has CUDA", with the probe on CPU.

    Call it with the ``memory_efficient_attention`` to use (default: a correct one, with xformers'
    ``(batch, tokens, heads, head_dim)`` layout); returns the fake ``xformers.ops`` module.
    """
    import sys
    import types

    import torch.nn.functional as F

    from attncraft.attention_processors import backends

    def tokens_major_attention(q, k, v, attn_bias=None):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              attn_mask=attn_bias).transpose(1, 2)

    def install(attention=tokens_major_attention):
        package = types.ModuleType("xformers")
        package.__version__ = "0.0.0-fake"
        ops = types.ModuleType("xformers.ops")
        ops.memory_efficient_attention = attention
        package.ops = ops
        monkeypatch.setitem(sys.modules, "xformers", package)
        monkeypatch.setitem(sys.modules, "xformers.ops", ops)
        backends.xformers_problem.cache_clear()
        return ops

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "_probe_device", lambda: torch.device("cpu"))
    yield install
    backends.xformers_problem.cache_clear()
