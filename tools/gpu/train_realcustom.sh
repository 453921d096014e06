python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# GPU job: RealCustom's parts (projector, adaptive scoring module, visual K/V of the 11 cross-attention
# layers) trained on the Shapes world for the shipped Shapes SD (frozen, like Shapes CLIP's vision
# tower, the image encoder), then its measured effect. Wall time ~7 min: training 5.75 min (start-up,
# pool, training, saving and a short evaluation included), then the measurement (~1 min).
#
#   run from the repository root, carrying .whl:  bash tools/gpu/train_realcustom.sh
#
# Files written to $OUT (8, each < 3 MB, none in a sub-folder):
#   realcustom.safetensors       the trained parts (fp16; config and recommended settings in its metadata)
#   training_log.json            steps, losses, held-out loss without / before / after, hardware, command
#   realcustom_train.log         the training command's output (environment at the top)
#   realcustom_eval.json .md     the short evaluation: omega_i sweep, baseline vs RealCustom (256 subjects)
#   realcustom_measure.json .md  the measurement of benchmarks/RESULTS.md (every row, 200 held-out subjects)
#   realcustom_measure_samples.png  8 samples of every row
# Unpack into the repository:  mkdir -p assets/models/shapes-realcustom &&
#   cp $OUT/{realcustom.safetensors,training_log.json,realcustom_eval.md,realcustom_measure.md} assets/models/shapes-realcustom/
#
# Environment overrides: SHAPES_DEVICE, SHAPES_CONFIG, SD_DIR, CLIP_DIR, MINUTES, SUBJECTS, MEASURE=0 (skip
# the measurement), WORK.
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-realcustom}
WORK=${WORK:-/tmp/shapes-realcustom}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full}
SD_DIR=${SD_DIR:-assets/models/shapes-sd}
CLIP_DIR=${CLIP_DIR:-assets/models/shapes-realcustom/image_encoder}  # RealCustom's own image encoder (the model card says why)
MINUTES=${MINUTES:-5.75}
SUBJECTS=${SUBJECTS:-200}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
T="python3 -m attncraft.shapes.training"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/realcustom_train.log" 2>&1
$T realcustom --config "$CFG" --device "$DEV" --seed 0 --minutes "$MINUTES" --sd "$SD_DIR" --clip "$CLIP_DIR" \
  --out "$WORK" >> "$OUT/realcustom_train.log" 2>&1
RC_TRAIN=$?
cp "$WORK"/realcustom.safetensors "$WORK"/training_log.json "$WORK"/realcustom_eval.json "$WORK"/realcustom_eval.md "$OUT"/ 2>/dev/null
RC_MEASURE=0
if [ "$RC_TRAIN" = 0 ] && [ "${MEASURE:-1}" = 1 ]; then
  $T realcustom-eval --device "$DEV" --sd "$SD_DIR" --clip "$CLIP_DIR" --adapter "$WORK" --subjects "$SUBJECTS" \
    --out "$OUT" >> "$OUT/realcustom_train.log" 2>&1
  RC_MEASURE=$?
fi
echo "train exit $RC_TRAIN, measure exit $RC_MEASURE"
tail -n 12 "$OUT/realcustom_train.log"
cat "$OUT/realcustom_eval.md" "$OUT/realcustom_measure.md" 2>/dev/null
ls -l "$OUT"
[ "$RC_TRAIN" = 0 ] && [ "$RC_MEASURE" = 0 ]
