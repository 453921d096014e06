#!/usr/bin/env python
"""Does a motion word of the caption reach the motion modules? Two measurements on a text-to-video model.

AnimateDiff's motion modules have no cross-attention: "moves right" can only steer them through the
features the spatial layers write. For pairs of captions that differ in one motion word (and, for
scale, in a colour word or an absolute position), this prints

1. the relative change ``|h(a) - h(b)| / |h(a)|`` of the text encoder's last hidden states over the
   caption's tokens (as ``probe_text_relations.py`` does for relation words);
2. the relative change of the hidden states entering the first motion module of every down, mid
   and up block (same noisy latents, same timestep), averaged over captions, at a high and a middle
   timestep: what the motion modules can see of the word.

A motion word that changes (2) much less than a colour word does is one the adapter cannot read,
however long it trains. The model is loaded with ``attncraft.loading.load_text_to_video``, so an
adapter folder's motion text path (``attncraft/video/motion_text_path.py``) is applied as in use.

    python benchmarks/probe_motion_words.py                            # the embedded Shapes model
    python benchmarks/probe_motion_words.py --adapter ./my-shapes-motion
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = [("moves right", "moves left"), ("moves up", "moves down"), ("grows", "shrinks"),
         ("rotates", "stays still"), ("moves right", "grows"), ("turns blue", "turns green")]
TIMESTEPS = (900, 500)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def captions(word: str, objects) -> list[str]:
    return [f"{article(c)} {c} {s} {word} on a gray background" for c, s in objects]


def probe(model: str = "shapes", adapter: str | None = None, n: int = 8, frames: int = 8, seed: int = 0,
          pairs=PAIRS, references: bool = True) -> dict:
    import torch

    from attncraft.loading import load_text_to_video
    from attncraft.shapes.palette import COLORS
    from attncraft.shapes.training.unet import relative_state_change
    from attncraft.shapes.world import SHAPES

    loaded = load_text_to_video(model, adapter, device="cpu", dtype="fp32")
    pipe = loaded.pipeline
    unet, enc, tok = pipe.unet.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    colors = [c for c in COLORS if c not in ("red", "blue", "gray", "green")]
    objects = [(colors[i % len(colors)], list(SHAPES)[i % len(SHAPES)]) for i in range(n)]

    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    sites = sorted((name for name, _ in unet.named_modules() if name.endswith("motion_modules.0") and name.count(".") <= 3),
                   key=lambda n: (order[n.split(".")[0]], n))  # first module of each block, down to up
    feats: dict[str, torch.Tensor] = {}
    hooks = [unet.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: feats.__setitem__(name, args[0].detach())) for name in sites]
    g = torch.Generator().manual_seed(seed)
    size = int(unet.config.sample_size)
    z = torch.randn(n, int(unet.config.in_channels), frames, size, size, generator=g)

    def states(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids).last_hidden_state, ids

    def features(texts, t):
        h, _ = states(texts)
        with torch.no_grad():
            unet(z, torch.full((n,), t), encoder_hidden_states=h.repeat_interleave(frames, dim=0))
        return dict(feats)

    def row(a_texts, b_texts, label):
        ha, ids = states(a_texts)
        hb, _ = states(b_texts)
        out = {"pair": label, "text": relative_state_change(ha, hb, ids, tok.eos_token_id)["tokens"]}
        for t in TIMESTEPS:
            fa, fb = features(a_texts, t), features(b_texts, t)
            out[f"t{t}"] = {s: float((fa[s] - fb[s]).norm() / fa[s].norm()) for s in sites}
        return out

    rows = [row(captions(a, objects), captions(b, objects), f"{a} / {b}") for a, b in pairs]
    if references:  # on the same motion caption: a colour word swapped, an absolute position swapped
        rows.append(row([f"a red {s} moves right on a gray background" for _, s in objects],
                        [f"a blue {s} moves right on a gray background" for _, s in objects], "reference: red / blue"))
        rows.append(row([f"{article(c)} {c} {s} moves right on the left on a gray background" for c, s in objects],
                        [f"{article(c)} {c} {s} moves right on the right on a gray background" for c, s in objects],
                        "reference: on the left / on the right"))
    for h in hooks:
        h.remove()
    return {"model": loaded.label, "sites": sites, "rows": rows, "captions": n, "frames": frames,
            "example": captions(pairs[0][0], objects)[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="shapes", help="base image model (default: the embedded Shapes SD)")
    p.add_argument("--adapter", default=None, help="motion adapter (default: the embedded Shapes motion adapter)")
    p.add_argument("--captions", type=int, default=8, help="captions per pair")
    p.add_argument("--frames", type=int, default=8)
    args = p.parse_args(argv)
    from attncraft.errors import AttncraftError

    try:
        res = probe(args.model, args.adapter, n=args.captions, frames=args.frames)
    except AttncraftError as exc:  # a model or adapter that does not load: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    short = [s.replace(".motion_modules.0", "") for s in res["sites"]]
    cmd = "python benchmarks/probe_motion_words.py" + (f" --adapter {args.adapter}" if args.adapter else "")
    print(f"### Motion words at the motion modules ({datetime.date.today()}, CPU, {res['model']})\n")
    print(f"Command: `{cmd}`; {res['captions']} captions per pair (e.g. \"{res['example']}\"), {res['frames']} frames, "
          f"one fixed noise; relative change of the text states (caption tokens) and of the input of the first "
          f"motion module of {', '.join(short)}.\n")
    for t in TIMESTEPS:
        print(f"t = {t}:\n")
        print("| words swapped | text states | " + " | ".join(short) + " | mean |")
        print("| --- | --- | " + " | ".join("---" for _ in short) + " | --- |")
        for r in res["rows"]:
            vals = [r[f"t{t}"][s] for s in res["sites"]]
            print(f"| {r['pair']} | {r['text']:.3f} | " + " | ".join(f"{v:.3f}" for v in vals)
                  + f" | {sum(vals) / len(vals):.3f} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
