"""Attention-processor core: the processor, technique hooks, layer selection, step tracking, store.

Where things live:

* :mod:`.processor` - :class:`AttncraftAttnProcessor`, ``AttnProcessor2_0``-equivalent with hooks;
* :mod:`.technique` - :class:`AttentionTechnique`, the base class of every technique;
* :mod:`.layers`, :mod:`.selection` - what each attention layer is, and choosing layers;
* :mod:`.context`, :mod:`.step_tracker` - run state (step, timestep, latent size, frames, CFG);
* :mod:`.manager` - installing/removing techniques on a UNet or pipeline;
* :mod:`.store` - :class:`AttentionStore`, memory-bounded recording of maps;
* :mod:`.backends` - SDPA or xformers for layers that need no map.
"""

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.layers import LayerInfo, discover_layers
from attncraft.attention_processors.manager import (
    AttentionManager,
    apply_techniques,
    get_manager,
    install_techniques,
)
from attncraft.attention_processors.processor import AttncraftAttnProcessor
from attncraft.attention_processors.selection import (
    ALL_LAYERS,
    CROSS_ATTENTION,
    SELF_ATTENTION,
    TEMPORAL_ATTENTION,
    LayerSelector,
    select_layers,
)
from attncraft.attention_processors.store import AttentionStore
from attncraft.attention_processors.technique import EDIT_ORDER, OBSERVE_ORDER, AttentionTechnique

__all__ = [
    "ALL_LAYERS",
    "CROSS_ATTENTION",
    "EDIT_ORDER",
    "OBSERVE_ORDER",
    "SELF_ATTENTION",
    "TEMPORAL_ATTENTION",
    "AttentionCall",
    "AttentionContext",
    "AttentionManager",
    "AttentionStore",
    "AttentionTechnique",
    "AttncraftAttnProcessor",
    "LayerInfo",
    "LayerSelector",
    "apply_techniques",
    "discover_layers",
    "get_manager",
    "install_techniques",
    "select_layers",
]
