"""The real CLIP BPE tokenizer, shipped offline in ``assets/tokenizer``.

transformers and diffusers ship no CLIP vocabulary and the Hub is not always reachable, so the
project carries vocab.json/merges.txt (built from OpenAI's MIT-licensed BPE file by
``tools/build_clip_tokenizer.py``). ``model_max_length`` must be set to 77 explicitly: built from
vocab and merges it defaults to a huge number, and the SD pipelines pad to it.
"""

from __future__ import annotations

from functools import lru_cache

from transformers import CLIPTokenizer

from attncraft.assets import tokenizer_dir

CLIP_MAX_LENGTH = 77
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
VOCAB_SIZE = 49408


@lru_cache(maxsize=1)
def _cached() -> CLIPTokenizer:
    # from_pretrained on the folder works across transformers 4.x (slow/fast classes, vocab_file
    # naming) and 5.x (tokenizers-backed class); the folder's tokenizer_config.json sets length 77.
    return CLIPTokenizer.from_pretrained(str(tokenizer_dir()), local_files_only=True, model_max_length=CLIP_MAX_LENGTH)


def load_clip_tokenizer() -> CLIPTokenizer:
    """Return the shipped CLIP tokenizer (cached: constructing it costs ~0.05 s)."""
    return _cached()
