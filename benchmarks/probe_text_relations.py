#!/usr/bin/env python
"""How far a text encoder's states move when one relation word of a caption is swapped for another.

A UNet can only draw "A above B" differently from "A below B" if its conditioning differs between
the two. For each pair of relation words this prints the relative distance
``|h(w1) - h(w2)| / |h(w1)|`` of the encoder's last hidden states, averaged over the caption's tokens
and over the padding after the end token (which SD-style UNets attend to as well), averaged over
captions made from every colour x shape pair of two different objects.

    python benchmarks/probe_text_relations.py                       # Shapes SD's text encoder
    python benchmarks/probe_text_relations.py --model ./my-sd-folder
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = [("above", "below"), ("above", "under"), ("over", "beneath"), ("left of", "right of"),
         ("above", "left of"), ("below", "right of")]


def probe(model: str, pairs=PAIRS, max_captions: int = 24) -> list[dict]:
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from attncraft.shapes.palette import COLORS
    from attncraft.shapes.training.unet import relative_state_change
    from attncraft.shapes.world import SHAPES

    tok = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").eval()
    objs = [(c, s) for c in list(COLORS)[:4] for s in list(SHAPES)[:3]]
    subjects = [(a, b) for a in objs for b in objs if a[1] != b[1]][:max_captions]

    def states(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids).last_hidden_state, ids

    rows = []
    for w1, w2 in pairs:
        t1 = [f"a {a[0]} {a[1]} {w1} a {b[0]} {b[1]} on a gray background" for a, b in subjects]
        t2 = [t.replace(f" {w1} ", f" {w2} ") for t in t1]
        h1, ids = states(t1)
        h2, _ = states(t2)
        rows.append({"pair": f"{w1} / {w2}", "captions": len(t1),
                     **relative_state_change(h1, h2, ids, tok.eos_token_id)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "assets/models/shapes-sd"),
                   help="a diffusers SD folder (text_encoder/ and tokenizer/)")
    p.add_argument("--captions", type=int, default=24, help="captions per word pair")
    args = p.parse_args(argv)
    rows = probe(args.model, max_captions=args.captions)
    print(f"### Relation words in the text encoder ({datetime.date.today()}, CPU)\n")
    print(f"Command: `python benchmarks/probe_text_relations.py --model {args.model} --captions {args.captions}`\n")
    print("| words swapped | captions | mean relative change, caption tokens | largest | after the end token |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['pair']} | {r['captions']} | {r['tokens']:.3f} | {r['max']:.3f} | {r['after_end']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
