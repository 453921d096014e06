"""DPL's ``compile`` option: the optimisation passes' UNet calls under torch.compile.

The compiled runs use the ``aot_eager`` backend (dynamo capture and AOT autograd, no code
generation): it traces the same aten operations, so parity with eager is exact up to float32
rounding of reordered decompositions (atol 1e-6; inductor's fused kernels round differently and are
measured on the GPU by ``benchmarks/bench_dpl.py``, variant ``ours_compiled``); inductor itself takes
minutes to compile on two CPU cores.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import tiny_models as tm
from attncraft.attention_processors import get_manager
from attncraft.attention_processors.dpl import DPLConfig, LossMaps
from attncraft.attention_processors.prompt_to_prompt import attention_plan
from attncraft.errors import InputError
from attncraft.pipelines import NullTextSettings
from attncraft.pipelines import inversion as inversion_module
from attncraft.pipelines.dpl import real_image_edit_pipeline
from attncraft.pipelines.inversion import ModelAdapter, frozen

SOURCE = "a red circle and a blue square"
NOUNS = ["circle", "square"]


@pytest.fixture
def quick_backend(monkeypatch):
    monkeypatch.setattr(inversion_module, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def edit_pipe():
    return real_image_edit_pipeline(tm.sd_pipeline())


@pytest.mark.slow
def test_compiled_passes_give_the_eager_embeddings(edit_pipe, quick_backend):
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_inference_steps=2, guidance_scale=3.0, null_text=NullTextSettings(inner_steps=3, early_stop=False))
    runs = {mode: edit_pipe.invert(image, SOURCE, nouns=NOUNS, dpl=DPLConfig(token_steps=3, lr=0.05, compile=mode), **kwargs)
            for mode in (None, "default")}
    eager, compiled = runs[None], runs["default"]
    assert int(compiled.extras["dpl_updates"].sum()) == int(eager.extras["dpl_updates"].sum()) == 6
    assert not torch.equal(eager.token_vectors[0][0], eager.token_vectors[0][1])  # the vectors moved
    torch.testing.assert_close(compiled.null_embeddings, eager.null_embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled.token_vectors[0], eager.token_vectors[0], rtol=0, atol=1e-6)
    assert compiled.settings["dpl"]["compile"] == "default" and eager.settings["dpl"]["compile"] is None
    # one graph per pass (token maps, their losses, null-text), no graph break, no recompilation across the steps
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0


def _convolutions(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "aten::convolution")


def test_compiled_token_pass_still_stops_at_the_loss_layers(quick_backend):
    pipe = tm.sd_pipeline()
    manager = get_manager(pipe)
    collector = LossMaps(attention_plan(pipe).map_selector())
    loss_layers = [layer.name for layer in manager.layers_for(collector)]
    eager, compiled = ModelAdapter(pipe), ModelAdapter(pipe, compile="default")
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(1, 4, 16, 16, generator=g), torch.tensor(500)
    cond = eager.null(1)
    embeds = cond.embeds.clone().requires_grad_(True)
    maps = {}
    with frozen(pipe.unet), manager.applied(collector):
        for name, model in (("eager", eager), ("compiled", compiled)):
            model.observe(z, t, cond.with_embeds(embeds), loss_layers)  # the first compiled call compiles
            collector.reset()

            def run(model=model):
                model.observe(z, t, cond.with_embeds(embeds), loss_layers)

            count = _convolutions(run)
            maps[name] = collector.aggregate()
            (grad,) = torch.autograd.grad(maps[name].square().sum(), embeds)
            maps[name + "_grad"] = grad
            maps[name + "_convs"] = count
            collector.reset()
        full = _convolutions(lambda: eager(z, t, cond.with_embeds(embeds)))
    # conv_out and the up block after the loss layers never run, compiled or not
    assert maps["compiled_convs"] <= maps["eager_convs"] < full
    torch.testing.assert_close(maps["compiled"], maps["eager"], rtol=0, atol=1e-6)
    torch.testing.assert_close(maps["compiled_grad"], maps["eager_grad"], rtol=0, atol=1e-6)
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0


def test_compile_option_is_validated(edit_pipe):
    DPLConfig(compile="reduce-overhead").validate()
    with pytest.raises(InputError) as info:
        DPLConfig(compile="fast").validate()
    assert "\n" not in str(info.value) and "'fast'" in str(info.value) and "reduce-overhead" in str(info.value)
    with pytest.raises(InputError):
        edit_pipe.invert(torch.rand(3, 32, 32), SOURCE, nouns=NOUNS, dpl=DPLConfig(compile="Default"), num_inference_steps=2)
    with pytest.raises(InputError):
        ModelAdapter(edit_pipe, compile="cudagraphs")


def test_compile_with_inductor_is_refused_on_the_cpu(edit_pipe, monkeypatch):
    """Inductor's CPU gradients for embedding-only backward calls are wrong (module docstring of
    DPLConfig.compile): the option says so in one line instead of returning wrong embeddings."""
    from attncraft.errors import InputError
    from attncraft.pipelines import inversion as inversion_module

    monkeypatch.setattr(inversion_module, "COMPILE_BACKEND", "inductor")  # the library's default
    with pytest.raises(InputError, match="refused on the CPU"):
        inversion_module.ModelAdapter(edit_pipe, compile="default")
