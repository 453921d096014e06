python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# GPU job of Shapes CTGM: two CTGMs (TII + TAR, and all = TII + TAR + TFB) trained side by side (two
# processes) on one H200 with shapes SD and a Shapes motion adapter frozen, then the measurement of
# both on 200 held-out sequential prompts per row (benchmarks/measure_ctgm.py).
# Wall time: training <= 5 min (budgets below, start-up and saving included), measurement ~2-4 min.
#
#   run from the repository root, carrying .whl (the diffusers wheel) and, unless it is committed, the
#   adapter folder:  ADAPTER=assets/models/shapes-motion bash tools/gpu/train_shapes_ctgm.sh
#
# Files written to $OUT (7; each < 16 MiB, none in a sub-folder):
#   ctgm-tii-tar.safetensors ctgm-all.safetensors   the CTGM weights (fp16, with their training record)
#   ctgm_train.log                                   both training logs (environment at the top)
#   ctgm_training_logs.json                          both training_log.json (steps, losses, held-out probe)
#   measure_ctgm.json measure_ctgm.md ctgm_examples.png   the measurement (table for benchmarks/RESULTS.md)
# Ship them with:  mkdir -p assets/models/shapes-ctgm && cp $OUT/ctgm-*.safetensors assets/models/shapes-ctgm/
#
# Environment overrides (a CPU dry run: SHAPES_DEVICE=cpu SHAPES_CONFIG=smoke MEASURE_ARGS="--count 2
# --frames 4 --steps 2 --batch 2 --device cpu"): SHAPES_DEVICE, SHAPES_CONFIG, SD_DIR, ADAPTER, MIN_TRAIN,
# SITES, WORK, MEASURE (0: train only), MEASURE_ARGS, MODES (default "tii+tar all"; "tii+tar" trains that one
# alone, with the GPU to itself: the CTGM step is launch- and loader-bound, two side by side halve each one's steps).
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-ctgm}
WORK=${WORK:-/tmp/shapes-ctgm}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full}
SD_DIR=${SD_DIR:-assets/models/shapes-sd}
ADAPTER=${ADAPTER:-assets/models/shapes-motion}
MIN_TRAIN=${MIN_TRAIN:-4.75}
SITES=${SITES:-part}
MEASURE=${MEASURE:-1}
MEASURE_ARGS=${MEASURE_ARGS:---count 200 --batch 100 --workers 12 --device cuda --dtype fp16}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
for f in "$SD_DIR/model_index.json" "$ADAPTER/config.json"; do
  [ -f "$f" ] || { echo "missing $f: pass SD_DIR / ADAPTER (a shapes SD folder and a MotionAdapter folder)" | tee "$OUT/ctgm_train.log"; exit 2; }
done
T="python3 -m attncraft.shapes.training ctgm --config $CFG --device $DEV --seed 0 --minutes $MIN_TRAIN --sd $SD_DIR --adapter $ADAPTER --sites $SITES --workers 5"

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$WORK/env.log" 2>&1

MODES=${MODES:-tii+tar all}
RC_A=0; RC_B=0; PID_A=; PID_B=
case " $MODES " in *" tii+tar "*) $T --mode tii+tar --out "$WORK/tii-tar" > "$WORK/tii-tar.log" 2>&1 & PID_A=$! ;; esac
case " $MODES " in *" all "*) $T --mode all --out "$WORK/all" > "$WORK/all.log" 2>&1 & PID_B=$! ;; esac
[ -n "$PID_A$PID_B" ] || { echo "MODES=$MODES names neither tii+tar nor all" | tee "$OUT/ctgm_train.log"; exit 2; }
[ -n "$PID_A" ] && { wait $PID_A; RC_A=$?; }
[ -n "$PID_B" ] && { wait $PID_B; RC_B=$?; }
echo "tii+tar exit $RC_A, all exit $RC_B" >> "$WORK/env.log"
cat "$WORK/env.log" "$WORK/tii-tar.log" "$WORK/all.log" > "$OUT/ctgm_train.log" 2>/dev/null
[ "$RC_A" = 0 ] && [ -n "$PID_A" ] && cp "$WORK/tii-tar/ctgm.safetensors" "$OUT/ctgm-tii-tar.safetensors"
[ "$RC_B" = 0 ] && [ -n "$PID_B" ] && cp "$WORK/all/ctgm.safetensors" "$OUT/ctgm-all.safetensors"
python3 - "$WORK" "$OUT/ctgm_training_logs.json" <<'EOF'
import json, sys
from pathlib import Path
work, target = Path(sys.argv[1]), Path(sys.argv[2])
logs = {name: json.loads((work / name / "training_log.json").read_text())
        for name in ("tii-tar", "all") if (work / name / "training_log.json").is_file()}
target.write_text(json.dumps(logs, indent=1) + "\n")
EOF

RC_M=0
if [ "$MEASURE" = 1 ]; then
  FILES=()
  for f in "$OUT/ctgm-tii-tar.safetensors" "$OUT/ctgm-all.safetensors"; do [ -f "$f" ] && FILES+=(--ctgm "$f"); done
  if [ ${#FILES[@]} -gt 0 ]; then
    # shellcheck disable=SC2086
    python3 benchmarks/measure_ctgm.py --model "$SD_DIR" --adapter "$ADAPTER" "${FILES[@]}" $MEASURE_ARGS --out "$WORK/measure" >> "$OUT/ctgm_train.log" 2>&1
    RC_M=$?
    cp "$WORK/measure/measure_ctgm.json" "$WORK/measure/measure_ctgm.md" "$WORK/measure/ctgm_examples.png" "$OUT/" 2>/dev/null
  fi
fi
grep -h "held-out\|saved\|exit" "$OUT/ctgm_train.log"
cat "$OUT/measure_ctgm.md" 2>/dev/null
ls -l "$OUT"
[ "$RC_A" = 0 ] && [ "$RC_B" = 0 ] && [ "$RC_M" = 0 ]
