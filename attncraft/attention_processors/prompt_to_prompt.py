"""Prompt-to-Prompt (Hertz et al. 2022) as attention techniques: word swap, refinement, re-weighting,
self-attention injection and local blending, on any SD 1.x / 2.x / SDXL / Shapes UNet.

The batch a controller edits holds *groups* of prompts: each group is ``[source, edit_1, ...]`` (one
image and its edits; a batch of several images is several groups, group-major). Controllers edit
only the conditional half of a classifier-free-guidance batch, as P2P does, and never the source row.

Windows are **fractions of the denoising steps** everywhere in the public API (one convention, no
integer step counts): a window ``f`` (or ``(0, f)``) is active at step ``s`` of ``T`` while
``floor(start*T) <= s < floor(end*T)``, so ``0.8`` and ``0.4`` of 50 steps are DPL's 40 and 20
steps. They are validated (finite, ``0 <= start <= end <= 1``) and unknown settings are errors,
never ignored (diffusers' community pipeline silently ignores the keys its README shows).

Layers are chosen by level, derived from the model (:func:`attention_plan`), never by a hard-coded
16x16 or pixel size: the *map level* is the level of the cross-attention layers just above the mid
block (SD 1.x/2.x: the 16x16 layers at 512 px, 24x24 at 768 px; Shapes SD: its 16x16 layers; SDXL:
the ``h/2`` layers), which local blending and DPL's losses read; self-attention injection acts on
the self-attention layers at that level and coarser (SD 1.x at 512 px: query length <= 256, the
layers the original P2P replaces).

Deviations from the reference code, on purpose:

* **Word mapper tails.** After a replaced word whose token count differs, the original P2P maps the
  remaining tokens position to position (``j -> j``); here they keep their offset (``i -> j``), and
  the end-of-text and padding tokens are aligned from the end-of-text token on.
* **Alignment ties** of the refinement mapper prefer aligning identical tokens.
* **Local blend** uses the conditional source and edit maps of the current step at the map level
  derived from the model (the reference hard-codes a 16x16 reshape, and DPL's copy reads the wrong
  batch rows), and keeps positions outside the mask equal to the source latent exactly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from attncraft.attention_processors.context import AttentionCall, AttentionContext
from attncraft.attention_processors.layers import LayerInfo, discover_layers
from attncraft.attention_processors.selection import LayerSelector, select_layers
from attncraft.attention_processors.technique import EDIT_ORDER, OBSERVE_ORDER, AttentionTechnique
from attncraft.errors import InputError, TechniqueError
from attncraft.validation import check_finite

Window = tuple[float, float]

# --------------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------------


def step_window(value: float | Sequence[float], name: str = "window") -> Window:
    """A window as ``(start, end)`` fractions of the steps; a single number ``f`` means ``(0, f)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        start, end = 0.0, value
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        start, end = value
    else:
        raise InputError(f"{name} must be a fraction of the steps or a (start, end) pair of fractions, got {value!r}",
                         f"pass e.g. {name}=0.8 or {name}=(0.0, 0.8)")
    start = check_finite(f"{name} start", start, 0.0, 1.0, example=0.0)
    end = check_finite(f"{name} end", end, 0.0, 1.0, example=0.8)
    if start > end:
        raise InputError(f"{name} starts at {start:g}, after its end {end:g}", f"pass a {name} with start <= end")
    return start, end


def window_bounds(window: Window, num_steps: int) -> tuple[int, int]:
    """First step and end step (exclusive) of a window over ``num_steps`` steps."""
    # 1e-9: 0.29 * 100 is 28.999999999999996 in binary floating point
    return math.floor(window[0] * num_steps + 1e-9), math.floor(window[1] * num_steps + 1e-9)


def in_window(window: Window, step: int, num_steps: int) -> bool:
    first, stop = window_bounds(window, num_steps)
    return first <= step < stop


def total_steps(context: AttentionContext, fallback: int | None = None) -> int:
    """The number of denoising steps of the current run: from the pipeline that started it, else
    the scheduler of the attached pipeline, else ``fallback``."""
    if context.num_inference_steps:
        return int(context.num_inference_steps)
    if fallback:
        return int(fallback)
    pipe = context._pipeline_ref() if context._pipeline_ref is not None else None
    steps = getattr(getattr(pipe, "scheduler", None), "num_inference_steps", None)
    if steps:
        return int(steps)
    raise TechniqueError(
        "a Prompt-to-Prompt window needs the number of denoising steps, and this run does not say it",
        "pass num_inference_steps to the controller, or call get_manager(pipe).start_run(num_inference_steps)",
    )


