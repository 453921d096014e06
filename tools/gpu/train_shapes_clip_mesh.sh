#!/bin/bash
# The mesh-reading shapes CLIP on one H200, one command, <= 7 min wall: the shipped shapes CLIP fine-tuned on half
# 2-D world scenes, half renders of painted procedural meshes made on the GPU with the project's own renderer
# (config full-mesh), then the zero-shot evaluation (2-D table and mesh tables).
#
#   run from the repository root (nothing to carry: no diffusers or trimesh is needed):  bash tools/gpu/train_shapes_clip_mesh.sh
#
# Files written to $OUT (5; each < 16 MiB, none in a sub-folder):
#   shapes-clip.tar.00 shapes-clip.tar.01   split tar of the new shapes-clip folder
#   clip_mesh.log                           environment, training and evaluation log
#   shapes_eval_clip.json shapes_eval_clip.md   zero-shot accuracy: 2-D world and painted meshes
# Install into the repository:  rm -rf assets/models/shapes-clip && cat shapes-clip.tar.* | tar -xf - -C assets/models
#
# Environment overrides (a CPU dry run: SHAPES_DEVICE=cpu SHAPES_CONFIG=smoke INIT=<a smoke CLIP folder>):
# SHAPES_DEVICE, SHAPES_CONFIG, INIT, MIN_CLIP, MIN_EVAL, WORK, TRAIN_VISION_FROM (the first trained vision layer;
# default 0, all of them, as shipped; empty: the config's, also all; 5 keeps the first mesh fine-tune's frozen trunk). RealCustom reads its own copy of the earlier
# vision tower (assets/models/shapes-realcustom/image_encoder), so it needs no retraining after this one.
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-clip-mesh}
WORK=${WORK:-/tmp/shapes-clip-mesh}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full-mesh}
INIT=${INIT:-assets/models/shapes-clip}
MIN_CLIP=${MIN_CLIP:-5.4}
MIN_EVAL=${MIN_EVAL:-1.0}
EXTRA=()
TRAIN_VISION_FROM=${TRAIN_VISION_FROM-0}  # the shipped recipe: every vision layer trained; 5: the trunk frozen
[ -n "${TRAIN_VISION_FROM:-}" ] && EXTRA+=(--train-vision-from "$TRAIN_VISION_FROM")
EVAL_CFG=$([ "$CFG" = smoke ] && echo smoke || echo full)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
T="python3 -m attncraft.shapes.training"
T0=$(date +%s)
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/clip_mesh.log" 2>&1

$T clip --config "$CFG" --device "$DEV" --seed 0 --minutes "$MIN_CLIP" --init "$INIT" --mesh-fraction 0.5 "${EXTRA[@]}" \
   --out "$WORK/shapes-clip" >> "$OUT/clip_mesh.log" 2>&1
RC_CLIP=$?
echo "clip exit $RC_CLIP after $(( $(date +%s) - T0 )) s" | tee -a "$OUT/clip_mesh.log"
RC_EVAL=1
if [ "$RC_CLIP" = 0 ]; then
  $T evaluate --what clip --config "$EVAL_CFG" --device "$DEV" --minutes "$MIN_EVAL" --clip "$WORK/shapes-clip" \
     --out "$OUT" >> "$OUT/clip_mesh.log" 2>&1
  RC_EVAL=$?
  tar -C "$WORK" -cf - shapes-clip | split -b 16000k -d -a 2 - "$OUT/shapes-clip.tar."
fi
tail -n 12 "$OUT/clip_mesh.log"
cat "$OUT/shapes_eval_clip.md" 2>/dev/null
echo "wall $(( $(date +%s) - T0 )) s"
ls -l "$OUT"
[ "$RC_CLIP" = 0 ] && [ "$RC_EVAL" = 0 ]
