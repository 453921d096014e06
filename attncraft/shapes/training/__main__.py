"""``python -m attncraft.shapes.training {clip,vae,unet,motion,ctgm,evaluate,realcustom,realcustom-eval} ...`` (see ``--help``)."""

from __future__ import annotations

import time

_T0 = time.time()  # the wall-clock budget counts from here, imports included

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m attncraft.shapes.training",
                                description="Train / evaluate the Shapes models.")
    p.add_argument("stage", choices=["clip", "vae", "unet", "motion", "ctgm", "evaluate", "realcustom", "realcustom-eval"])
    p.add_argument("--config", choices=["smoke", "cpu", "full", "finetune", "finetune-text", "finetune-text-cpu",
                                         "motion-cpu", "full-mesh", "mesh-cpu"],
                   default="smoke",
                   help="smoke (seconds), full (one GPU); realcustom also has cpu (an hour on a CPU); unet also has "
                        "finetune (full, with the UNet settings of a warm start, --init) and finetune-text (finetune "
                        "with the text encoder trained too) and finetune-text-cpu (finetune-text at CPU size, under an "
                        "hour); motion also has motion-cpu (paired experiments on a CPU, --init); clip also has full-mesh (the mesh-reading fine-tune, "
                        "one GPU) and mesh-cpu (full-mesh at CPU size, paired experiments, --init)")
    p.add_argument("--out", required=True, help="output folder (model folder; evaluate: metrics folder)")
    p.add_argument("--minutes", type=float, default=1.0, help="wall-clock budget of this command")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (default: the time budget)")
    p.add_argument("--workers", type=int, default=None, help="scene-generation processes (default: config)")
    p.add_argument("--clip", dest="clip_dir", default=None,
                   help="shapes CLIP folder (default assets/models/shapes-clip)")
    p.add_argument("--vae", dest="vae_dir", default=None, help="VAE folder (default assets/models/shapes-vae)")
    p.add_argument("--sd", dest="sd_dir", default=None,
                   help="shapes SD folder (default assets/models/shapes-sd); motion: the frozen base")
    p.add_argument("--adapter", dest="adapter_dir", default=None,
                   help="evaluate --what motion / ctgm: the (frozen) motion adapter folder (default "
                        "assets/models/shapes-motion); realcustom-eval: the RealCustom checkpoint (default "
                        "assets/models/shapes-realcustom)")
    p.add_argument("--mode", dest="ctgm_mode", default=None, help="ctgm: CTGM mode (default: the config's, tii+tar)")
    p.add_argument("--sites", dest="ctgm_sites", default=None, choices=["all", "part"],
                   help="ctgm: every cross-attention site or the reference's part_module set (default: part)")
    p.add_argument("--prompts", type=int, default=None,
                   help="evaluate --what motion: at most N prompts per set (e.g. a CPU check of the full settings)")
    p.add_argument("--what", choices=["clip", "sd", "all", "motion", "relations"], default="all",
                   help="evaluate: which model(s); all = clip + sd; relations: only shapes SD's per-relation-word "
                        "figures, at the folder's own default sampler (nothing is written into the folder)")
    p.add_argument("--relation-prompts", type=int, default=None,
                   help="evaluate: prompts per relation word (default: the config's, 200 in full)")
    p.add_argument("--compile", action="store_true", help="unet/motion: torch.compile the (motion) UNet (off by default)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the config's)")
    p.add_argument("--init", dest="init_dir", default=None,
                   help="clip/vae/unet/motion/ctgm: start from these weights instead of a fresh initialisation (a "
                        "CLIP, VAE, UNet or MotionAdapter folder, or a shapes SD folder, whose vae/ or unet/ is used; ctgm: a "
                        "CTGM .safetensors file)")
    p.add_argument("--subjects", type=int, default=200, help="realcustom-eval: held-out subjects per row")
    p.add_argument("--train-text", action="store_true",
                   help="unet: train the text encoder jointly with the UNet, with the config's text settings "
                        "(finetune-text does by default)")
    p.add_argument("--text-lr", type=float, default=None,
                   help="unet: the text encoder's peak learning rate when it is trained (default: the config's, 1e-4)")
    p.add_argument("--text-path", choices=["cross-kv"], default=None,
                   help="motion: also train the motion text path (the spatial cross-attention key/value projections, "
                        "saved as text_path.safetensors beside the adapter; attncraft/video/motion_text_path.py)")
    p.add_argument("--text-path-lr", type=float, default=None,
                   help="motion: the text path's peak learning rate (default: the config's, 2e-4)")
    p.add_argument("--contrast", type=float, default=None,
                   help="motion / unet: weight of the caption-contrast term, which asks each example's loss under "
                        "its caption with the motions turned the other way (motion) or the relation words flipped "
                        "(unet) to exceed the true caption's by 10 %% (default: the config's, 0 = off)")
    p.add_argument("--contrast-min-t", type=int, default=None,
                   help="motion: the lowest timestep the caption contrast covers, e.g. 800 for the high-noise fifth "
                        "where the motion is decided; its reversed-caption pass then runs on those clips only "
                        "(default: the config's, 0 = all timesteps)")
    p.add_argument("--frame-deviation-weight", type=float, default=None,
                   help="motion: weight of the part of the v-error that differs between the frames (the error "
                        "minus its mean over frames, where a wrong or missing motion shows; default: the config's, "
                        "1 = the plain loss)")
    p.add_argument("--motion-region-weight", type=float, default=None,
                   help="motion: extra weight W on the positions where the clean clip changes over time "
                        "(1 + W * change / max change, normalised per clip; default: the config's, 0 = off)")
    p.add_argument("--mesh-fraction", type=float, default=None,
                   help="clip: share of each batch taken from renders of painted procedural meshes (default: the config's, 0)")
    p.add_argument("--train-vision-from", type=int, default=None,
                   help="clip: vision layers below this index (and the patch embedding) stay frozen; 0 trains them "
                        "all (default: the config's; full-mesh and mesh-cpu train them all, 5 keeps the first mesh fine-tune's frozen trunk)")
    ns = p.parse_args(argv)
    if ns.train_vision_from is not None and ns.train_vision_from < 0:
        p.error(f"--train-vision-from {ns.train_vision_from}: give a layer index >= 0 (0 trains every layer)")
    stages = CONFIG_STAGES.get(ns.config)
    if stages is not None and ns.stage not in stages:
        p.error(f"--config {ns.config} is a configuration of {' and '.join(stages)}, not of {ns.stage}: "
                f"use smoke or full for {ns.stage}")
    return ns


