"""The Shapes vocabulary: shapes SD's tokenizer and text encoder cut down to the tokens its world uses.

Shapes SD's text encoder is a CLIP text tower of width 128 whose token embedding has a row for each of
CLIP's 49,408 tokens: 12.6 of its 14.3 MB, for a world whose grammars use about 120 of them. This
module keeps the tokens a Shapes prompt can be made of and drops the others, without changing what
the model computes for any prompt of the world's grammars:

* **kept tokens**: CLIP's 512 byte-level base tokens (every text still tokenizes; a word outside the
  world falls apart into smaller pieces, which it would anyway be meaningless to this model), the
  two special tokens, and every token (intermediates included) that CLIP's byte-pair encoding forms
  on the words of the Shapes grammars: every lower-case word literal of the caption, parser and mesh
  grammar modules, and of a sample of captions of each grammar;
* **kept merges**: the merges whose two parts and result are kept, in CLIP's order. A word of the
  world tokenizes to the same tokens as before: at each step BPE applies the lowest-ranked merge
  present, and that merge is kept (it forms a kept token), so the restricted list picks it too;
* **kept rows**: the embedding rows of the kept tokens, in CLIP's order; the special tokens' ids and
  ``vocab_size`` in the config follow. The text states of a world prompt are bit-identical, which
  :func:`prune_sd_vocabulary` checks on held-out captions before it writes anything.

A hand-written BPE walk (:func:`bpe_tokens`) finds the intermediate tokens, which the tokenizers
library does not expose. Training code keeps making CLIP ids (its caption caches and pools);
:class:`VocabRemap` turns them into the pruned ids where they meet a pruned text encoder.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

CLIP_VOCAB_SIZE = 49408
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
BASE_TOKENS = 512  # CLIP's byte-level alphabet: 256 characters, and each as a word end ("</w>")
GRAMMAR_MODULES = ("world.py", "palette.py", "captions.py", "mesh_world.py")
_PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_WORDY = re.compile(r"^[a-z ,.'-]+$")


def _read_vocab(folder: Path) -> dict[str, int]:
    """A tokenizer folder's vocabulary: its ``vocab.json``, or (a folder with only ``tokenizer.json``, as
    transformers 5 saves one) the tokenizer's."""
    if (folder / "vocab.json").is_file():
        return json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    from transformers import CLIPTokenizer

    return dict(CLIPTokenizer.from_pretrained(str(folder), local_files_only=True).get_vocab())


def _read_merges(folder: Path) -> list[tuple[str, str]]:
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]  # type: ignore[misc]


def bpe_tokens(piece: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], set[str]]:
    """CLIP's byte-pair encoding of one pre-tokenised ASCII piece: its final tokens, and every token
    formed on the way (the final ones included)."""
    word = list(piece[:-1]) + [piece[-1] + "</w>"]
    formed = set(word)
    while len(word) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
        rank, _ = min(pairs)
        if rank == 1 << 30:
            break
        first, second = next((word[i], word[i + 1]) for r, i in pairs if r == rank)
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                merged.append(first + second)
                formed.add(first + second)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word, formed


def _string_literals(path: Path) -> list[str]:
    """The string constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def sample_captions(n: int = 2000, seed: int = 0) -> list[str]:
    """Captions of every Shapes grammar: still scenes (with omissions and relations), moving scenes,
    painted meshes."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.mesh_world import caption_mesh_scene, sample_mesh_scenes
    from attncraft.shapes.world import sample_scenes

    caps = [caption_scene(s, seed=k, omit=0.3 * (k % 2)) for k, s in enumerate(sample_scenes(n, seed=seed, num_objects=(1, 3)))]
    caps += [caption_scene(s, seed=k, relation=1.0) for k, s in enumerate(sample_scenes(n, seed=seed + 1, num_objects=(2, 3)))]
    caps += [caption_scene(s, seed=k) for k, s in enumerate(sample_scenes(n, seed=seed + 2, num_objects=(1, 2), motion=True))]
    caps += [caption_mesh_scene(s, seed=k, omit=0.3 * (k % 2)) for k, s in enumerate(sample_mesh_scenes(n, seed=seed + 3))]
    return caps


@lru_cache(maxsize=1)
def world_pieces() -> frozenset[str]:
    """The pre-tokenised pieces (words, punctuation) of the Shapes grammars: the word literals of
    their modules and the pieces of a sample of their captions."""
    shapes_dir = Path(__file__).resolve().parent
    texts = [s for name in GRAMMAR_MODULES for s in _string_literals(shapes_dir / name)
             if s.strip() and _WORDY.match(s.lower())]
    texts += sample_captions()
    return frozenset(p for t in texts for p in _PIECE.findall(t.lower()))


@lru_cache(maxsize=1)
def clip_vocab() -> dict[str, int]:
    from attncraft.assets import tokenizer_dir

    return _read_vocab(tokenizer_dir())


