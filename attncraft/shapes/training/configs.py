"""Training configurations: ``full`` (one H200, minutes), ``finetune`` (``full`` with the UNet
settings of a warm start), ``finetune-text`` (``finetune`` with the text encoder trained too),
``finetune-text-cpu`` (the same at CPU size), ``motion-cpu`` (paired motion experiments on a CPU),
``full-mesh`` (the mesh-reading CLIP fine-tune, one H200) and ``smoke`` (CPU, seconds, used by tests).

The full configurations use the shipped architectures of :mod:`attncraft.shapes.models`; the smoke
ones shrink the widths (same classes, same code paths) so that each stage runs in a few seconds on
two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ClipTrain:
    batch: int = 1024
    lr: float = 1e-3
    warmup: int = 300
    final_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    pool: int = 131072
    chunk: int = 1024
    refresh_every: int = 4
    workers: int = 6
    caption_omits: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)
    reserve_s: float = 15.0  # kept at the end of the budget for saving
    pool_fill_limit_s: float = 40.0
    # share of each batch drawn from renders of painted procedural meshes (0 = the 2-D world only)
    mesh_fraction: float = 0.0
    mesh_pool: int = 65536
    mesh_refresh_every: int = 4
    mesh_workers: int = 4
    # vision layers before this index (and the patch embedding) stay frozen (None: all trained)
    train_vision_from: int | None = None
    # architecture overrides (None: the shipped architecture)
    text_overrides: dict[str, Any] | None = None
    vision_overrides: dict[str, Any] | None = None
    max_steps: int | None = None
    log_every_s: float = 15.0


@dataclass
class VaeTrain:
    batch: int = 256
    lr: float = 1e-3
    warmup: int = 200
    final_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    reserve_s: float = 25.0
    kl_weight: float = 1e-5  # on the per-element mean KL, against per-pixel mean L1 + MSE
    object_weight: float = 4.0  # object pixels weigh 1 + object_weight
    edge_weight: float = 1.0  # L1 of the error's pixel differences (keeps the surface patterns)
    reader_scenes: int = 256  # held-out scenes whose reconstructions the reader checks at the end
    pool: int = 65536
    chunk: int = 1024
    refresh_every: int = 8
    workers: int = 4
    pool_fill_limit_s: float = 30.0
    scale_samples: int = 4096
    overrides: dict[str, Any] | None = None
    max_steps: int | None = None
    log_every_s: float = 15.0


@dataclass
class UnetTrain:
    batch: int = 512
    lr: float = 5e-4
    warmup: int = 500
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_gamma: float = 6.94
    pool: int = 262144
    chunk: int = 1024
    refresh_every: int = 16
    workers: int = 10
    caption_omits: tuple[float, ...] = (0.0, 0.0, 0.0, 0.3)
    caption_relation: float | None = None  # share of relation captions of multi-object scenes (None: grammar's 0.4)
    caption_vertical: float = 0.5  # share of vertical relations for objects on a diagonal (either would hold)
    # the relation-contrast term (common.caption_contrast): its weight (0: off) and relative margin; an image's
    # loss under its caption with the relation words flipped must exceed the true caption's by the margin
    contrast: float = 0.0
    contrast_margin: float = 0.1
    high_noise_share: float = 0.0  # share of each batch whose timestep comes from the upper half (t >= 500)
    # joint training of the text encoder (off: frozen); see FINETUNE_TEXT for the reasons
    train_text: bool = False
    text_lr: float = 1e-4  # its own peak learning rate (same cosine as the UNet's)
    text_warmup: int = 300  # its own warm-up, in steps
    text_last_layers: int | None = None  # train the last N transformer layers (None: all of them)
    text_embeddings: bool = True  # train the token embeddings (only rows of words the captions use move)
    text_weight_decay: float = 0.0  # on the trained layers (the token embeddings never decay)
    reserve_s: float = 20.0
    pool_fill_limit_s: float = 45.0
    probe_examples: int = 2048
    overrides: dict[str, Any] | None = None
    max_steps: int | None = None
    log_every_s: float = 15.0


@dataclass
class MotionTrain:
    """The shapes motion adapter (see :mod:`attncraft.shapes.training.motion` for the reasons)."""

    batch: int = 48  # clips of `frames` frames per step; long steps take batch * frames // long_frames clips
    frames: int = 16
    long_frames: int = 32
    long_fraction: float = 0.2  # share of steps on long clips (the adapter's positions 16..31)
    lr: float = 1e-3
    warmup: int = 200
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_gamma: float = 6.94
    num_objects: tuple[int, int] = (1, 2)
    caption_omits: tuple[float, ...] = (0.0, 0.0, 0.0, 0.3)
    image_size: int = 64
    pool: int = 24576  # clips of `long_frames` frames, as VAE latents
    chunk: int = 512
    refresh_every: int = 40
    workers: int = 4
    reserve_s: float = 15.0
    pool_fill_limit_s: float | None = 40.0
    probe_examples: int = 512
    heads: int = 4
    # the motion text path (attncraft/video/motion_text_path.py): None (the spatial layers frozen) or
    # "cross-kv" (their cross-attention key / value projections trained with the motion modules)
    text_path: str | None = None
    text_path_lr: float = 2e-4  # its own peak learning rate (a fifth of the motion modules': it moves trained weights)
    text_path_warmup: int = 200
    # the caption-contrast term (common.caption_contrast): its weight (0: off) and relative margin; each
    # clip's loss with its caption's motions turned the other way must exceed the true caption's by the margin
    contrast: float = 0.0
    contrast_margin: float = 0.1
    # the lowest timestep the contrast covers (0: all); above 0, the reversed-caption pass runs on the clips of
    # largest timestep only (common.contrast_rows): a share of the FLOPs (on a launch-bound GPU, not of the time)
    contrast_min_t: int = 0
    # the loss moved towards what changes between frames (motion.frame_weighted_mse): the weight of the
    # v-error's deviation from its mean over the frames (1: the plain loss), and of the positions where the
    # clean clip changes (0: off)
    frame_deviation_weight: float = 1.0
    motion_region_weight: float = 0.0
    overrides: dict[str, Any] | None = None  # MotionAdapter kwargs over the ones derived from the UNet
    max_steps: int | None = None
    log_every_s: float = 15.0


@dataclass
class CtgmTrain:
    """CTGM on the Shapes motion model (see :mod:`attncraft.shapes.training.ctgm` for the reasons)."""

    mode: str = "tii+tar"
    sites: str = "part"
    batch: int = 32  # clips of `frames` frames per step
    frames: int = 16
    lr: float = 1e-3
    warmup: int = 100
    final_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_gamma: float = 6.94
    num_objects: tuple[int, int] = (1, 2)
    caption_omits: tuple[float, ...] = (0.0, 0.0, 0.0, 0.3)
    image_size: int = 64
    pool: int = 8192  # clips, as VAE latents
    chunk: int = 256
    refresh_every: int = 20
    workers: int = 4
    reserve_s: float = 15.0
    pool_fill_limit_s: float | None = 30.0
    probe_examples: int = 256
    max_steps: int | None = None
    log_every_s: float = 15.0


@dataclass
class EvalConfig:
    clip_scenes: int = 1000  # held-out single-object scenes for zero-shot CLIP
    mesh_scenes: int = 1000  # held-out painted meshes for the mesh zero-shot table of the CLIP
    sd_one: int = 500  # one-object prompts
    sd_two: int = 500  # two-object prompts
    sweep_prompts: int = 128  # prompts per (scheduler, guidance) in the default-sampler sweep
    sweep_schedulers: tuple[str, ...] = ("DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler")
    sweep_guidance: tuple[float, ...] = (3.0, 5.0, 7.5)
    steps: int = 25
    relation_prompts: int = 200  # prompts per relation word (7 words)
    relation_probe: int = 700  # held-out captions of the relation flip probe (0: none)
    gen_batch: int = 256
    score_workers: int = 12
    save_grid: bool = True
    # shapes motion (``--what motion``)
    motion_one: int = 256  # held-out one-object, one-motion prompts (the targets)
    motion_seq: int = 256  # held-out one-object, two-motion prompts ("moves right, then turns blue")
    motion_sweep_prompts: int = 64  # per guidance scale, on a separate prompt set; the best becomes the default
    motion_sweep_guidance: tuple[float, ...] = (3.0, 5.0, 7.5)
    motion_baseline: int = 64  # the same prompts without motion modules (the image model per frame)
    motion_frames: int = 16
    motion_batch: int = 64


SMOKE_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
SMOKE_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, projection_dim=32)
SMOKE_VAE = dict(block_out_channels=(8, 16, 16), norm_num_groups=4)
SMOKE_UNET = dict(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=(1, 1), norm_num_groups=4)


@dataclass
class StageConfigs:
    clip: ClipTrain = field(default_factory=ClipTrain)
    vae: VaeTrain = field(default_factory=VaeTrain)
    unet: UnetTrain = field(default_factory=UnetTrain)
    motion: MotionTrain = field(default_factory=MotionTrain)
    ctgm: CtgmTrain = field(default_factory=CtgmTrain)
    eval: EvalConfig = field(default_factory=EvalConfig)


FINETUNE_UNET = dict(warmup=200, caption_relation=0.8, caption_vertical=0.75, high_noise_share=0.5,
                     pool_fill_limit_s=20.0, refresh_every=8)
"""``finetune``: the full UNet configuration for a warm start from a trained shapes SD (``--init``)
that must learn the direction of vertical relations, which the shipped UNet ignores:

