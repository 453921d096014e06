"""Training and evaluation of the Shapes models (shapes CLIP, the shapes SD VAE and UNet, shapes motion,
CTGM).

``python -m attncraft.shapes.training {clip,vae,unet,motion,ctgm,evaluate} --config {smoke,full} --out DIR
--minutes M --device cuda --seed 0``; see ``assets/models/README.md`` for the commands that made the
shipped weights and ``tools/gpu/train_shapes_stage{1,2}.sh`` / ``tools/gpu/train_shapes_motion.sh`` /
``tools/gpu/train_shapes_ctgm.sh`` for the GPU jobs.
"""
