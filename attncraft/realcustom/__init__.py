"""RealCustom: subject customisation by narrowing a real word (Huang et al., CVPR 2024).

A reference image defines the subject; a real word of the prompt ("star", "toy") is narrowed to
that subject only where the word's cross-attention is strong, so the rest of the prompt keeps full
control of the image. What lives where:

* :mod:`.modules` - the trainable parts: the projector (image-encoder features -> the UNet's
  cross-attention width), the paper's adaptive scoring module, the visual key/value projections
  of every cross-attention layer, held together by :class:`RealCustomAdapter`, with strict
  safetensors saving and loading;
* :mod:`.encoder` - :class:`ImageEncoder`, any transformers vision model with hidden states
  (CLIP, SigLIP, DINOv2...), the Shapes CLIP vision tower by default;
* :mod:`.training` - the training loop for the trainable parts on any dataset of (image, caption,
  subject word, subject image), everything else frozen; ``python -m attncraft.realcustom.training``
  trains on a folder described by a JSON-lines file;
* the attention hooks (masked visual cross-attention, the word-map reader and the adaptive mask)
  are in :mod:`attncraft.attention_processors.realcustom`, the pipelines
  (:class:`~attncraft.pipelines.realcustom.RealCustomPipeline`,
  :class:`~attncraft.pipelines.realcustom.RealCustomXLPipeline`) in :mod:`attncraft.pipelines.realcustom`,
  the Shapes training run and its measurement in :mod:`attncraft.shapes.training.realcustom`.

Which RealCustom: the paper's method (adaptive scoring module, three-branch guidance of Eq. 13) is
the default; the official release's choices (no scoring module, two-branch guidance with the
encoding of an all-zero image as the unconditional visual input) are options.
"""

from attncraft.realcustom.modules import (
    AdaptiveScoringModule,
    RealCustomAdapter,
    RealCustomConfig,
    VisualProjector,
    load_adapter,
    save_adapter,
)

__all__ = [
    "AdaptiveScoringModule",
    "RealCustomAdapter",
    "RealCustomConfig",
    "VisualProjector",
    "load_adapter",
    "save_adapter",
]
