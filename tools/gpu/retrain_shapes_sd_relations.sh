# Retraining of shapes SD for the stated relations ("above", "under", "left of"...): the UNet is
# fine-tuned from the shipped one (config `finetune`, attncraft/shapes/training/configs.py: 4 in 5
# multi-object captions by a relation, vertical ones preferred, half of each batch at t >= 500, the
# original peak lr 5e-4 after 200 warm-up steps; "over" is no longer a background phrase), with the
# shipped text encoder (shapes-sd/text_encoder, the one its UNet was trained with) and VAE frozen; then the
# whole evaluation, per relation word and the relation flip probe included.
# Wall time ~7.3 min on one H200 (UNet 6 min from the process start, evaluation <= 1.5 min).
#
#   run from the repository root, carrying .whl:  bash tools/gpu/retrain_shapes_sd_relations.sh
#
# Files written to $OUT (7): shapes-sd.tar.00 shapes-sd.tar.01 (split tar of the new shapes-sd folder),
#   stage2_unet.log stage2_eval.log, shapes_eval.json shapes_eval.md (per relation word too),
#   sd_samples.png. It prints the per-relation-word table at the end.
# Unpack into the repository:  rm -rf assets/models/shapes-sd && cat shapes-sd.tar.* | tar -xf - -C assets/models
# Overrides: MIN_UNET, MIN_EVAL, COMPILE=1 (not worth its ~100 s of compiling in a 6-minute run),
#   and the other variables of train_shapes_stage2.sh.
export UNET_INIT=${UNET_INIT:-assets/models/shapes-sd} SHAPES_CONFIG=${SHAPES_CONFIG:-finetune}
export VAE_DIR=${VAE_DIR:-assets/models/shapes-sd/vae} CLIP_DIR=${CLIP_DIR:-assets/models/shapes-clip}
export MIN_UNET=${MIN_UNET:-6} MIN_EVAL=${MIN_EVAL:-1.5}
exec bash "$(dirname "$0")/train_shapes_stage2.sh"