def kept_tokens(vocab: dict[str, int], merges: list[tuple[str, str]], pieces: Iterable[str]) -> list[str]:
    """The tokens of a pruned vocabulary, in their order in ``vocab``."""
    ranks = {pair: i for i, pair in enumerate(merges)}
    keep = set(SPECIAL_TOKENS) | {t for t, i in vocab.items() if i < BASE_TOKENS}
    for piece in pieces:
        final, formed = bpe_tokens(piece, ranks)
        missing = [t for t in final if t not in vocab]
        if missing:
            raise ValueError(f"piece {piece!r} forms tokens outside the vocabulary: {missing}")
        keep |= formed & set(vocab)
    return sorted(keep, key=vocab.__getitem__)


class VocabRemap:
    """CLIP token ids -> the ids of a pruned vocabulary (``-1``: a token it does not have)."""

    def __init__(self, vocab: dict[str, int]):
        full = clip_vocab()
        table = torch.full((len(full),), -1, dtype=torch.long)
        for token, new_id in vocab.items():
            if token in full:
                table[full[token]] = new_id
        self.table = table
        self.size = len(vocab)
        self._on: dict[torch.device, torch.Tensor] = {}

    @classmethod
    def for_vocab(cls, vocab: dict[str, int]) -> VocabRemap | None:
        """The remap into ``vocab``, or None when ``vocab`` is CLIP's own (nothing to remap)."""
        return None if vocab == clip_vocab() else cls(vocab)

    @classmethod
    def for_tokenizer(cls, tokenizer) -> VocabRemap | None:
        return cls.for_vocab(dict(tokenizer.get_vocab()))

    @classmethod
    def for_folder(cls, folder: str | os.PathLike) -> VocabRemap | None:
        """For a tokenizer folder (``vocab.json``), or a model folder with a ``tokenizer/`` one."""
        folder = Path(folder)
        if not (folder / "tokenizer_config.json").is_file() and (folder / "tokenizer").is_dir():
            folder = folder / "tokenizer"
        return cls.for_vocab(_read_vocab(folder))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        table = self._on.get(ids.device)
        if table is None:
            table = self._on[ids.device] = self.table.to(ids.device)
        out = table[ids.long()]
        if ids.device.type != "cpu":  # checked on the device, without a host sync in the training loops
            torch._assert_async((out >= 0).all(), "CLIP token ids outside the model's pruned vocabulary")
        elif bool((out < 0).any()):
            bad = sorted({int(i) for i in ids.flatten()[(out < 0).flatten()].tolist()})[:5]
            raise ValueError(f"CLIP token ids {bad} are not in the model's pruned vocabulary of {self.size} tokens; "
                             "tokenize with the model's own tokenizer")
        return out


class RemappedTextEncoder:
    """A text encoder called with CLIP ids that takes the ids of a pruned vocabulary: maps them first.
    Everything else (``config``, ``parameters()``, ...) is the encoder's."""

    def __init__(self, encoder, remap: VocabRemap):
        self.encoder, self.remap = encoder, remap

    def __call__(self, input_ids, *args, **kwargs):
        return self.encoder(self.remap(input_ids), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)


def for_clip_ids(encoder, remap: VocabRemap | None):
    """``encoder`` itself when it takes CLIP ids (``remap`` None), else the encoder behind the remap."""
    return encoder if remap is None else RemappedTextEncoder(encoder, remap)


def pipeline_encoder_for_clip_ids(pipe):
    """A pipeline's text encoder, taking CLIP ids whatever its tokenizer's vocabulary."""
    return for_clip_ids(pipe.text_encoder, VocabRemap.for_tokenizer(pipe.tokenizer))


# --------------------------------------------------------------------------------------------------
# Pruning a shapes SD folder
# --------------------------------------------------------------------------------------------------


def prune_text_encoder(encoder, old_ids: list[int], new_special: dict[str, int]):
    """A copy of a ``CLIPTextModel`` whose token embedding keeps the rows ``old_ids`` (in that order)."""
    import copy

    pruned = copy.deepcopy(encoder)
    emb = pruned.get_input_embeddings()
    rows = emb.weight.detach()[torch.tensor(old_ids, dtype=torch.long)].clone()
    new = torch.nn.Embedding(len(old_ids), rows.shape[1], dtype=rows.dtype, device=rows.device)
    with torch.no_grad():
        new.weight.copy_(rows)
    pruned.set_input_embeddings(new)
    pruned.config.vocab_size = len(old_ids)
    pruned.config.bos_token_id = new_special["<|startoftext|>"]
    pruned.config.eos_token_id = new_special["<|endoftext|>"]
    pruned.config.pad_token_id = new_special["<|endoftext|>"]
    return pruned


def _write_tokenizer(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]], config: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


@torch.no_grad()
def check_pruned(tok_full, enc_full, tok_new, enc_new, captions: list[str]) -> None:
    """The pruned tokenizer gives the remapped ids and the pruned encoder the same states, exactly."""
    remap = VocabRemap.for_tokenizer(tok_new)
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    for i in range(0, len(captions), 256):
        batch = captions[i:i + 256]
        ids_full = tok_full(batch, **kw).input_ids
        ids_new = tok_new(batch, **kw).input_ids
        if remap is None or not torch.equal(remap(ids_full), ids_new):
            raise RuntimeError("the pruned tokenizer does not give the remapped CLIP ids of the world's captions")
        if not torch.equal(enc_full(ids_full).last_hidden_state, enc_new(ids_new).last_hidden_state):
            raise RuntimeError("the pruned text encoder's states differ from the full one's on the world's captions")