CONFIG_STAGES = {
    "cpu": ("realcustom", "realcustom-eval"),
    "finetune": ("unet", "evaluate"),
    "finetune-text": ("unet", "evaluate"),
    "finetune-text-cpu": ("unet", "evaluate"),
    "motion-cpu": ("motion", "evaluate"),
    "full-mesh": ("clip", "evaluate"),
    "mesh-cpu": ("clip", "evaluate"),
}
"""The stages a specialised ``--config`` belongs to (``smoke`` and ``full`` belong to all); any other stage
would silently fall back to its full settings, or fail deep inside, so the command line refuses it."""


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ns = parse(argv)
    from attncraft.shapes.training import common

    common.PROCESS_T0 = _T0 if argv is None else None  # in-process calls: each budget from its own start
    args = common.RunArgs(
        config=ns.config, out=ns.out, minutes=ns.minutes, device=ns.device, seed=ns.seed, max_steps=ns.max_steps,
        workers=ns.workers, clip_dir=ns.clip_dir, vae_dir=ns.vae_dir, sd_dir=ns.sd_dir, adapter_dir=ns.adapter_dir,
        prompts=ns.prompts, ctgm_mode=ns.ctgm_mode, ctgm_sites=ns.ctgm_sites, what=ns.what,
        compile=ns.compile, init_dir=ns.init_dir, lr=ns.lr, relation_prompts=ns.relation_prompts,
        mesh_fraction=ns.mesh_fraction, train_text=ns.train_text, text_lr=ns.text_lr,
        text_path=ns.text_path, text_path_lr=ns.text_path_lr, contrast=ns.contrast, contrast_min_t=ns.contrast_min_t,
        frame_deviation_weight=ns.frame_deviation_weight, motion_region_weight=ns.motion_region_weight,
        train_vision_from=ns.train_vision_from, argv=[sys.argv[0], *(argv if argv is not None else sys.argv[1:])],
    )
    from attncraft.errors import AttncraftError

    try:
        if ns.stage == "clip":
            from attncraft.shapes.training.clip import train_clip

            train_clip(args)
        elif ns.stage == "vae":
            from attncraft.shapes.training.vae import train_vae

            train_vae(args)
        elif ns.stage == "unet":
            from attncraft.shapes.training.unet import train_unet

            train_unet(args)
        elif ns.stage == "motion":
            from attncraft.shapes.training.motion import train_motion

            train_motion(args)
        elif ns.stage == "realcustom":
            from attncraft.shapes.training.realcustom import train_realcustom

            train_realcustom(args)
        elif ns.stage == "realcustom-eval":
            from attncraft.shapes.training.realcustom import evaluate_realcustom

            evaluate_realcustom(args, n=ns.subjects)
        elif ns.stage == "ctgm":
            from attncraft.shapes.training.ctgm import train_ctgm

            train_ctgm(args)
        else:
            from attncraft.shapes.training.evaluate import evaluate

            evaluate(args)
    except AttncraftError as exc:  # bad input found by a stage (a folder, a value): one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
