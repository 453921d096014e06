"""Rebuild ``assets/tokenizer`` (vocab.json, merges.txt) from OpenAI's CLIP BPE file.

The BPE merge list ``bpe_simple_vocab_16e6.txt.gz`` (MIT licence, OpenAI CLIP) is carried inside
the ``open-clip-torch`` wheel on PyPI. We extract that one member instead of installing the package
(it would pull torchvision and timm), and convert it to the Hugging Face vocab/merges pair that
``transformers.CLIPTokenizer`` loads. The conversion follows CLIP's SimpleTokenizer: 256 byte
symbols, the same symbols with ``</w>``, one token per merge (in merge order), then the two
special tokens; 49,408 entries in all.

Usage::

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/w
    unzip -p /tmp/w/open_clip_torch-3.3.0-py3-none-any.whl open_clip/bpe_simple_vocab_16e6.txt.gz > bpe.txt.gz
    python tools/build_clip_tokenizer.py bpe.txt.gz assets/tokenizer
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

EXPECTED_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
NUM_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table, in CLIP's id order (printable bytes first)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def build(bpe_gz: Path, out_dir: Path) -> None:
    raw = bpe_gz.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != EXPECTED_SHA256:
        raise SystemExit(f"unexpected sha256 {digest} for {bpe_gz}; expected {EXPECTED_SHA256}")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + NUM_MERGES]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out_dir}")


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]))
