"""Would regional compilation (compiling the UNet's repeated blocks, as diffusers' ``compile_repeated_blocks``)
share graphs across DPL's blocks? Counted, not timed: dynamo's unique graphs per block class.

An SD 1.5-layout UNet at a small width (the same 16 ``Transformer2DModel`` and 22 ``ResnetBlock2D``
instances, channels 32/64/128/128, 16x16 latents), its blocks' ``forward`` compiled with the
``aot_eager`` backend (dynamo capture and AOT autograd: the graphs inductor would be given, no code
generation), two DPL-style calls (forward and backward to the text embeddings), once with stock
attention processors and once under attncraft's attention manager with DPL's loss-map collector (what
the token updates run). Regional compilation pays when many instances share one graph; each unique
graph is one compilation, and dynamo stops compiling a function after ``recompile_limit`` graphs
(the rest runs eagerly); the count raises that limit to see every graph.

    python benchmarks/probe_regional_compile.py        # CPU, about a minute
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CLASSES = ("Transformer2DModel", "ResnetBlock2D")


def sd15_layout_pipeline():
    from diffusers import UNet2DConditionModel

    import tiny_models as tm

    pipe = tm.sd_pipeline()
    cfg = dict(pipe.unet.config)
    cfg.update(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8)
    pipe.register_modules(unet=UNet2DConditionModel.from_config(cfg))
    return pipe


def count(pipe, cls: str, managed: bool) -> dict[str, int]:
    from attncraft.attention_processors import get_manager
    from attncraft.attention_processors.dpl import LossMaps
    from attncraft.attention_processors.prompt_to_prompt import attention_plan
    from attncraft.pipelines.inversion import ModelAdapter, _forward_replaced, frozen

    unet, model = pipe.unet, ModelAdapter(pipe)
    regions = {n: m for n, m in unet.named_modules() if type(m).__name__ == cls}
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = {n: torch.compile(m.forward, backend="aot_eager", dynamic=False) for n, m in regions.items()}
    cond = model.null(1)
    embeds = cond.embeds.clone().requires_grad_(True)
    z, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    with contextlib.ExitStack() as stack:
        stack.enter_context(frozen(unet))
        if managed:
            stack.enter_context(get_manager(pipe).applied(LossMaps(attention_plan(pipe).map_selector())))
        for name, module in regions.items():
            stack.enter_context(_forward_replaced(module, compiled[name]))
        for _ in range(2):
            out = model(z, t, cond.with_embeds(embeds))
            torch.autograd.grad(out.sum(), embeds)
    counters = torch._dynamo.utils.counters
    return {"instances": len(regions), "unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging

    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)  # --help; it takes no options

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    torch.manual_seed(0)
    pipe = sd15_layout_pipeline()
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 64  # count every graph (the default stops compiling at 8)
    print("| block class | instances | attention processors | unique graphs (compilations) | graph breaks |")
    print("| --- | --- | --- | --- | --- |")
    for cls in CLASSES:
        for managed in (False, True):
            r = count(pipe, cls, managed)
            print(f"| {cls} | {r['instances']} | {'attncraft manager + DPL loss maps' if managed else 'stock'} | "
                  f"{r['unique_graphs']} | {r['graph_breaks']} |")
    print(f"\nCounted with dynamo's recompile_limit raised to 64; at its default ({limit} graphs per function) the "
          "blocks past it run eagerly.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