# --------------------------------------------------------------------------------------------------
# Prompts as words and token positions
# --------------------------------------------------------------------------------------------------

_PUNCT = ".,;:!?\"'()[]{}"
_FILLER = "x"
"""Text put where a placeholder's vector goes: any one-token word does (its embedding is replaced)."""


def _bare(word: str) -> str:
    return word.strip(_PUNCT).lower()


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as whitespace words and the token positions each word occupies (BOS is position 0).

    Dynamic tokens (:mod:`.dpl`): every occurrence of a noun gets its own placeholder (``circle``,
    ``circle#2``: two circles are two objects), named in :attr:`placeholder_names`. With
    ``collapse`` (the default) a placeholder takes one token whatever the noun's length and
    :attr:`encoder_text` is the text given to the tokenizer (a multi-token noun replaced by a
    one-token filler whose embedding is overwritten); without it the noun keeps its own tokens.
    """

    text: str
    words: tuple[str, ...]
    spans: tuple[tuple[int, ...], ...]
    token_ids: tuple[int, ...]
    """Content token ids (between BOS and EOS); collapsed placeholders as negative ids ``-(k+1)``."""
    length: int
    """Tokens including BOS and EOS (before padding)."""
    max_length: int
    encoder_text: str
    placeholder_names: tuple[str, ...] = ()
    placeholder_spans: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """Placeholder index -> token positions of its noun (one position when collapsed)."""

    @property
    def eos_position(self) -> int:
        return self.length - 1

    def word_positions(self, word: str) -> list[int]:
        """Token positions of every occurrence of ``word`` (compared without punctuation, any case)."""
        want = _bare(word)
        return [p for w, span in zip(self.words, self.spans) if _bare(w) == want for p in span]

    def has_word(self, word: str) -> bool:
        return any(_bare(w) == _bare(word) for w in self.words)

    def placeholder_positions(self) -> dict[int, int]:
        """Placeholder index -> the position its vector goes to (collapsed prompts)."""
        return {k: span[0] for k, span in self.placeholder_spans.items()}


def _word_ranges(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def _content_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, truncation=False).input_ids
    return list(ids[1:-1]) if len(ids) >= 2 else list(ids)


def _spans_by_offsets(tokenizer, text: str, ranges: list[tuple[int, int]]) -> list[list[int]] | None:
    try:
        enc = tokenizer(text, truncation=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    offsets = enc.get("offset_mapping") if hasattr(enc, "get") else None
    if offsets is None:
        return None
    spans: list[list[int]] = [[] for _ in ranges]
    w = 0
    for k, (a, b) in enumerate(list(offsets[1:-1])):
        while w < len(ranges) and a >= ranges[w][1]:
            w += 1
        if w >= len(ranges) or b <= ranges[w][0]:
            return None
        spans[w].append(k + 1)
    return spans if all(spans) else None


def _spans_by_words(tokenizer, text: str, ranges: list[tuple[int, int]]) -> list[list[int]] | None:
    spans, pos, all_ids = [], 1, []
    for a, b in ranges:
        ids = tokenizer(text[a:b], add_special_tokens=False).input_ids
        spans.append(list(range(pos, pos + len(ids))))
        pos += len(ids)
        all_ids += ids
    return spans if all_ids == _content_ids(tokenizer, text) and all(spans) else None


def _has_text(tokenizer, token_id: int) -> bool:
    """True for a token with a letter or digit (a noun's piece), False for glued punctuation."""
    return any(ch.isalnum() for ch in tokenizer.convert_ids_to_tokens(int(token_id)).replace("</w>", ""))


def tokenize_prompt(
    tokenizer,
    text: str,
    nouns: Sequence[str] = (),
    names: Sequence[str] | None = None,
    collapse: bool = True,
) -> PromptTokens:
    """Words of ``text``, their token positions, and the dynamic-token layout of ``nouns``.

    Every occurrence of a noun (a whole word, compared without punctuation and case) gets a
    placeholder named ``noun`` (first occurrence), ``noun#2``... With ``names`` (the source
    prompt's placeholder names, for an edit prompt) only occurrences with one of those names get a
    placeholder. A noun that never occurs is an error unless ``names`` is given.
    """
    wanted = {_bare(n): n for n in nouns}
    ranges = _word_ranges(text)
    if not ranges:
        raise InputError("the prompt is empty", "pass a prompt with at least one word")
    words = [text[a:b] for a, b in ranges]
    seen: dict[str, int] = {}
    holder_names: dict[int, str] = {}
    for i, word in enumerate(words):
        bare = _bare(word)
        if bare in wanted:
            seen[bare] = seen.get(bare, 0) + 1
            name = wanted[bare] if seen[bare] == 1 else f"{wanted[bare]}#{seen[bare]}"
            if names is None or name in names:
                holder_names[i] = name
    if names is None:
        missing = [n for n in nouns if _bare(n) not in seen]
        if missing:
            raise InputError(f"the noun {missing[0]!r} is not a word of the prompt {text!r}",
                             "pass nouns that appear in the source prompt, as whole words")
        order = list(holder_names.values())
    else:
        order = list(names)
    index_of = {name: k for k, name in enumerate(order)}
    # the encoder text: a collapsed noun of several tokens becomes a one-token filler
    pieces, cursor = [], 0
    for i, ((a, b), word) in enumerate(zip(ranges, words)):
        pieces.append(text[cursor:a])
        if i in holder_names and collapse:
            bare = _bare(word)
            start = word.lower().find(bare)
            noun_text = word[start:start + len(bare)]
            one = len(_content_ids(tokenizer, noun_text)) == 1
            pieces.append(word if one else word[:start] + _FILLER + word[start + len(bare):])
        else:
            pieces.append(word)
        cursor = b
    pieces.append(text[cursor:])
    encoder_text = "".join(pieces)
    enc_ranges = _word_ranges(encoder_text)
    spans = _spans_by_offsets(tokenizer, encoder_text, enc_ranges) or _spans_by_words(tokenizer, encoder_text, enc_ranges)
    if spans is None:
        raise TechniqueError(f"cannot tell which tokens belong to which word of {text!r}",
                             "write the prompt with plain words separated by spaces")
    ids = _content_ids(tokenizer, encoder_text)
    max_length = int(tokenizer.model_max_length)
    length = len(ids) + 2
    if length > max_length:
        raise InputError(f"the prompt {text!r} is {len(ids)} tokens long; this text encoder reads at most {max_length - 2}",
                         "shorten the prompt")
    token_ids = list(ids)
    holder_spans: dict[int, tuple[int, ...]] = {}
    for i, name in holder_names.items():
        noun_tokens = tuple(p for p in spans[i] if _has_text(tokenizer, ids[p - 1])) or tuple(spans[i][:1])
        k = index_of[name]
        holder_spans[k] = noun_tokens
        if collapse:
            for p in noun_tokens:
                token_ids[p - 1] = -(k + 1)
    return PromptTokens(
        text=text, words=tuple(words), spans=tuple(tuple(s) for s in spans), token_ids=tuple(token_ids),
        length=length, max_length=max_length, encoder_text=encoder_text, placeholder_names=tuple(order),
        placeholder_spans=holder_spans,
    )


def noun_of(name: str) -> str:
    """The noun of a placeholder name (``circle#2`` -> ``circle``)."""
    return name.split("#", 1)[0]


def placeholder_vectors_init(token_embedding: torch.nn.Embedding, tokenizer, names: Sequence[str]) -> torch.Tensor:
    """(K, D) float32 initial vectors of the placeholders: the noun's token embedding (the mean of its
    tokens' embeddings for a noun of several tokens)."""
    weight = token_embedding.weight
    rows = []
    for name in names:
        ids = _content_ids(tokenizer, noun_of(name))
        rows.append(weight[ids].detach().float().mean(0) if len(ids) > 1 else weight[ids[0]].detach().float().clone())
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------------
# Mappers
# --------------------------------------------------------------------------------------------------


def _tail_source(src: PromptTokens, tgt: PromptTokens, n: int) -> int:
    """Source position of target position ``n`` at or after the target's EOS (aligned from EOS)."""
    return min(src.eos_position + (n - tgt.eos_position), src.max_length - 1)


def replace_mapper(src: PromptTokens, tgt: PromptTokens) -> torch.Tensor:
    """(L, L) word-swap mapper ``M``: the edit's map of token ``n`` is ``sum_w P_src[w] M[w, n]``.

    Words are compared position by position (the prompts must have as many words); a swapped word
    of as many tokens maps token to token, one of another length spreads the source word's
    attention evenly over its tokens. Identical prompts give the identity.
    """
    if len(src.words) != len(tgt.words):
        raise InputError(
            f"replace mode maps word to word, but {src.text!r} has {len(src.words)} words and {tgt.text!r} has {len(tgt.words)}",
            "give the target as many words as the source, or use --mode refine",
        )
    L = src.max_length
    M = torch.zeros(L, L)
    M[0, 0] = 1.0
    for s_span, t_span in zip(src.spans, tgt.spans):
        if len(s_span) == len(t_span):
            M[list(s_span), list(t_span)] = 1.0
        else:
            for t in t_span:
                M[list(s_span), t] = 1.0 / len(t_span)
    for n in range(tgt.eos_position, L):
        M[_tail_source(src, tgt, n), n] = 1.0
    return M


def _align(x: Sequence[int], y: Sequence[int]) -> list[int]:
    """Global alignment (match 1, mismatch -1, gap 0) of ``y`` against ``x``: for each ``y`` item the
    index of its aligned ``x`` item, or -1."""
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i][j] = max(diag, score[i - 1][j], score[i][j - 1])
    out = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1] and score[i][j] == score[i - 1][j - 1] + 1:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i][j] == score[i][j - 1]:
            j -= 1
        else:
            i -= 1
    return out


