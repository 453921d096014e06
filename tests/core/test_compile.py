"""The core processor does not split torch.compile's graph of the UNet."""

from __future__ import annotations

import torch

import tiny_models as tm
from attncraft.attention_processors import get_manager


def test_core_processor_has_no_graph_break():
    torch._dynamo.reset()
    unet = tm.sd_unet().eval()
    get_manager(unet).install_core()
    g = torch.Generator().manual_seed(0)
    sample, ehs = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 32, generator=g)
    explanation = torch._dynamo.explain(unet)(sample, torch.tensor(10), encoder_hidden_states=ehs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
