python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# GPU job of the shapes motion adapter: an AnimateDiff MotionAdapter trained on world videos with shapes
# SD frozen (assets/models/shapes-sd, or SD_DIR), then its evaluation by the reader. Wall time ~8 min
# on one H200 (training 5.6 min including start-up and the pool fill, evaluation <= 2 min).
#
#   run from the repository root, carrying .whl (the diffusers wheel):  bash tools/gpu/train_shapes_motion.sh
#
# Files written to $OUT (7; each < 16 MiB, none in a sub-folder):
#   shapes-motion.tar                 tar of the shapes-motion folder (MotionAdapter, fp16, ~5.3 MB; with
#                                     its training_log.json and attncraft_defaults.json)
#   motion_train.log motion_eval.log  logs (environment at the top of the training one)
#   motion_eval.json motion_eval.md   reader metrics: single-motion prompts (targets), sequential prompts
#   motion_samples.png                contact sheets of 8 single-motion videos (one row each)
#   motion_samples.gif                the same 8 videos side by side
# Unpack into the repository:  tar -xf shapes-motion.tar -C assets/models
#
# Environment overrides (CPU dry run: SHAPES_DEVICE=cpu SHAPES_CONFIG=smoke SD_DIR=<a small SD folder>):
#   SHAPES_DEVICE, SHAPES_CONFIG, SD_DIR, MIN_TRAIN, MIN_EVAL, WORK, DONE (touched when finished),
#   INIT=DIR (continue from an adapter folder), COMPILE=1 (torch.compile the motion UNet),
#   TEXT_PATH=cross-kv (train the motion text path too: the spatial cross-attention key/value projections,
#   saved as text_path.safetensors in the adapter folder and applied by the loader; ~0.56 MB; see
#   attncraft/video/motion_text_path.py), TEXT_PATH_LR (its peak lr, default 2e-4), CONTRAST=W (the
#   caption-contrast term with weight W, e.g. 0.5: each clip's loss under its caption with the motions
#   reversed must exceed the true caption's by 10 %; about twice the step's cost, so half the steps),
#   CONTRAST_MIN_T=T (the contrast on the clips at timesteps >= T only, e.g. 800; still ~1.8x the step's cost
#   on an H200, where the small UNet is launch-bound), FRAME_DEVIATION_WEIGHT=W (the part of the v-error that
#   differs between frames weighted W, 1 = plain), MOTION_REGION_WEIGHT=W (extra weight W where the clip changes).
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-motion}
WORK=${WORK:-/tmp/shapes-motion}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full}
SD_DIR=${SD_DIR:-assets/models/shapes-sd}
MIN_TRAIN=${MIN_TRAIN:-5.6}
MIN_EVAL=${MIN_EVAL:-2.0}
INIT=${INIT:-}
DONE=${DONE:-}
EXTRA=()
[ -n "$INIT" ] && EXTRA+=(--init "$INIT")
[ "${COMPILE:-0}" = 1 ] && EXTRA+=(--compile)
[ -n "${TEXT_PATH:-}" ] && EXTRA+=(--text-path "$TEXT_PATH")
[ -n "${TEXT_PATH_LR:-}" ] && EXTRA+=(--text-path-lr "$TEXT_PATH_LR")
[ -n "${CONTRAST:-}" ] && EXTRA+=(--contrast "$CONTRAST")
[ -n "${CONTRAST_MIN_T:-}" ] && EXTRA+=(--contrast-min-t "$CONTRAST_MIN_T")
[ -n "${FRAME_DEVIATION_WEIGHT:-}" ] && EXTRA+=(--frame-deviation-weight "$FRAME_DEVIATION_WEIGHT")
[ -n "${MOTION_REGION_WEIGHT:-}" ] && EXTRA+=(--motion-region-weight "$MOTION_REGION_WEIGHT")
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
T="python3 -m attncraft.shapes.training"
[ -f "$SD_DIR/model_index.json" ] || { echo "missing $SD_DIR/model_index.json (the frozen shapes SD)" | tee "$OUT/motion_train.log"; exit 2; }

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/motion_train.log" 2>&1

$T motion --config "$CFG" --device "$DEV" --seed 0 --minutes "$MIN_TRAIN" --sd "$SD_DIR" \
  --out "$WORK/shapes-motion" "${EXTRA[@]}" >> "$OUT/motion_train.log" 2>&1
RC_TRAIN=$?
RC_EVAL=1
if [ "$RC_TRAIN" = 0 ]; then
  $T evaluate --what motion --config "$CFG" --device "$DEV" --minutes "$MIN_EVAL" --sd "$SD_DIR" \
    --adapter "$WORK/shapes-motion" --out "$OUT" > "$OUT/motion_eval.log" 2>&1
  RC_EVAL=$?
  tar -C "$WORK" -cf "$OUT/shapes-motion.tar" shapes-motion
fi
echo "train exit $RC_TRAIN, eval exit $RC_EVAL"
tail -n 8 "$OUT/motion_train.log"; tail -n 8 "$OUT/motion_eval.log" 2>/dev/null
cat "$OUT/motion_eval.md" 2>/dev/null
ls -l "$OUT"
[ -n "$DONE" ] && touch "$DONE"
[ "$RC_TRAIN" = 0 ] && [ "$RC_EVAL" = 0 ]
