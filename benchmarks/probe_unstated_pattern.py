"""Which pattern does Shapes SD draw when a prompt names none: the training captions' meaning, or more stripes?

The world grammar never says "plain": a plain object is captioned without a pattern word. But the
UNet's captions also drop attributes (``UnetTrain.caption_omits``: one caption in four drops each
optional attribute with probability 0.3), so a caption without a pattern word may describe a
patterned object, and a caption that also lacks a size word, like the ``make demo`` prompt, is one of
those short captions more often. This probe puts the two side by side:

1. *the captions' prior*: single-object world scenes captioned with the UNet's omission rates; among
   the captions with no pattern word (and among those with neither a pattern nor a size word), the
   share of each pattern of the object described;
2. *the model*: ``--n`` images per prompt at the model's default settings (seeds 0..n-1), each object
   the reader finds counted by shape and pattern.

A diagnostic of the default model, not a target.

    python benchmarks/probe_unstated_pattern.py --n 48          # CPU, 2 cores: ~3 min
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import replace

PROMPTS = ("a red circle", "a big red circle", "a red circle on the left and a blue square on the right")


def caption_prior(scenes: int = 20000, seed: int = 123) -> dict[str, dict[str, float]]:
    """Pattern shares of the objects of single-object training captions without a pattern word
    (``no_pattern_word``) and without a pattern or a size word (``no_pattern_or_size_word``)."""
    from attncraft.shapes.captions import PATTERN_ADJ, PATTERN_PP, SIZE_WORDS, caption_scene
    from attncraft.shapes.training.configs import UnetTrain
    from attncraft.shapes.world import sample_scenes

    pattern_words = [w for forms in (*PATTERN_ADJ.values(), *PATTERN_PP.values()) for w in forms]
    size_words = {w for forms in SIZE_WORDS.values() for w in forms}
    omits = UnetTrain().caption_omits
    rng = random.Random(0)
    counts = {"no_pattern_word": Counter(), "no_pattern_or_size_word": Counter()}
    for i, scene in enumerate(sample_scenes(scenes, seed=seed, num_objects=1)):
        text = caption_scene(scene, seed=i, omit=rng.choice(omits))
        if any(w in text for w in pattern_words):
            continue
        pattern = scene.objects[0].pattern
        counts["no_pattern_word"][pattern] += 1
        if not size_words & set(text.split()):
            counts["no_pattern_or_size_word"][pattern] += 1
    return {k: {p: n / sum(c.values()) for p, n in sorted(c.items())} | {"captions": sum(c.values())}
            for k, c in counts.items()}


def model_patterns(n: int, prompts=PROMPTS, model: str = "shapes", device: str = "cpu") -> dict[str, dict]:
    """Per prompt: the objects the reader finds in ``n`` images, counted by ``shape/pattern``."""
    from attncraft.loading import load_text_to_image
    from attncraft.pipelines.text_to_image import default_settings, generate
    from attncraft.shapes.reader import read_images

    loaded = load_text_to_image(model, device=device)
    out = {}
    for prompt in prompts:
        settings, images = default_settings(loaded, prompt), []
        for start in range(0, n, 16):
            images += generate(loaded, replace(settings, seed=start, count=min(16, n - start))).images
        found = Counter(f"{o.shape}/{o.pattern}" for scene in read_images(images) for o in scene.objects)
        out[prompt] = {"images": len(images), "guidance": settings.guidance_scale, "objects": dict(found)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=48, help="images per prompt (seeds 0..n-1)")
    p.add_argument("--model", default="shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--scenes", type=int, default=20000, help="world scenes for the captions' prior")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n {args.n}: give at least 1 image per prompt")
    prior = caption_prior(args.scenes)
    print("### Pattern of an object whose caption names none\n")
    print("| training captions (single object) | n | plain | striped | dotted | checkered |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in prior.items():
        print(f"| {name.replace('_', ' ')} | {row['captions']} | "
              + " | ".join(f"{100 * row.get(k, 0):.1f} %" for k in ("plain", "striped", "dotted", "checkered")) + " |")
    found = model_patterns(args.n, model=args.model, device=args.device)
    print("\n| prompt (model default settings) | images | objects read, shape/pattern |")
    print("| --- | ---: | --- |")
    for prompt, row in found.items():
        objects = ", ".join(f"{k} {v}" for k, v in sorted(row["objects"].items()))
        print(f"| {prompt} (guidance {row['guidance']:g}) | {row['images']} | {objects} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"caption_prior": prior, "model": found}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