* four captions in five of a multi-object scene place its objects by a relation (grammar default:
  two in five), and objects on a diagonal get the vertical relation three times in four (default:
  one in two): vertical relations go from 13 % to 33 % of the captions;
* half of each batch draws its timestep from the upper half of the schedule (t >= 500), where the
  layout (which object goes where) is decided; the other half stays uniform;
* the peak learning rate of the original run (5e-4: a skill the weights lack, not a polish; the
  cosine decay to 10 % and the EMA bring it back down), a short warm-up, a quicker first pool fill."""


FINETUNE_TEXT = dict(FINETUNE_UNET, train_text=True)
"""``finetune-text``: ``finetune`` with the text encoder trained jointly with the UNet (the cure of
vertical relations: the frozen encoder moves its states by 3.7 % when "above" is swapped for "below",
against 11.7 % for "left of" / "right of", ``benchmarks/probe_text_relations.py``):

* **what is trained**: every transformer layer, the final layer norm and the token embeddings; the
  position embeddings stay frozen (shared by every caption, they carry no word). The token embeddings
  of "above" and "below" are already nearly orthogonal (distance 0.39 for norms of 0.39-0.40; "left" /
  "right": 0.52), so the input tells the words apart and the layers wash the difference out: the fix
  is in the layers, and which of the four does the washing is not known, so all four (790 k
  parameters) are trained. The embeddings get no weight decay, so only the rows of words the captions
  use move (AdamW leaves a row with zero gradient bit for bit as it was).
