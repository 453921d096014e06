#!/bin/bash
# Retrain and re-measure the Shapes parts on one GPU machine, in dependency order, as much side by side as
# the dependencies allow (every training has a wall-clock budget; jobs sharing the GPU get fewer steps each):
#
#   wave 1   SD relation fine-tune (UNet + text encoder) | mesh-reading CLIP
#   wave 2   after SD:      motion adapter on the new SD, RealCustom parts + measurement, DPL effect (n = 200)
#            after CLIP:    X-Mesh claim
#            after motion:  CTGM training + measurement, BroadWay/VSTAR effects
# The motion adapter, RealCustom and CTGM are trained against the SD they will be used with, so they wait for it.
# Cost benchmarks run only with BENCH=1, and then beside the trainings, where their timings are noise: time
# on a quiet GPU instead (benchmarks/RESULTS.md, "third lease").
#
# A job whose product exists goes on to its dependants even when its own evaluation failed (the product is
# what they need). Each job writes into $OUT/<job>/ (its log in job.log, its exit status in .rc); the
# trained folders stay as the job scripts leave them (split tars), to be unpacked as the model card says.
#
#   run from the repository root, carrying .whl:  OUT=/tmp/refresh bash tools/gpu/refresh_all.sh
#   DRY=1 runs the control flow alone (seconds, any machine): each training job "produces" the shipped folder
#   it would retrain, the other jobs print their command; REFRESH_WORK moves the work folder (default /tmp/refresh-work).
#   JOBS="motion sd clip" limits the trainings (default: all; without sd, wave 2 uses the SD in the tree; without
#   motion, the tree's adapter, evaluated on the new SD by the job motion_eval);
#   SD_CONTRAST (default 0.5) and MOTION_CONTRAST (default off) weight the caption-contrast terms; MOTION_INIT=DIR starts
#   the motion adapter from a trained one; MOTION_PAIR=W trains a second one beside it with the contrast W (a paired test); CLIP_VISION_FROM
#   (default 0, the whole vision tower, as shipped) is the mesh CLIP's first trained vision layer; BENCH=1 adds the cost benchmarks
#   beside the trainings (noisy); QUIET_BENCH=1 times, once every other job has ended, the three figures that need a quiet GPU
#   (CTGM whole runs, RealCustom release / release_reuse / release_condmask_reuse with a profile of each, DPL's compiled passes with
#   inductor and with the CUDA-graph backend alone; ~12 min); the motion
#   adapter trains with the motion text path (TEXT_PATH=cross-kv, attncraft/video/motion_text_path.py) unless
#   TEXT_PATH= is given empty.
# Wall time: about 25 minutes on one H200 (SD ~7.5 min, then motion ~8 min beside RealCustom and DPL, then CTGM
# ~9 min beside BroadWay/VSTAR ~6 min).
# Every job script it runs was run on an H200 on 2026-12-01 from an orchestration of the same shape; the
# graph of 2026-12-02 (benchmarks/RESULTS.md, "seventh lease") ran as JOBS="sd clip" does: SD ~8 min beside the
# CLIP, then CTGM, RealCustom, BroadWay/VSTAR, the motion evaluation and the six DPL processes side by side, the
# longest (DPL world + edits) 17.5 min. Timings taken beside the trainings are noisy (benchmarks/RESULTS.md).
set -u
ROOT=$(pwd)
OUT=${OUT:-$ROOT/outputs/refresh}
JOBS=${JOBS:-motion sd clip}
WK=${REFRESH_WORK:-/tmp/refresh-work}
mkdir -p "$OUT" "$WK"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
log() { echo "$(date -u +%T) $*" | tee -a "$OUT/refresh.log"; }
wants() { case " $JOBS " in *" $1 "*) return 0;; *) return 1;; esac; }

# job NAME DIR COMMAND: COMMAND (a string) run in DIR with OUT=$OUT/NAME
job() {
  local name=$1 dir=$2; shift 2
  mkdir -p "$OUT/$name"; log "start $name"
  local t0=$(date +%s)
  if [ "${DRY:-0}" = 1 ]; then  # the control flow alone: a training "produces" the shipped folder it would retrain
    ( echo "dry $name in $dir: $*"; cd "$dir/assets/models" || exit 1
      case $name in
        sd|clip) tar -cf - "shapes-$name" | split -b 16000k -d -a 2 - "$OUT/$name/shapes-$name.tar." ;;
        motion) tar -cf "$OUT/$name/shapes-motion.tar" shapes-motion ;;
      esac ) > "$OUT/$name/job.log" 2>&1
  else
    ( cd "$dir" && export OUT="$OUT/$name" PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" && eval "$*" ) > "$OUT/$name/job.log" 2>&1
  fi
  local rc=$?
  echo $rc > "$OUT/$name/.rc"; log "end $name rc=$rc after $(( $(date +%s) - t0 )) s"
  return $rc
}
waitrc() { while [ ! -f "$OUT/$1/.rc" ]; do sleep 5; done; }

