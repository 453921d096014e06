"""Tiny causal language models for the synopsis tests: a word-level tokenizer over a few words, a
random GPT-2 built from a config, and a GPT-2 whose greedy answer is scripted."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

WORDS = ["[UNK]", "[EOS]", "[PAD]", "1", "2", "3", ".", "a", "red", "blue", "circle", "moves", "right",
         "then", "turns", "Video:", "States:"]  # fmt: skip


def tiny_tokenizer():
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]")


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(WORDS), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=2)  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def scripted_lm(tokenizer, prompt_length, answer):
    """A tiny GPT-2 whose greedy continuation after ``prompt_length`` tokens is ``answer``: its token
    embeddings, attention and MLP are zeroed, so the logits depend only on the position, and the head
    reads each position's embedding (one-hot) as the answer's next token."""
    ids = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    n_pos = prompt_length + len(ids) + 4
    config = GPT2Config(vocab_size=len(WORDS), n_positions=n_pos, n_embd=n_pos, n_layer=1, n_head=1,
                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=1, pad_token_id=2)  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.transformer.h.parameters():
            p.zero_()
        model.transformer.wte.weight.zero_()
        model.transformer.wpe.weight.copy_(torch.eye(n_pos) * 10)
        head = torch.zeros(len(WORDS), n_pos)
        for k, token in enumerate(ids):
            head[token, prompt_length - 1 + k] = 50.0  # position p predicts the token at p + 1
        model.lm_head.weight.copy_(head)
    return model
