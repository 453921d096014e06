python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# GPU stage 1 of the Shapes models: shapes CLIP and the shapes VAE, trained side by side (two
# processes) on one H200, then the zero-shot CLIP evaluation. Wall time ~7.3 min (budgets below).
#
#   run from the repository root, carrying .whl (the diffusers wheel):  bash tools/gpu/train_shapes_stage1.sh
#
# Files written to $OUT (7; each < 16 MiB, none in a sub-folder):
#   shapes-clip.tar.00 shapes-clip.tar.01   split tar of the shapes-clip folder
#   shapes-vae.tar                          tar of the shapes-vae folder (stage 2 reads it)
#   stage1_clip.log stage1_vae.log          training logs (environment at the top of the CLIP one)
#   shapes_eval_clip.json shapes_eval_clip.md   zero-shot accuracy of shapes CLIP
# Unpack into the repository:  cat shapes-clip.tar.* | tar -xf - -C assets/models && tar -xf shapes-vae.tar -C assets/models
#
# Environment overrides (for a CPU dry run: SHAPES_DEVICE=cpu SHAPES_CONFIG=smoke): SHAPES_DEVICE,
# SHAPES_CONFIG, MIN_CLIP, MIN_VAE, MIN_EVAL, WORK.
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-stage1}
WORK=${WORK:-/tmp/shapes-stage1}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full}
MIN_CLIP=${MIN_CLIP:-6.5}
MIN_VAE=${MIN_VAE:-6.5}
MIN_EVAL=${MIN_EVAL:-0.75}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
T="python3 -m attncraft.shapes.training"

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/stage1_clip.log" 2>&1

$T clip --config "$CFG" --device "$DEV" --seed 0 --minutes "$MIN_CLIP" --out "$WORK/shapes-clip" >> "$OUT/stage1_clip.log" 2>&1 &
PID_CLIP=$!
$T vae --config "$CFG" --device "$DEV" --seed 0 --minutes "$MIN_VAE" --out "$WORK/shapes-vae" > "$OUT/stage1_vae.log" 2>&1 &
PID_VAE=$!
wait $PID_CLIP; RC_CLIP=$?
wait $PID_VAE; RC_VAE=$?
echo "clip exit $RC_CLIP, vae exit $RC_VAE"

RC_EVAL=1
if [ "$RC_CLIP" = 0 ]; then
  $T evaluate --what clip --config "$CFG" --device "$DEV" --minutes "$MIN_EVAL" --clip "$WORK/shapes-clip" --out "$OUT" >> "$OUT/stage1_clip.log" 2>&1
  RC_EVAL=$?
  tar -C "$WORK" -cf - shapes-clip | split -b 16000k -d -a 2 - "$OUT/shapes-clip.tar."
fi
[ "$RC_VAE" = 0 ] && tar -C "$WORK" -cf "$OUT/shapes-vae.tar" shapes-vae
tail -n 4 "$OUT/stage1_clip.log" "$OUT/stage1_vae.log"
cat "$OUT/shapes_eval_clip.md" 2>/dev/null
ls -l "$OUT"
[ "$RC_CLIP" = 0 ] && [ "$RC_VAE" = 0 ] && [ "$RC_EVAL" = 0 ]