# Two copies of the tree: BASE keeps the shipped models (wave 1 trains from them), NEW receives the
# products of wave 1 for wave 2.
BASE=$WK/base NEW=$WK/new
rm -rf "$BASE" "$NEW"; cp -a "$ROOT" "$BASE"

# the SD with the relation contrast (SD_CONTRAST, default 0.5: the recipe that taught the vertical relations,
# benchmarks/RESULTS.md "fifth lease"; SD_CONTRAST= to train without it)
wants sd && { job sd "$BASE" "CONTRAST=${SD_CONTRAST-0.5} WORK=$WK/sd bash tools/gpu/retrain_shapes_sd_relations.sh" & }
# CLIP_VISION_FROM (default 0) is the first trained vision layer of the mesh CLIP: 0 trains them all (shape 37.7 -> 76.3 %,
# pattern 38.7 -> 67.1 % of held-out meshes on 1x H200, benchmarks/RESULTS.md "sixth lease"); 5: the frozen trunk
CLIPV=${CLIP_VISION_FROM-0}
wants clip && { job clip "$BASE" "TRAIN_VISION_FROM=$CLIPV WORK=$WK/clip bash tools/gpu/train_shapes_clip_mesh.sh" & }
if [ "${BENCH:-0}" = 1 ]; then
  ( job bench_t2v "$BASE" "python3 benchmarks/bench_text_to_video.py --device cuda --rounds 4 --json \$OUT/bench.json > \$OUT/bench.md"
    job bench_broadway_vstar "$BASE" "python3 benchmarks/bench_broadway_vstar.py --device cuda --rounds 3 --warmup 1 --json \$OUT/bench.json > \$OUT/bench.md"
    job bench_ctgm "$BASE" "python3 benchmarks/bench_ctgm.py --device cuda --rounds 3 --json \$OUT/bench.json > \$OUT/bench.md"
    job bench_dpl "$BASE" "python3 benchmarks/bench_dpl.py --device cuda --json \$OUT/bench.json > \$OUT/bench.md"
    job bench_realcustom "$BASE" "python3 benchmarks/bench_realcustom.py --device cuda --json \$OUT/bench.json > \$OUT/bench.md"
    job bench_backends "$BASE" "python3 benchmarks/bench_attention_backends.py --device cuda --json \$OUT/bench.json > \$OUT/bench.md" ) &
fi

# wave 2, SD side
wants sd && waitrc sd
cp -a "$BASE" "$NEW"
if ls "$OUT"/sd/shapes-sd.tar.* > /dev/null 2>&1; then
  rm -rf "$NEW/assets/models/shapes-sd" && cat "$OUT"/sd/shapes-sd.tar.* | tar -xf - -C "$NEW/assets/models" && log "wave 2 uses the new SD"
fi
# RealCustom reads its own image encoder (assets/models/shapes-realcustom/image_encoder), not the mesh CLIP: trained on
# the whole-trunk mesh CLIP it kept 33 % of identities against 42.5 % (benchmarks/RESULTS.md), so it does not wait for it
job realcustom "$NEW" "WORK=$WK/rc bash tools/gpu/train_realcustom.sh" &
# the DPL effect (n = 200) as six processes side by side (962 s in one process alone), merged into one table
# when all are done; the edits edit the world and same rows' inversions, so each shares its row's process
( parts=
  for rows in psnr world,edits generated same,edits-same three bf16; do
    job "dpl_${rows%%,*}" "$NEW" "nice -n 5 python3 benchmarks/bench_dpl_effect.py --device cuda --n 200 --rows $rows --out \$OUT/dpl_effect.json > \$OUT/dpl_effect.md" &
    parts="$parts$OUT/dpl_${rows%%,*}/dpl_effect.json "
  done; wait
  job dpl_effect "$NEW" "python3 benchmarks/bench_dpl_effect.py --merge $parts> \$OUT/dpl_effect.md" ) &
