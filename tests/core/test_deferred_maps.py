"""Deferred, batched maps for after-the-forward observers (``attention_processors/deferred_maps.py``)."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tiny_models as tm
from attncraft.attention_processors import AttentionStore, AttentionTechnique, get_manager, select_layers
from attncraft.attention_processors.deferred_maps import DeferredMaps


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


class ImmediateStore(AttentionStore):
    """The same store, made to take the per-layer path (maps computed inside each layer)."""

    reads_maps_after_forward = False


class LayerLog(AttentionTechnique):
    """An after-the-forward observer that logs what it is handed."""

    edits_maps = False
    reads_maps_after_forward = True

    def __init__(self, selector):
        super().__init__(selector)
        self.batches: list[tuple[list[str], tuple[int, ...], list[int]]] = []

    def needs_maps(self, layer):
        return True

    def observe_maps(self, calls, probs):
        self.batches.append(([c.layer.name for c in calls], tuple(probs.shape), [c.step_index for c in calls]))


def _sample(unet, steps=(999, 600, 200), cross_dim=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=g)
    e = torch.randn(2, 77, cross_dim or unet.config.cross_attention_dim, generator=g)
    schedule = torch.tensor(steps)
    with torch.inference_mode():
        for t in schedule:
            unet(x, t, encoder_hidden_states=e)
    return x, e


@pytest.mark.parametrize("per_step", [False, True])
def test_deferred_store_records_what_the_per_layer_path_records(per_step):
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    manager.context.cfg_batched = True
    results = {}
    for cls in (AttentionStore, ImmediateStore):
        store = cls(select_layers(kinds="cross"), per_step=per_step)
        with manager.applied(store):
            processors = [manager.processor(layer.name) for layer in manager.layers_for(store)]
            assert all(p._defer_maps is (cls is AttentionStore) for p in processors)
            _sample(unet)
            assert manager.context.deferred is None or len(manager.context.deferred) == 0
        results[cls.__name__] = (store.layer_maps(), {n: store.recorded_count(n) for n in store.layer_names})
    deferred, immediate = results["AttentionStore"], results["ImmediateStore"]
    assert deferred[1] == immediate[1] and set(deferred[1].values()) == {3}
    assert deferred[0].keys() == immediate[0].keys() and len(deferred[0]) == 4
    for name, maps in immediate[0].items():
        torch.testing.assert_close(deferred[0][name], maps, rtol=1e-6, atol=1e-7)
        rows = deferred[0][name].sum(-1)
        torch.testing.assert_close(rows, torch.ones_like(rows))
    # the hook was removed with the store, and the queue with it
    assert manager._post_handle is None and manager.context.deferred is None


def test_layers_of_one_shape_are_computed_in_one_batch():
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    log = LayerLog(select_layers(kinds="cross"))
    with manager.applied(log):
        _sample(unet)
    names = [layer.name for layer in manager.layers_for(log)]
    shapes = collections.Counter(manager.layers[n].resolution((32, 32)) for n in names)
    # one batch per distinct layer shape per UNet call, every layer once per call, steps 0, 1, 2
    assert len(log.batches) == 3 * len(shapes)
    seen = collections.Counter(n for batch in log.batches for n in batch[0])
    assert seen == {n: 3 for n in names}
    for batch_names, shape, steps in log.batches:
        assert shape[0] == len(batch_names) and shape[1] == 2  # (layers, batch, heads, queries, keys)
        assert len(set(steps)) == 1
    assert sorted({b[2][0] for b in log.batches}) == [0, 1, 2]


def test_deferred_capture_issues_one_softmax_per_shape_instead_of_one_per_layer():
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    counts = {}
    for cls in (AttentionStore, ImmediateStore):
        store = cls(select_layers(kinds="cross"))
        with manager.applied(store):
            x, e = _sample(unet, steps=(999,))
            counter = OpCounter()
            with torch.inference_mode(), counter:
                unet(x, torch.tensor(500), encoder_hidden_states=e)
        counts[cls.__name__] = counter.ops
        n_layers = len(manager.layers_for(store))
    stock = tm.sd_unet().eval()
    stock_counter = OpCounter()
    with torch.inference_mode(), stock_counter:
        stock(x, torch.tensor(500), encoder_hidden_states=e)
    shapes = len({manager.layers[layer.name].resolution((32, 32)) for layer in manager.layers_for(store)})
    assert counts["ImmediateStore"]["softmax"] == n_layers
    assert counts["AttentionStore"]["softmax"] == shapes < n_layers
    extra = {k: sum(c.values()) - sum(stock_counter.ops.values()) for k, c in counts.items()}
    assert 0 < extra["AttentionStore"] < extra["ImmediateStore"]


def test_a_small_group_cap_splits_batches_with_the_same_result():
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    maps = []
    for cap in (DeferredMaps.max_group_bytes, 1):
        store = AttentionStore(select_layers(kinds="cross"), cond_only=False, reduce_heads=False)
        with manager.applied(store):
            manager.context.deferred.max_group_bytes = cap
            _sample(unet, steps=(999, 500))
        maps.append(store.layer_maps())
    for name in maps[0]:
        torch.testing.assert_close(maps[0][name], maps[1][name], rtol=0, atol=0)


def test_an_observer_that_must_see_maps_inside_the_layer_keeps_the_per_layer_path():
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    store = AttentionStore(select_layers(kinds="cross"))
    eager = ImmediateStore(select_layers(kinds="cross"))
    with manager.applied(store, eager):
        assert not any(manager.processor(layer.name)._defer_maps for layer in manager.layers_for(store))
        _sample(unet, steps=(999,))
    assert store.layer_names and set(store.layer_names) == set(eager.layer_names)


def test_a_failed_forward_drops_its_half_recorded_maps():
    unet = tm.sd_unet().eval()
    manager = get_manager(unet)
    log = LayerLog(select_layers(kinds="cross"))

    def boom(module, args, output):
        raise RuntimeError("boom")

    handle = unet.up_blocks[-1].register_forward_hook(boom)
    with manager.applied(log):
        with pytest.raises(RuntimeError, match="boom"):
            _sample(unet, steps=(999,))
        assert len(manager.context.deferred) == 0
        handle.remove()
        _sample(unet, steps=(999,))
    assert all(steps == [0] * len(steps) for _, _, steps in log.batches)
    assert sum(len(b[0]) for b in log.batches) == len(manager.layers_for(log))
