# Retraining of shapes SD for the stated relations ("above", "under", "left of"...), from the shipped one.
#
# TEXT=1 (default): the UNet and the text encoder are fine-tuned together (config `finetune-text`,
#   attncraft/shapes/training/configs.py FINETUNE_TEXT): the frozen text encoder hardly tells "above" from
#   "below" (benchmarks/probe_text_relations.py: 3.7 % against 11.7 % for "left of" / "right of"), so a UNet
#   fine-tune alone left vertical relations a coin flip. Trained of the text encoder: its 4 transformer
#   layers, the final layer norm and the token embeddings (only the rows of caption words move; no decay),
#   at its own peak lr 1e-4 after 300 warm-up steps; frozen: the position embeddings. The UNet as in
#   `finetune`: 4 in 5 multi-object captions by a relation, vertical ones preferred, half of each batch at
#   t >= 500, peak lr 5e-4 after 200 warm-up steps. The VAE stays frozen.
# TEXT=0: the UNet alone (config `finetune`, the run shipped on 2026-12-01), with the shipped text encoder.
# Then the whole evaluation (per relation word and the relation flip probe included), and the relation-word
# probe of the text encoder, before (shipped) and after (new).
# Wall time ~7.5 min on one H200 (training 6 min from the process start, evaluation <= 1.5 min, probe ~10 s).
#
#   run from the repository root, carrying .whl:  bash tools/gpu/retrain_shapes_sd_relations.sh
#   CPU dry run:  SHAPES_DEVICE=cpu SHAPES_CONFIG=smoke MIN_UNET=3 MIN_EVAL=3 bash tools/gpu/retrain_shapes_sd_relations.sh
#
# Files written to $OUT (8): shapes-sd.tar.00 shapes-sd.tar.01 (split tar of the new shapes-sd folder),
#   stage2_unet.log (its "text encoder trained: ..." lines say what was trained and that the rest is unchanged;
#   training_log.json in the tar: "text_encoder_training") stage2_eval.log, shapes_eval.json shapes_eval.md
#   (per relation word too), sd_samples.png, probe_text_relations.md (shipped and new text encoder).
# Unpack into the repository (the folder is self-contained: its tokenizer and text encoder carry the
# Shapes vocabulary, attncraft/shapes/vocab.py):
#   rm -rf assets/models/shapes-sd && cat shapes-sd.tar.* | tar -xf - -C assets/models
# Overrides: TEXT, TEXT_LR (the text encoder's peak lr, default 1e-4), CONTRAST=W (the relation-contrast term,
#   e.g. 0.5: see attncraft/shapes/training/unet.py; the flip probe's vertical ratio says whether it took), MIN_UNET, MIN_EVAL, COMPILE=1 (not worth its ~100 s of compiling in a 6-minute run),
#   and the other variables of train_shapes_stage2.sh.
#
# A new text encoder changes what every part trained on shapes SD reads; retrain or re-measure them after
# this one is accepted, in this order (none is retrained here):
#   shapes-realcustom  its scoring module pools the text states and its visual K/V sit beside the text
#                      ones of the UNet: retrain (tools/gpu/train_realcustom.sh), then its measurement;
#   shapes-motion      trained on the frozen SD (text encoder included) before the relation fine-tunes:
#                      retrain or at least re-evaluate (tools/gpu/train_shapes_motion.sh);
#   shapes-ctgm        not trained yet; its per-frame text module and TAR read the text states: train it on
#                      the new SD and the motion adapter that goes with it (tools/gpu/train_shapes_ctgm.sh);
#   measurements       DPL (bench_dpl_effect.py), Prompt-to-Prompt, BroadWay / VSTAR, RealCustom, motion:
#                      their tables describe the old model; re-run them on the new one.
#   Unaffected: shapes-clip (SD keeps its own text encoder), the VAE, the reader.
set -uo pipefail
export TEXT=${TEXT:-1}
if [ "$TEXT" = 1 ]; then export SHAPES_CONFIG=${SHAPES_CONFIG:-finetune-text} TRAIN_TEXT=1
else export SHAPES_CONFIG=${SHAPES_CONFIG:-finetune} TRAIN_TEXT=0; fi
export UNET_INIT=${UNET_INIT:-assets/models/shapes-sd}
export VAE_DIR=${VAE_DIR:-assets/models/shapes-sd/vae} CLIP_DIR=${CLIP_DIR:-assets/models/shapes-clip}
export MIN_UNET=${MIN_UNET:-6} MIN_EVAL=${MIN_EVAL:-1.5}
export OUT=${OUT:-$PWD/outputs/gpu-relations} WORK=${WORK:-/tmp/shapes-stage2}
bash "$(dirname "$0")/train_shapes_stage2.sh"
RC=$?
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
if [ -f "$WORK/shapes-sd/text_encoder/config.json" ]; then
  { echo "shipped text encoder ($UNET_INIT):"; echo
    python3 benchmarks/probe_text_relations.py --model "$UNET_INIT" --captions 24
    echo; echo "new text encoder (TEXT=$TEXT, config $SHAPES_CONFIG):"; echo
    python3 benchmarks/probe_text_relations.py --model "$WORK/shapes-sd" --captions 24
  } > "$OUT/probe_text_relations.md" 2>> "$OUT/stage2_eval.log" || RC=1
  cat "$OUT/probe_text_relations.md"
fi
exit $RC