# the motion adapter with the motion text path (TEXT_PATH= to train the motion modules alone, as shipped)
# (MOTION_CONTRAST=W adds the caption contrast; off by default: not shown to help the reader yet)
# MOTION_INIT=DIR continues from an adapter folder (its motion modules; the text path starts afresh on the new SD)
# motion_job NAME CONTRAST [MIN_T]: one motion adapter training in $NEW, into $WK/NAME
motion_job() {
  job "$1" "$NEW" "CONTRAST=$2 CONTRAST_MIN_T=${3:-} INIT=${MOTION_INIT:-} MIN_TRAIN=\${MIN_TRAIN:-6} TEXT_PATH=${TEXT_PATH-cross-kv} WORK=$WK/$1 bash tools/gpu/train_shapes_motion.sh"
}
wants motion && { motion_job motion "${MOTION_CONTRAST:-}" & }
# without a motion training, the tree's adapter goes on to wave 2: evaluate it on the new SD first-hand, on a copy (the
# evaluation re-saves the guidance its sweep picks into the folder it reads, and the CTGM and BroadWay/VSTAR jobs read
# the tree's folder meanwhile)
wants motion || job motion_eval "$NEW" "rm -rf $WK/motion_eval && mkdir -p $WK/motion_eval && cp -a assets/models/shapes-motion $WK/motion_eval/ && python3 -m attncraft.shapes.training evaluate --what motion --config full --device cuda --minutes 1.5 --sd assets/models/shapes-sd --adapter $WK/motion_eval/shapes-motion --out \$OUT" &
# MOTION_PAIR=W: the caption contrast's paired test, a second adapter trained beside the first from the same start,
# with the same budget and the contrast of weight W; measured, never shipped, nothing waits for it
# (MOTION_PAIR_MIN_T=T keeps that contrast to timesteps >= T)
if wants motion && [ -n "${MOTION_PAIR:-}" ]; then motion_job motion_contrast "$MOTION_PAIR" "${MOTION_PAIR_MIN_T:-}" & fi

# wave 2, CLIP side: the X-Mesh claim with the new CLIP (the shipped one when there is none)
rm -rf "$WK/newclip"
( if wants clip; then waitrc clip; fi
  CLIP=assets/models/shapes-clip
  if ls "$OUT"/clip/shapes-clip.tar.* > /dev/null 2>&1; then
    mkdir -p "$WK/newclip" && cat "$OUT"/clip/shapes-clip.tar.* | tar -xf - -C "$WK/newclip" && CLIP=$WK/newclip/shapes-clip
  fi
  MIT=$([ -d "$BASE/.mit30" ] && echo "--mit30 .mit30")
  job xmesh_claim "$BASE" "python3 benchmarks/bench_xmesh_claim.py --clip $CLIP $MIT --device cuda --budget-minutes 6 --out \$OUT/claim" ) &

# wave 2, motion side
if wants motion; then waitrc motion; fi
[ -f "$OUT/motion/shapes-motion.tar" ] && tar -xf "$OUT/motion/shapes-motion.tar" -C "$NEW/assets/models" && log "wave 2 uses the new motion adapter"
if [ -f "$NEW/assets/models/shapes-motion/config.json" ]; then
  job ctgm "$NEW" "WORK=$WK/ctgm ADAPTER=assets/models/shapes-motion bash tools/gpu/train_shapes_ctgm.sh" &
  job broadway_vstar "$NEW" "python3 benchmarks/measure_broadway_vstar.py --adapter assets/models/shapes-motion --device cuda --count 200 --batch 50 --workers 8 --out \$OUT/measure" &
else
  log "no motion adapter: ctgm and broadway_vstar skipped"
fi
wait
# the timings that need the GPU to themselves, in the tree as it is (random weights at full size: the models trained above
# do not enter them), one after the other, after everything else
if [ "${QUIET_BENCH:-0}" = 1 ]; then
  job quiet_ctgm "$BASE" "python3 benchmarks/bench_ctgm.py --device cuda --rounds 2 --json \$OUT/bench_ctgm.json > \$OUT/bench_ctgm.md"
  job quiet_realcustom "$BASE" "python3 benchmarks/bench_realcustom.py --device cuda --variants release,release_reuse,release_condmask_reuse --rounds 5 --profile \$OUT --json \$OUT/bench_rc.json > \$OUT/bench_rc.md"
  job quiet_dpl "$BASE" "python3 benchmarks/bench_dpl.py --device cuda --variants ours_compiled --skip-whole --json \$OUT/bench_dpl.json > \$OUT/bench_dpl.md"
  # CUDA graphs without inductor's code generation: does most of the compiled speed-up come without its ~195 s compile?
  job quiet_dpl_cudagraphs "$BASE" "python3 benchmarks/bench_dpl.py --device cuda --variants ours_compiled --compile-backend cudagraphs --skip-whole --json \$OUT/bench_dpl.json > \$OUT/bench_dpl.md"
fi
log "done"