* **its own learning rate and warm-up**: peak 1e-4, a fifth of the UNet's, reached after 300 steps
  (the UNet's warm-up is 200): the UNet settles first, then the encoder moves slowly enough for the
  UNet to follow it; the same cosine decay to 10 %; no weight decay on the layers (a pull towards
  zero, not towards the weights every other part was trained against).
* **colour, shape, pattern, size and background words stay supervised**: the caption mix is
  ``finetune``'s (every caption names the objects' colour, shape and pattern; one in five of the
  multi-object ones and every one-object caption states no relation), and the caption dropout is
  applied to the token ids (the empty prompt goes through the encoder being trained, as at sampling).
* the EMA averages the UNet and the encoder together (the saved pair was averaged over the same window).
"""


FINETUNE_TEXT_CPU = dict(FINETUNE_TEXT, batch=64, pool=8192, chunk=256, refresh_every=16, workers=1,
                         pool_fill_limit_s=150.0, probe_examples=1024, reserve_s=30.0, log_every_s=60.0)
"""``finetune-text-cpu``: ``finetune-text`` at a size two CPU cores can run in under an hour (the test of the
cure without a GPU): the same learning rates, warm-ups, caption mix and EMA, batches of 64 instead of 512 and a
pool of 8,192 scenes (a refresh of 256 every 16 steps). In 45 minutes it sees about a tenth of the examples of
the 6-minute GPU run, so it says whether training the text tower moves vertical relations, not how far the GPU
run will take them."""


MOTION_CPU = dict(batch=4, long_fraction=0.0, lr=2e-4, warmup=50, text_path_warmup=50, pool=1024, chunk=64,
                  refresh_every=25, workers=1, pool_fill_limit_s=240.0, probe_examples=128, log_every_s=60.0,
                  reserve_s=30.0)
"""``motion-cpu``: the motion stage at a size two CPU cores can run in half an hour, for paired experiments
that continue a trained adapter (``--init``): batches of 4 clips of 16 frames, a pool of 1,024 clips, a
fine-tune's peak lr (2e-4, the text path's too) after 50 steps, no 32-frame steps, a 128-clip probe. It
compares options at equal steps (e.g. ``--text-path cross-kv`` against none); it does not train an
adapter to ship."""


MESH_FINE_TUNE = dict(mesh_fraction=0.5, lr=3e-4, warmup=100, pool=65536, mesh_pool=65536, workers=8, mesh_workers=6,
                      mesh_refresh_every=6, pool_fill_limit_s=25.0, train_vision_from=None)
"""``full-mesh``: the shipped CLIP fine-tuned (``--init``) on half 2-D scenes, half painted-mesh renders; the
whole vision tower is trained, as in the shipped second to fourth fine-tunes (``--train-vision-from 5`` keeps the
patch embedding and the first 5 of 6 layers frozen: the first mesh fine-tune's recipe, which kept the penultimate
states bit for bit). RealCustom reads its own copy of the earlier tower (``shapes-realcustom/image_encoder``), so
nothing depends on a frozen trunk."""


MESH_FINE_TUNE_CPU = dict(MESH_FINE_TUNE, batch=256, warmup=30, pool=8192, mesh_pool=4096, chunk=256, workers=1,
                          mesh_workers=1, mesh_refresh_every=2, refresh_every=4, pool_fill_limit_s=None, reserve_s=10.0,
                          log_every_s=60.0)
"""``mesh-cpu``: ``full-mesh`` at a size two CPU cores can run in a quarter of an hour, for paired experiments
from the shipped CLIP (``--init``), e.g. every vision layer trained against the frozen trunk
(``--train-vision-from 5``): batches of 256 (half meshes), pools of 8,192 scenes and 4,096 meshes, one worker
each. It compares options at equal steps; it does not train a CLIP to ship."""


def get_configs(name: str) -> StageConfigs:
    if name == "full":
        return StageConfigs()
    if name == "finetune":
        return StageConfigs(unet=UnetTrain(**FINETUNE_UNET))
    if name == "finetune-text":
        return StageConfigs(unet=UnetTrain(**FINETUNE_TEXT))
    if name == "finetune-text-cpu":
        return StageConfigs(unet=UnetTrain(**FINETUNE_TEXT_CPU))
    if name == "motion-cpu":
        return StageConfigs(motion=MotionTrain(**MOTION_CPU))
    if name == "full-mesh":
        return StageConfigs(clip=ClipTrain(**MESH_FINE_TUNE))
    if name == "mesh-cpu":
        return StageConfigs(clip=ClipTrain(**MESH_FINE_TUNE_CPU))
    if name == "smoke":
        return StageConfigs(
            clip=ClipTrain(batch=32, lr=3e-3, warmup=5, pool=512, chunk=128, refresh_every=8, workers=0,
                           reserve_s=0.0, text_overrides=dict(SMOKE_TEXT), vision_overrides=dict(SMOKE_VISION),
                           max_steps=40, log_every_s=1e9, weight_decay=0.0, mesh_pool=128, mesh_refresh_every=16),
            vae=VaeTrain(batch=4, lr=3e-3, warmup=5, pool=256, chunk=64, refresh_every=8, workers=0, reserve_s=0.0,
                         scale_samples=64, overrides=dict(SMOKE_VAE), max_steps=30, log_every_s=1e9, reader_scenes=8),
            unet=UnetTrain(batch=8, lr=2e-3, warmup=5, pool=256, chunk=64, refresh_every=8, workers=0, reserve_s=0.0,
                           probe_examples=32, text_lr=5e-4, text_warmup=5,
                           overrides=dict(SMOKE_UNET), max_steps=30, log_every_s=1e9),
            motion=MotionTrain(batch=2, frames=8, long_frames=12, long_fraction=0.25, lr=3e-3, warmup=3,
                               image_size=32, pool=16, chunk=8, refresh_every=6, workers=0, reserve_s=0.0,
                               pool_fill_limit_s=None, probe_examples=4, heads=2, max_steps=12, log_every_s=1e9),
            ctgm=CtgmTrain(batch=2, frames=3, lr=3e-3, warmup=3, image_size=32, pool=8, chunk=8, refresh_every=6,
                           workers=0, reserve_s=0.0, pool_fill_limit_s=None, probe_examples=2, max_steps=8,
                           log_every_s=1e9),
            eval=EvalConfig(clip_scenes=32, mesh_scenes=24, sd_one=4, sd_two=4, sweep_prompts=2, relation_prompts=2,
                            relation_probe=14,
                            sweep_schedulers=("DPMSolverMultistepScheduler", "DDIMScheduler"), sweep_guidance=(5.0,),
                            steps=2, gen_batch=8, score_workers=0, save_grid=False,
                            motion_one=2, motion_seq=2, motion_sweep_prompts=1, motion_sweep_guidance=(3.0,),
                            motion_baseline=1, motion_frames=8, motion_batch=2),
        )
    raise ValueError(f"unknown config {name!r} (smoke, full, finetune, finetune-text, finetune-text-cpu, motion-cpu, full-mesh or mesh-cpu)")
