"""Tokenisation into model inputs: labels on each word's first sub-token, long sentences windowed.

A NER sentence longer than ``max_length`` sub-tokens becomes several overlapping windows of whole
words; each word is *predicted* by exactly one window (the one where it sits furthest from an
edge), so every word gets a prediction and nothing is cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fmkit.data.readers import Sentence, TextExample
from fmkit.types import Task

IGNORE = -100


@dataclass
class Feature:
    """One model input: a sentence window (NER) or a text (classify)."""

    example: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    labels: list[int] | int | None
    word_positions: list[tuple[int, int]] | None = None  # NER: (word index, token position) it predicts
    extra: dict[str, Any] | None = None  # multimodal: per-example arrays by batch key (pixel_values, features)

    def __len__(self) -> int:
        return len(self.input_ids)


def _quiet(tokenizer: Any) -> None:
    """Windows are built from whole sentences on purpose: silence the 'sequence too long' warning."""
    tokenizer.model_max_length = int(1e9)


def encode(task: Task, examples: Sequence, tokenizer: Any, max_length: int) -> list[Feature]:
    """The model inputs of ``examples`` as the core encodes a split: NER windows labelled on each word's
    first sub-token, texts truncated to ``max_length``, multimodal arrays attached."""
    if task.kind == "ner":
        return encode_ner(examples, tokenizer, task.label2id, max_length)
    features = encode_texts(examples, tokenizer, task.label2id, max_length)
    if task.kind == "multimodal":
        from fmkit.data.multimodal import model_extras

        for feature, example in zip(features, examples):
            feature.extra = model_extras(example, task.inputs)
    return features


def encode_ner(sentences: Sequence[Sentence], tokenizer: Any, label2id: dict[str, int], max_length: int) -> list[Feature]:
    _quiet(tokenizer)
    encoded = tokenizer([s.words for s in sentences], is_split_into_words=True)
    features: list[Feature] = []
    for i, sentence in enumerate(sentences):
        words, ids, word_ids = sentence.words, encoded["input_ids"][i], encoded.word_ids(i)
        if len(set(word_ids) - {None}) < len(words):
            words, ids, word_ids = _with_unknown_for_empty(words, word_ids, tokenizer)
        tags = [label2id.get(t, label2id["O"]) for t in sentence.tags] if sentence.tags else None
        if len(ids) <= max_length:
            features.append(_ner_feature(i, ids, word_ids, tags, 0, 0, len(words)))
            continue
        counts = [0] * len(words)
        for w in word_ids:
            if w is not None:
                counts[w] += 1
        spans = windows(counts, budget=max_length - (len(ids) - sum(counts)))
        for (a, b), (own_a, own_b) in zip(spans, ownership(spans, len(words))):
            window = tokenizer([words[a:b]], is_split_into_words=True, truncation=True, max_length=max_length)
            features.append(_ner_feature(i, window["input_ids"][0], window.word_ids(0), tags, a, own_a, own_b))
    return features


def _with_unknown_for_empty(words: list[str], word_ids: list, tokenizer: Any) -> tuple[list[str], list, list]:
    """Words the tokenizer drops entirely (zero-width or control characters) become the unknown token."""
    present = set(word_ids)
    words = [w if i in present else (tokenizer.unk_token or w) for i, w in enumerate(words)]
    encoded = tokenizer([words], is_split_into_words=True)
    return words, encoded["input_ids"][0], encoded.word_ids(0)


def _ner_feature(example: int, ids: list[int], word_ids: list, tags: list[int] | None, offset: int, own_a: int, own_b: int) -> Feature:
    """Label each word's first sub-token; record where the words this window owns are."""
    labels = [IGNORE] * len(ids)
    positions = []
    previous = None
    for position, w in enumerate(word_ids):
        if w is not None and w != previous:
            word = w + offset
            if tags is not None:
                labels[position] = tags[word]
            if own_a <= word < own_b:
                positions.append((word, position))
        previous = w
    return Feature(example, list(ids), None, labels if tags is not None else None, positions)


def windows(counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Word spans [a, b) whose sub-tokens fit ``budget``, overlapping by about a quarter."""
    spans = []
    start, n = 0, len(counts)
    while True:
        end, used = start, 0
        while end < n and (end == start or used + counts[end] <= budget):
            used += counts[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            return spans
        start = max(start + 1, end - max((end - start) // 4, 1))


def ownership(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """Split [0, n) among overlapping spans at the middle of each overlap."""
    cuts = [0] + [(nxt[0] + cur[1]) // 2 for cur, nxt in zip(spans, spans[1:])] + [n]
    return list(zip(cuts, cuts[1:]))


def encode_texts(examples: Sequence[TextExample], tokenizer: Any, label2id: dict[str, int], max_length: int) -> list[Feature]:
    """Classification inputs, truncated to ``max_length`` (the count of cut texts is reported)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples and examples[0].text_pair is not None else None
    encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    type_ids = encoded.get("token_type_ids")
    return [
        Feature(
            i,
            encoded["input_ids"][i],
            type_ids[i] if (type_ids is not None and pairs is not None) else None,
            label2id.get(e.label, IGNORE) if e.label is not None else None,
        )
        for i, e in enumerate(examples)
    ]
