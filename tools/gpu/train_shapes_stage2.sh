python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# GPU stage 2 of the Shapes models: the shapes SD UNet (text tower from assets/models/shapes-clip,
# VAE from assets/models/shapes-vae, both frozen; put stage 1's outputs there first), then the
# evaluation of shapes CLIP and shapes SD. Wall time ~8.5 min (UNet 6.75 + evaluation <= 1.5).
#
#   run from the repository root, carrying .whl:  bash tools/gpu/train_shapes_stage2.sh
#
# Files written to $OUT (7-8; each < 16 MiB, none in a sub-folder):
#   shapes-sd.tar.00 shapes-sd.tar.01       split tar of the shapes-sd folder (StableDiffusionPipeline)
#   stage2_unet.log stage2_eval.log         logs (environment at the top of the UNet one)
#   shapes_eval.json shapes_eval.md         reader metrics of shapes SD (and zero-shot shapes CLIP)
#   sd_samples.png                          32 one-object + 32 two-object samples at the default sampler
# Unpack into the repository:  cat shapes-sd.tar.* | tar -xf - -C assets/models   (then assets/models/shapes-vae,
# a copy of shapes-sd/vae, can be deleted)
#
# Environment overrides: SHAPES_DEVICE, SHAPES_CONFIG, CLIP_DIR, VAE_DIR, MIN_UNET, MIN_EVAL, WORK, and
#   VAE_INIT=DIR  first fine-tune the VAE from DIR (a VAE folder, or a shapes SD folder's vae/) for MIN_VAE
#                 minutes (peak lr VAE_LR, default 3e-4) into $WORK/shapes-vae, and train the UNet on that
#                 VAE (logs: stage2_vae.log, vae_training_log.json)
#   UNET_INIT=DIR start the UNet from DIR's weights instead of a fresh initialisation
#   COMPILE=1     torch.compile the UNet (falls back to eager if compilation fails)
#   TRAIN_TEXT=1  train the text encoder jointly with the UNet (`--train-text`, with the config's text settings;
#                 config finetune-text does so by default); TEXT_LR=LR its peak learning rate
#   CONTRAST=W    the relation-contrast term with weight W (`--contrast`, e.g. 0.5: an image's loss under its
#                 caption with the relation words flipped must exceed the true caption's by 10 %; one more UNet
#                 pass a step)
#   DONE=FILE     touched when everything has finished (for runs started in the background)
# Longer than one 10-minute command: start it in the background (setsid) with OUT outside the
# command's output folder, and collect OUT in a later command once DONE exists.
set -uo pipefail
OUT=${OUT:-$PWD/outputs/gpu-stage2}
WORK=${WORK:-/tmp/shapes-stage2}
DEV=${SHAPES_DEVICE:-cuda}
CFG=${SHAPES_CONFIG:-full}
CLIP_DIR=${CLIP_DIR:-assets/models/shapes-clip}
VAE_DIR=${VAE_DIR:-assets/models/shapes-vae}
MIN_UNET=${MIN_UNET:-6.75}
MIN_EVAL=${MIN_EVAL:-1.5}
MIN_VAE=${MIN_VAE:-3.5}
VAE_LR=${VAE_LR:-3e-4}
VAE_INIT=${VAE_INIT:-}
VAE_CFG=$(case "$CFG" in finetune*) echo full;; *) echo "$CFG";; esac)  # the finetune configs are the UNet's
UNET_INIT=${UNET_INIT:-}
DONE=${DONE:-}
EXTRA=()
[ -n "$UNET_INIT" ] && EXTRA+=(--init "$UNET_INIT")
[ "${COMPILE:-0}" = 1 ] && EXTRA+=(--compile)
[ "${TRAIN_TEXT:-0}" = 1 ] && EXTRA+=(--train-text)
[ -n "${TEXT_LR:-}" ] && EXTRA+=(--text-lr "$TEXT_LR")
[ -n "${CONTRAST:-}" ] && EXTRA+=(--contrast "$CONTRAST")
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT" && rm -rf "$WORK" && mkdir -p "$WORK"
T="python3 -m attncraft.shapes.training"
[ -n "$VAE_INIT" ] && VAE_DIR=$WORK/shapes-vae
NEED=("$CLIP_DIR/config.json"); [ -z "$VAE_INIT" ] && NEED+=("$VAE_DIR/config.json")
for f in "${NEED[@]}"; do
  [ -f "$f" ] || { echo "missing $f: unpack stage 1's shapes-clip / shapes-vae into assets/models first" | tee "$OUT/stage2_unet.log"; exit 2; }
done

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc
  python3 -c "import sys, torch, diffusers, transformers; print(sys.version.split()[0], torch.__version__, diffusers.__version__, transformers.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/stage2_unet.log" 2>&1

RC_VAE=0
if [ -n "$VAE_INIT" ]; then
  $T vae --config "$VAE_CFG" --device "$DEV" --seed 0 --minutes "$MIN_VAE" --init "$VAE_INIT" --lr "$VAE_LR" \
    --out "$VAE_DIR" > "$OUT/stage2_vae.log" 2>&1
  RC_VAE=$?
  cp "$VAE_DIR/training_log.json" "$OUT/vae_training_log.json" 2>/dev/null
fi
RC_UNET=1
if [ "$RC_VAE" = 0 ]; then
  $T unet --config "$CFG" --device "$DEV" --seed 0 --minutes "$MIN_UNET" --clip "$CLIP_DIR" --vae "$VAE_DIR" \
    --out "$WORK/shapes-sd" "${EXTRA[@]}" >> "$OUT/stage2_unet.log" 2>&1
  RC_UNET=$?
fi
RC_EVAL=1
if [ "$RC_UNET" = 0 ]; then
  $T evaluate --what all --config "$CFG" --device "$DEV" --minutes "$MIN_EVAL" --clip "$CLIP_DIR" \
    --sd "$WORK/shapes-sd" --out "$OUT" > "$OUT/stage2_eval.log" 2>&1
  RC_EVAL=$?
  tar -C "$WORK" -cf - shapes-sd | split -b 16000k -d -a 2 - "$OUT/shapes-sd.tar."
fi
echo "vae exit $RC_VAE, unet exit $RC_UNET, eval exit $RC_EVAL"
tail -n 6 "$OUT/stage2_unet.log"; tail -n 12 "$OUT/stage2_eval.log" 2>/dev/null
cat "$OUT/shapes_eval.md" 2>/dev/null
ls -l "$OUT"
[ -n "$DONE" ] && touch "$DONE"
[ "$RC_UNET" = 0 ] && [ "$RC_EVAL" = 0 ]