def _stored_dtype(folder: Path) -> torch.dtype:
    """The dtype of a saved model's token embedding (the file's, whatever the config says)."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        name = next(k for k in f.keys() if k.endswith("token_embedding.weight"))
        return torch.float16 if f.get_slice(name).get_dtype() == "F16" else torch.float32


def prune_sd_vocabulary(folder: str | os.PathLike, check_captions: int = 500) -> dict[str, Any]:
    """Cut a shapes SD folder's tokenizer and text encoder to the Shapes vocabulary, in place.

    Builds both in a temporary folder, checks them against the full ones on held-out captions of
    every grammar (:func:`check_pruned`), then replaces the folder's ``tokenizer/`` and
    ``text_encoder/`` (a folder already pruned is left as it is). Returns sizes and counts."""
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir, enc_dir = folder / "tokenizer", folder / "text_encoder"
    vocab = _read_vocab(tok_dir)
    if vocab != clip_vocab():
        return {"pruned": False, "reason": "not CLIP's full vocabulary (already pruned?)", "tokens": len(vocab)}
    from attncraft.assets import tokenizer_dir

    merges = _read_merges(tok_dir if (tok_dir / "merges.txt").is_file() else tokenizer_dir())  # CLIP's, as checked
    tokens = kept_tokens(vocab, merges, world_pieces())
    new_vocab = {t: i for i, t in enumerate(tokens)}
    new_merges = [(a, b) for a, b in merges if a in new_vocab and b in new_vocab and a + b in new_vocab]
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    enc_full = CLIPTextModel.from_pretrained(str(enc_dir), local_files_only=True, dtype=torch.float32).eval()
    stored_dtype = _stored_dtype(enc_dir)
    tok_full = CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    enc_new = prune_text_encoder(enc_full, [vocab[t] for t in tokens], new_vocab)
    before = sum(p.stat().st_size for p in enc_dir.iterdir()) + sum(p.stat().st_size for p in tok_dir.iterdir())
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        _write_tokenizer(tmp / "tokenizer", new_vocab, new_merges, config)
        tok_new = CLIPTokenizer.from_pretrained(str(tmp / "tokenizer"), local_files_only=True)
        check_pruned(tok_full, enc_full.float(), tok_new, enc_new.float(), sample_captions(check_captions, seed=900))
        enc_new.to(stored_dtype).save_pretrained(str(tmp / "text_encoder"), safe_serialization=True)
        # the config keeps the dtype it declared (shapes SD: float32, with fp16 weights on disk), so that
        # from_pretrained loads the encoder as it did before
        old_cfg = json.loads((enc_dir / "config.json").read_text())
        new_cfg = json.loads((tmp / "text_encoder" / "config.json").read_text())
        for key in ("dtype", "torch_dtype"):
            new_cfg.pop(key, None)
            if key in old_cfg:
                new_cfg[key] = old_cfg[key]
        (tmp / "text_encoder" / "config.json").write_text(json.dumps(new_cfg, indent=2, sort_keys=True) + "\n")
        moved = []
        try:
            for name in ("tokenizer", "text_encoder"):
                old = folder / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                (folder / name).rename(old)  # a symlinked tokenizer file moves as a link: its target is untouched
                moved.append(name)
                (tmp / name).rename(folder / name)
        except BaseException:
            for name in moved:  # put the originals back
                shutil.rmtree(folder / name, ignore_errors=True)
                (folder / f".{name}.old").rename(folder / name)
            raise
        for name in moved:
            shutil.rmtree(folder / f".{name}.old")
    from attncraft.shapes.models import legacy_text_encoder_keys

    legacy_text_encoder_keys(enc_dir)  # SD 1.x key names, as every shapes SD folder stores them
    after = sum(p.stat().st_size for p in enc_dir.iterdir()) + sum(p.stat().st_size for p in tok_dir.iterdir())
    return {"pruned": True, "tokens": len(tokens), "merges": len(new_merges), "bytes_before": before,
            "bytes_after": after, "checked_captions": 4 * check_captions}


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m attncraft.shapes.vocab",
                                description="Cut a shapes SD folder's tokenizer and text encoder to the Shapes vocabulary "
                                            "(in place; the world's prompts give bit-identical text states).")
    p.add_argument("folder", help="a shapes SD pipeline folder (tokenizer/ and text_encoder/)")
    args = p.parse_args(argv)
    for part in ("tokenizer/tokenizer_config.json", "text_encoder/config.json"):
        if not (Path(args.folder) / part).is_file():
            p.error(f"{args.folder} is not a shapes SD folder ({part} is missing): pass a StableDiffusionPipeline folder")
    print(json.dumps(prune_sd_vocabulary(args.folder), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