def refine_mapper(src: PromptTokens, tgt: PromptTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement mapper: for each target position ``n`` a source position and a flag ``a_n`` (1:
    aligned, take the source's map; 0: a new word, keep the edit's own map). Identical prompts give
    the identity with ``a = 1``; an inserted word gets ``a = 0``."""
    L = src.max_length
    index = torch.zeros(L, dtype=torch.long)
    alpha = torch.zeros(L)
    index[0], alpha[0] = 0, 1.0
    aligned = _align(src.token_ids, tgt.token_ids)
    for j, i in enumerate(aligned):
        if i >= 0:
            index[j + 1], alpha[j + 1] = i + 1, 1.0
    for n in range(tgt.eos_position, L):
        index[n], alpha[n] = _tail_source(src, tgt, n), 1.0
    return index, alpha


def equalizer(tgt: PromptTokens, weights: Mapping[str, float]) -> torch.Tensor:
    """(L,) per-token scale: ``weights[word]`` on the tokens of each named word of ``tgt``, 1 elsewhere."""
    eq = torch.ones(tgt.max_length)
    for word, scale in weights.items():
        scale = check_finite(f"the re-weighting scale of {word!r}", scale, 0.0, 100.0, example=2.0)
        positions = tgt.word_positions(word)
        if not positions:
            raise InputError(f"the word {word!r} to re-weight is not in the prompt {tgt.text!r}",
                             "re-weight a word of the target prompt")
        eq[positions] = scale
    return eq


# --------------------------------------------------------------------------------------------------
# Which layers: derived from the model
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionPlan:
    """Levels of a UNet that Prompt-to-Prompt and DPL act on (see the module docstring)."""

    map_level: int
    """Level of the cross-attention maps for local blend and DPL's losses."""
    cross_levels: tuple[int, ...]
    self_levels: tuple[int, ...]
    mid_level: int | None

    def map_selector(self) -> LayerSelector:
        """Cross-attention layers at the map level, outside the mid block."""
        return select_layers(kinds="cross", places=("down", "up"), levels=self.map_level)

    def injection_selector(self) -> LayerSelector:
        """Self-attention layers at the map level and coarser."""
        return select_layers(kinds="self", levels=[lv for lv in self.self_levels if lv >= self.map_level])

    def coarser_cross_selector(self) -> LayerSelector:
        return select_layers(kinds="cross", levels=[lv for lv in self.cross_levels if lv > self.map_level])

    @property
    def background_self_level(self) -> int:
        """Self-attention level of DPL's background clustering: one finer than the map level when it
        has self-attention (SD 1.x: 32x32 for 16x16 maps), else the map level."""
        finer = self.map_level - 1
        return finer if finer in self.self_levels else self.map_level

    def resolution(self, level: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = latent_hw
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w


def attention_plan(target: Any) -> AttentionPlan:
    """The :class:`AttentionPlan` of a UNet or pipeline."""
    unet = getattr(target, "unet", target)
    layers = list(discover_layers(unet).values())
    spatial = [la for la in layers if la.kind in ("self", "cross") and la.level is not None]
    cross = [la for la in spatial if la.kind == "cross"]
    if not cross:
        raise TechniqueError(f"this {type(unet).__name__} has no cross-attention layer with a known level",
                             "use a Stable Diffusion-style UNet2DConditionModel")
    mid = [la.level for la in cross if la.place == "mid"]
    mid_level = mid[0] if mid else None
    outer = sorted({la.level for la in cross if la.place != "mid"})
    if mid_level is not None:
        above = [lv for lv in outer if lv < mid_level]
        map_level = above[-1] if above else (outer[-1] if outer else mid_level)
    else:
        map_level = outer[-1]
    return AttentionPlan(
        map_level=map_level,
        cross_levels=tuple(sorted({la.level for la in cross})),
        self_levels=tuple(sorted({la.level for la in spatial if la.kind == "self"})),
        mid_level=mid_level,
    )


# --------------------------------------------------------------------------------------------------
# Controllers
# --------------------------------------------------------------------------------------------------


def _groups(prompts: Sequence[PromptTokens] | Sequence[Sequence[PromptTokens]]) -> list[list[PromptTokens]]:
    if prompts and isinstance(prompts[0], PromptTokens):
        groups = [list(prompts)]  # type: ignore[list-item]
    else:
        groups = [list(g) for g in prompts]  # type: ignore[union-attr]
    if not groups or any(len(g) < 2 for g in groups) or len({len(g) for g in groups}) != 1:
        raise InputError("Prompt-to-Prompt needs groups of a source prompt and at least one edit prompt, all of one size",
                         "pass [source, edit, ...] (or one such list per image)")
    return groups


def _edit_rows(call: AttentionCall, probs: torch.Tensor, group_size: int) -> tuple[slice, torch.Tensor]:
    rows = call.cond_rows()
    cond = probs[rows]
    if cond.shape[0] % group_size:
        raise TechniqueError(
            f"the batch has {cond.shape[0]} conditional rows, not a whole number of {group_size}-prompt groups",
            "run one image per prompt (num_images_per_prompt=1) with the controller's prompts",
        )
    return rows, cond.reshape(cond.shape[0] // group_size, group_size, *cond.shape[1:])


class CrossAttentionControl(AttentionTechnique):
    """Base of the cross-attention controllers: within the window the edit rows take ``R(P_src)``
    (times the equalizer, when re-weighting); outside it they keep their own maps.

    ``cross_replace`` is the window (fraction of the steps); ``word_windows`` gives some target words
    their own window. ``equalizer`` maps target words to scales (re-weighting).
    """

    name = "p2p-cross"
    order = EDIT_ORDER

    def __init__(
        self,
        prompts,
        cross_replace: float | Sequence[float] = 0.8,
        word_windows: Mapping[str, float | Sequence[float]] | None = None,
        equalizer_weights: Mapping[str, float] | None = None,
        num_inference_steps: int | None = None,
        selector: LayerSelector | None = None,
    ):
        super().__init__(selector or select_layers(kinds="cross"))
        self.groups = _groups(prompts)
        self.group_size = len(self.groups[0])
        self.window = step_window(cross_replace, "cross_replace")
        self.word_windows = {}
        for word, win in (word_windows or {}).items():
            if not any(g[e].has_word(word) for g in self.groups for e in range(1, self.group_size)):
                raise InputError(f"the word {word!r} of the cross-attention windows is not in any edit prompt",
                                 "give windows to words of the edit prompts")
            self.word_windows[word] = step_window(win, f"window of {word!r}")
        self.num_inference_steps = num_inference_steps
        L = self.groups[0][0].max_length
        eq = torch.ones(len(self.groups), self.group_size - 1, L)
        if equalizer_weights:
            for g, group in enumerate(self.groups):
                for e, tgt in enumerate(group[1:]):
                    eq[g, e] = equalizer(tgt, equalizer_weights)
        self.equalizer = eq if equalizer_weights else None
        self._alpha_cache: dict[tuple[int, int, str], torch.Tensor | None] = {}

    def needs_maps(self, layer: LayerInfo) -> bool:
        return True

    def on_run_start(self, context: AttentionContext) -> None:
        self._alpha_cache.clear()

    # -- the replacement R, per controller ---------------------------------------------------------
    def replace(self, src: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        """``R(P_src)`` for every edit: ``src`` (G, H, Q, K), ``edits`` (G, E, H, Q, K) -> like ``edits``."""
        raise NotImplementedError

    def _alpha(self, step: int, num_steps: int, device, keys: int) -> torch.Tensor | None:
        """(G, E, K) 0/1 window weights at ``step``, or None when no token is in its window."""
        key = (step, num_steps, str(device))
        if key not in self._alpha_cache:
            G, E = len(self.groups), self.group_size - 1
            alpha = torch.full((G, E, keys), float(in_window(self.window, step, num_steps)))
            for word, win in self.word_windows.items():
                on = float(in_window(win, step, num_steps))
                for g, group in enumerate(self.groups):
                    for e, tgt in enumerate(group[1:]):
                        pos = [p for p in tgt.word_positions(word) if p < keys]
                        alpha[g, e, pos] = on
            self._alpha_cache[key] = alpha.to(device) if bool(alpha.any()) else None
        return self._alpha_cache[key]

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        alpha = self._alpha(call.step_index, total_steps(call.context, self.num_inference_steps), probs.device, probs.shape[-1])
        if alpha is None:
            return probs
        rows, cond = _edit_rows(call, probs, self.group_size)
        src, edits = cond[:, 0], cond[:, 1:]
        new = self.replace(src, edits)
        if self.equalizer is not None:
            new = new * self.equalizer.to(new.device, new.dtype)[:, :, None, None, : new.shape[-1]]
        a = alpha[:, :, None, None, :].bool()
        mixed = torch.where(a, new.to(edits.dtype), edits)
        out = probs.clone()
        out[rows] = torch.cat([src[:, None], mixed], dim=1).reshape(-1, *probs.shape[1:])
        return out


class AttentionReplace(CrossAttentionControl):
    """Word swap: the edit's map of token ``n`` is ``sum_w P_src[w] M[w, n]`` (:func:`replace_mapper`)."""

    name = "p2p-replace"

    def __init__(self, prompts, *args, **kwargs):
        super().__init__(prompts, *args, **kwargs)
        self.mapper = torch.stack([torch.stack([replace_mapper(g[0], t) for t in g[1:]]) for g in self.groups])

    def replace(self, src: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        K = src.shape[-1]
        M = self.mapper.to(src.device, src.dtype)[:, :, :K, :K]  # (G, E, K, K)
        return torch.matmul(src[:, None], M[:, :, None])


class AttentionRefine(CrossAttentionControl):
    """Refinement: aligned tokens take the source's map of their aligned token, new words keep the
    edit's own (:func:`refine_mapper`)."""

    name = "p2p-refine"

    def __init__(self, prompts, *args, **kwargs):
        super().__init__(prompts, *args, **kwargs)
        pairs = [[refine_mapper(g[0], t) for t in g[1:]] for g in self.groups]
        self.index = torch.stack([torch.stack([p[0] for p in row]) for row in pairs])  # (G, E, L)
        self.flags = torch.stack([torch.stack([p[1] for p in row]) for row in pairs])

    def replace(self, src: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        K = src.shape[-1]
        index = self.index[:, :, :K].clamp(max=K - 1).to(src.device)
        G, E = index.shape[:2]
        gathered = torch.gather(
            src[:, None].expand(G, E, *src.shape[1:]), -1,
            index[:, :, None, None, :].expand(G, E, *src.shape[1:-1], K),
        )
        flags = self.flags[:, :, :K].to(src.device).bool()[:, :, None, None, :]
        return torch.where(flags, gathered, edits)


class AttentionReweight(CrossAttentionControl):
    """Re-weighting: the chosen target words' columns of the (refined) source-derived maps are
    scaled by their weights (``equalizer_weights``); other columns as :class:`AttentionRefine`."""

    name = "p2p-reweight"

    def __init__(self, prompts, equalizer_weights: Mapping[str, float], *args, **kwargs):
        if not equalizer_weights:
            raise InputError("re-weighting needs at least one word and its scale", "pass e.g. --reweight circle=2")
        super().__init__(prompts, *args, equalizer_weights=equalizer_weights, **kwargs)
        self._refine = AttentionRefine(prompts, *args, **kwargs)

    def replace(self, src: torch.Tensor, edits: torch.Tensor) -> torch.Tensor:
        return self._refine.replace(src, edits)


class SelfAttentionInjection(AttentionTechnique):
    """While the window is active, the edit rows' self-attention maps are the source's (on the
    layers of :meth:`AttentionPlan.injection_selector`)."""

    name = "p2p-self"
    order = EDIT_ORDER

    def __init__(self, selector: LayerSelector, group_size: int, self_replace: float | Sequence[float] = 0.4,
                 num_inference_steps: int | None = None):
        super().__init__(selector)
        self.window = step_window(self_replace, "self_replace")
        self.group_size = int(group_size)
        self.num_inference_steps = num_inference_steps

    def needs_maps(self, layer: LayerInfo) -> bool:
        return True

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        if not in_window(self.window, call.step_index, total_steps(call.context, self.num_inference_steps)):
            return probs
        rows, cond = _edit_rows(call, probs, self.group_size)
        out = probs.clone()
        out[rows] = cond[:, :1].expand_as(cond).reshape(-1, *probs.shape[1:])
        return out


class LocalBlend(AttentionTechnique):
    """Keeps the latent outside the edited words' region equal to the source's.

    It reads, at every step, the conditional source and edit cross-attention maps at the map level;
    after the scheduler step, :meth:`blend` (or :meth:`callback`, a ``callback_on_step_end``) sums the
    maps over each prompt's blend words, averages layers and heads, max-pools 3x3, resizes to the
    latent, divides by its maximum and thresholds at ``threshold``; an edit's mask is its own OR the
    source's, and ``latent = where(mask, latent, source latent)`` for every edit row. ``words`` is
    one list for every image, or one list per image (group).
    """

    name = "p2p-local-blend"
    order = OBSERVE_ORDER
    edits_maps = False
    reads_maps_after_forward = True

    def __init__(self, prompts, words: Sequence[str] | Sequence[Sequence[str]], selector: LayerSelector, threshold: float = 0.3,
                 start: float = 0.0, num_inference_steps: int | None = None):
        super().__init__(selector)
        self.groups = _groups(prompts)
        self.group_size = len(self.groups[0])
        self.threshold = check_finite("local blend threshold", threshold, 0.0, 1.0, low_inclusive=False, example=0.3)
        self.start = check_finite("local blend start", start, 0.0, 1.0, example=0.0)
        if words and not isinstance(words, str) and all(not isinstance(w, str) for w in words):
            per_group = [[w for w in ws if w.strip()] for ws in words]  # one list of words per group
            if len(per_group) != len(self.groups):
                raise InputError(f"{len(per_group)} local-blend word lists for {len(self.groups)} images",
                                 "pass one list of words per image, or one list for all")
        else:
            per_group = [[w for w in words if w.strip()]] * len(self.groups)
        if not any(per_group):
            raise InputError("local blend needs at least one word", "pass e.g. --local-blend circle")
        for group, ws in zip(self.groups, per_group):
            for word in ws:
                if not any(p.has_word(word) for p in group):
                    raise InputError(f"the local-blend word {word!r} is in none of the prompts", "blend on words of the prompts")
        self.words = per_group
        L = self.groups[0][0].max_length
        sel = torch.zeros(len(self.groups), self.group_size, L)
        for g, group in enumerate(self.groups):
            for p, prompt in enumerate(group):
                for word in self.words[g]:
                    sel[g, p, prompt.word_positions(word)] = 1.0
        self.token_select = sel
        self.num_inference_steps = num_inference_steps
        self._maps: torch.Tensor | None = None
        self._count = 0
        self._step = -1
        self._context: AttentionContext | None = None
        self.last_mask: torch.Tensor | None = None

    def needs_maps(self, layer: LayerInfo) -> bool:
        return True

    def on_run_start(self, context: AttentionContext) -> None:
        self._maps, self._count, self._step, self.last_mask = None, 0, -1, None
        self._context = context

    def observe_maps(self, calls: list[AttentionCall], probs: torch.Tensor) -> None:
        call = calls[0]
        self._context = call.context
        if call.step_index != self._step:
            self._maps, self._count, self._step = None, 0, call.step_index
        cond = probs[:, call.cond_rows()].detach().float().mean(dim=2).sum(dim=0)  # (rows, Q, K)
        self._resolution = call.resolution
        self._maps = cond if self._maps is None else self._maps + cond
        self._count += len(calls)

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        self.observe_maps([call], probs[None])
        return probs

    def mask(self, latent_hw: tuple[int, int]) -> torch.Tensor | None:
        """(G, E, 1, h, w) bool masks from the maps of the latest step, or None before any map."""
        if self._maps is None or self._resolution is None:
            return None
        h, w = self._resolution
        maps = self._maps / self._count
        rows, K = maps.shape[0], maps.shape[-1]
        G, P = rows // self.group_size, self.group_size
        sel = self.token_select.to(maps.device)[:, :, :K]
        words = (maps.reshape(G, P, h * w, K) * sel[:, :, None, :]).sum(-1).reshape(G * P, 1, h, w)
        pooled = F.max_pool2d(words, 3, stride=1, padding=1)
        pooled = F.interpolate(pooled, size=latent_hw, mode="nearest")
        peak = pooled.amax(dim=(2, 3), keepdim=True)
        norm = torch.where(peak > 0, pooled / peak.clamp_min(1e-12), torch.zeros_like(pooled))
        binary = (norm > self.threshold).reshape(G, P, 1, *latent_hw)
        return binary[:, :1] | binary[:, 1:]

    def blend(self, latents: torch.Tensor, step_index: int | None = None) -> torch.Tensor:
        """The latents after the step with each edit row outside its mask replaced by the source row."""
        ctx = self._context
        step = self._step if step_index is None else step_index
        if ctx is not None and step < math.floor(self.start * total_steps(ctx, self.num_inference_steps) + 1e-9):
            return latents
        mask = self.mask(tuple(latents.shape[-2:]))
        if mask is None:
            return latents
        self.last_mask = mask
        G, P = mask.shape[0], self.group_size
        x = latents.reshape(G, P, *latents.shape[1:])
        edits = torch.where(mask, x[:, 1:], x[:, :1].expand_as(x[:, 1:]))
        return torch.cat([x[:, :1], edits], dim=1).reshape(latents.shape)

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """Use as (or inside) ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs=["latents"]``."""
        if "latents" in callback_kwargs:
            callback_kwargs["latents"] = self.blend(callback_kwargs["latents"], step)
        return callback_kwargs


# --------------------------------------------------------------------------------------------------
# One call that builds the controllers of an edit
# --------------------------------------------------------------------------------------------------

MODES = ("replace", "refine", "reweight")


@dataclass
class EditControllers:
    """The techniques of one Prompt-to-Prompt edit, ready for :func:`~.manager.apply_techniques`."""

    cross: CrossAttentionControl
    self_injection: SelfAttentionInjection | None
    local_blend: LocalBlend | None

    @property
    def techniques(self) -> list[AttentionTechnique]:
        return [t for t in (self.cross, self.self_injection, self.local_blend) if t is not None]


def make_controllers(
    target: Any,
    prompts,
    mode: str = "replace",
    cross_replace: float | Sequence[float] = 0.8,
    self_replace: float | Sequence[float] = 0.4,
    word_windows: Mapping[str, float | Sequence[float]] | None = None,
    reweight: Mapping[str, float] | None = None,
    local_blend: Sequence[str] | None = None,
    local_blend_threshold: float = 0.3,
    num_inference_steps: int | None = None,
) -> EditControllers:
    """Controllers for ``prompts`` (:class:`PromptTokens` groups ``[source, edit, ...]``) on the UNet
    of ``target`` (a pipeline or UNet); layers from :func:`attention_plan`.

    ``mode``: ``replace`` (word swap), ``refine`` or ``reweight`` (refine plus ``reweight`` scales);
    ``reweight`` scales may also be given with ``replace``/``refine``, as P2P's amplification.
    """
    if mode not in MODES:
        raise InputError(f"unknown edit mode {mode!r}", f"pass one of {', '.join(MODES)}")
    plan = attention_plan(target)
    common = dict(cross_replace=cross_replace, word_windows=word_windows, num_inference_steps=num_inference_steps)
    if mode == "reweight":
        cross: CrossAttentionControl = AttentionReweight(prompts, reweight or {}, **common)
    elif mode == "replace":
        cross = AttentionReplace(prompts, equalizer_weights=reweight, **common)
    else:
        cross = AttentionRefine(prompts, equalizer_weights=reweight, **common)
    start, end = step_window(self_replace, "self_replace")
    injection = None
    if end > start:
        injection = SelfAttentionInjection(plan.injection_selector(), cross.group_size, (start, end), num_inference_steps)
    blend = None
    if local_blend:
        blend = LocalBlend(prompts, local_blend, plan.map_selector(), threshold=local_blend_threshold,
                           num_inference_steps=num_inference_steps)
    return EditControllers(cross=cross, self_injection=injection, local_blend=blend)
