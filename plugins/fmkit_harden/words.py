"""The word-substitution engine behind ``wordswap``: a greedy, gradient-guided attack that replaces whole
words by other whole words of the model's vocabulary (HotFlip, Ebrahimi et al. 2018), so that what it
produces is text a person can read, with as many words as before.

One example at a time: a forward and backward pass gives the loss and its gradient at each word's first
sub-token; the first-order estimate of the loss change from swapping that token's embedding ``e_w`` for a
candidate's ``e_c`` is ``(e_c - e_w) . grad``. The candidates for a word are its ``neighbours`` nearest
whole words in the model's own input embeddings (cosine), which keeps substitutes close in meaning (the
embedding constraint of TextFooler-style attacks, from the run's own foundation). Words are tried in the
order of their best estimate, each with its ``candidates`` best substitutes in real forward passes
(counted as queries); a swap is kept when it raises the loss, until the example's prediction turns
wrong, ``budget`` of its words are changed or ``queries`` are spent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

from fmkit.plugin import IGNORE, Example, Feature, FmkitError, Sentence, Task, encode, model_inputs, prediction_batches
from fmkit_harden.embeddings import input_embedding

if TYPE_CHECKING:
    import torch
    from torch import nn

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")
"""A word of a text (classify): letters, with inner apostrophes; what lies between words is kept as it is."""


def stopwords() -> frozenset[str]:
    """English function words (scikit-learn's list): never replaced, never a substitute."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return ENGLISH_STOP_WORDS


@dataclass(frozen=True)
class Words:
    """An example seen as the words the attack may replace. A NER sentence is its words (``gaps`` None);
    a text is cut into words and the strings between them (``gaps``: one more than words)."""

    example: Example
    words: tuple[str, ...]
    gaps: tuple[str, ...] | None = None

    @classmethod
    def of(cls, example: Example) -> Words:
        if isinstance(example, Sentence):
            return cls(example, tuple(example.words))
        found = list(WORD.finditer(example.text))
        edges = [0, *(x for m in found for x in m.span()), len(example.text)]
        gaps = tuple(example.text[a:b] for a, b in zip(edges[::2], edges[1::2]))
        return cls(example, tuple(m.group() for m in found), gaps)

    def replaced(self, index: int, word: str) -> Words:
        """The example with word ``index`` replaced by ``word`` (a NER sentence keeps its tags, a text its label)."""
        words = (*self.words[:index], word, *self.words[index + 1:])
        if self.gaps is None:
            return Words(replace(self.example, words=list(words), text=None), words)
        text = "".join(g + w for g, w in zip(self.gaps, words)) + self.gaps[-1]
        return Words(replace(self.example, text=text), words, self.gaps)

    def starts(self) -> list[int]:
        """Character offset of each word in the text (texts only)."""
        offsets, position = [], 0
        for gap, word in zip(self.gaps, self.words):
            position += len(gap)
            offsets.append(position)
            position += len(word)
        return offsets


@dataclass
class Attacked:
    """What the attack made of one example. The losses are over the same words, those it did not replace."""

    example: Example  # the perturbed example (the original when nothing was changed)
    changed: int  # words replaced
    words: int  # words in the example
    queries: int  # forward passes spent on it, the gradient pass included
    loss_before: float
    loss_after: float


@dataclass
class Scored:
    """One forward pass over an example (all its windows), per word (NER) or under the key 0 (a text's
    label): the loss, whether the prediction is right (argmax: the attack's quick judge, not the decoding
    of the metrics) and the class predicted."""

    loss: dict[int, float]
    right: dict[int, bool]
    predicted: dict[int, int]

    def mean_loss(self, skip: frozenset[int] = frozenset()) -> float:
        values = [v for k, v in self.loss.items() if k not in skip]
        return sum(values) / len(values) if values else 0.0

    def all_right(self, skip: frozenset[int] = frozenset()) -> bool:
        return all(v for k, v in self.right.items() if k not in skip)


class WordAttack:
    """The attack, for one task and tokenizer; ``attack(model, example)`` runs it on one labelled example.

    ``eligible`` decides which words may change: alphabetic, not a stopword and, for NER, tagged ``O``
    (a word inside a gold entity never changes, so the gold spans stay valid)."""

    def __init__(self, task: Task, tokenizer: Any, max_length: int, *, budget: float, queries: int,
                 candidates: int, neighbours: int):
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self.budget, self.queries, self.candidates, self.neighbours = budget, queries, candidates, neighbours
        self.stop = stopwords()
        self._vocabulary: tuple[list[str], list[int]] | None = None

    def limit(self, words: int) -> int:
        """The most words of an example of ``words`` words that may change: ``budget`` of them, rounded down."""
        return math.floor(self.budget * words + 1e-9)

    def eligible(self, words: Words) -> list[int]:
        tags = words.example.tags if isinstance(words.example, Sentence) else None
        return [i for i, w in enumerate(words.words)
                if w.isalpha() and w.lower() not in self.stop and (tags is None or tags[i] == "O")]

    @property
    def vocabulary(self) -> tuple[list[str], list[int]]:
        """The substitutes: vocabulary entries that are whole words (the tokenizer reads the word alone as
        exactly that one token: no '##' pieces), alphabetic, two letters or more, not stopwords."""
        if self._vocabulary is None:
            tok = self.tokenizer
            special = set(tok.all_special_ids)
            entries = [(tok.convert_tokens_to_string([t]).strip(), i) for t, i in tok.get_vocab().items()
                       if i not in special]
            entries = [(w, i) for w, i in entries if len(w) >= 2 and w.isalpha() and w.lower() not in self.stop]
            encoded = tok([w for w, _ in entries], add_special_tokens=False)["input_ids"] if entries else []
            whole = sorted((i, w) for (w, i), ids in zip(entries, encoded) if ids == [i])
            if not whole:
                raise FmkitError("wordswap: the tokenizer's vocabulary has no whole words to substitute")
            self._vocabulary = [w for _, w in whole], [i for i, _ in whole]
        return self._vocabulary

    def attack(self, model: nn.Module, example: Example) -> Attacked:
        """The greedy attack on one labelled example (see the module's docstring); ``model`` in eval mode.

        NER judges a swap on the words it did not replace (their gold tags stay true whatever the new word
        is) and refuses a substitute the model tags as an entity: the gold spans must stay the truth."""
        words = Words.of(example)
        limit, eligible = self.limit(len(words.words)), self.eligible(words)
        if limit == 0 or not eligible:
            return Attacked(example, 0, len(words.words), 0, math.nan, math.nan)
        clean, ranked = self.rank(model, words, eligible)
        queries, current, swapped = 1, clean, frozenset()
        right_before = bool(clean.right) and clean.all_right()  # a label the model never saw is never right
        if self.task.kind != "ner" and not right_before:  # already misclassified: nothing to attack
            return Attacked(example, 0, len(words.words), queries, clean.mean_loss(), clean.mean_loss())
        outside = self.task.label2id.get("O")
        for index, substitutes in ranked:
            if len(swapped) == limit or queries >= self.queries:
                break
            trials = [words.replaced(index, s) for s in substitutes[: self.queries - queries]]
            scored = self.score(model, [t.example for t in trials])
            queries += len(trials)
            skip = swapped | {index}
            valid = [k for k, s in enumerate(scored) if self.task.kind != "ner" or s.predicted.get(index) == outside]
            best = max(valid, key=lambda k: scored[k].mean_loss(skip), default=None)
            if best is not None and scored[best].mean_loss(skip) > current.mean_loss(skip):
                words, current, swapped = trials[best], scored[best], skip
                if right_before and not current.all_right(swapped):
                    break
        return Attacked(words.example, len(swapped), len(words.words), queries, clean.mean_loss(swapped),
                        current.mean_loss(swapped))

    def rank(self, model: nn.Module, words: Words, eligible: list[int]) -> tuple[Scored, list[tuple[int, list[str]]]]:
        """One forward and backward pass: the clean loss, and the eligible words in the order of their best
        first-order estimate, each with its substitutes whose estimate is positive, best first."""
        import torch
        import torch.nn.functional as F

        features, where = self.gradient_inputs(words)
        eligible = [i for i in eligible if i in where]
        layer = input_embedding(model, "wordswap")
        (indices, batch), = prediction_batches(features, len(features), self.pad_id, layer.weight.device)
        row_of = {feature: row for row, feature in enumerate(indices)}
        with torch.inference_mode(False), torch.enable_grad():
            embeds = layer(batch["input_ids"]).detach().requires_grad_(True)
            inputs = {k: v for k, v in model_inputs(batch).items() if k != "input_ids"}
            logits = model(**inputs, inputs_embeds=embeds).logits
            scored = self.judge(logits, batch["labels"], [features[i] for i in indices], 1)[0]
            target = self.gradient_target(batch["labels"], [where[i] for i in eligible], row_of)
            loss = F.cross_entropy(logits.float().flatten(0, -2), target.flatten(), ignore_index=IGNORE)
            (grad,) = torch.autograd.grad(loss, embeds)
        if not eligible:
            return scored, []
        spots = [(row_of[where[i][0]], where[i][1]) for i in eligible]
        rows, positions = torch.tensor([r for r, _ in spots]), torch.tensor([p for _, p in spots])
        original = batch["input_ids"][rows, positions]
        table = layer.weight.detach().float()
        vocab_words, vocab_ids = self.vocabulary
        pool = table[torch.tensor(vocab_ids, device=table.device)]
        similar = F.normalize(table[original], dim=-1) @ F.normalize(pool, dim=-1).T  # (words, vocabulary)
        near = similar.topk(min(self.neighbours + 1, len(vocab_ids)), dim=-1).indices  # +1: the word itself
        estimate = torch.einsum("wkh,wh->wk", pool[near] - table[original][:, None], grad[rows, positions].float())
        ranked = []
        for k, index in enumerate(eligible):
            own = words.words[index].lower()
            options = [(float(e), vocab_words[int(c)]) for e, c in zip(estimate[k], near[k])
                       if e > 0 and vocab_words[int(c)].lower() != own]
            options.sort(key=lambda option: -option[0])
            if options:
                ranked.append((options[0][0], index, [w for _, w in options[: self.candidates]]))
        ranked.sort(key=lambda r: -r[0])
        return scored, [(index, substitutes) for _, index, substitutes in ranked]

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    def gradient_inputs(self, words: Words) -> tuple[list[Feature], dict[int, tuple[int, int]]]:
        """The example's model inputs as the core encodes it, and where each word's first sub-token is:
        ``{word: (feature, position)}`` (words cut off by truncation are absent)."""
        example = words.example
        if words.gaps is None:  # NER: the core's windows say which window predicts each word
            features = encode(self.task, [example], self.tokenizer, self.max_length)
            return features, {word: (f, position) for f, feature in enumerate(features)
                              for word, position in feature.word_positions}
        if not getattr(self.tokenizer, "is_fast", False):
            raise FmkitError("wordswap: attacking texts needs a fast tokenizer (character offsets of the tokens)")
        pair = example.text_pair
        encoded = self.tokenizer(example.text, pair, truncation=True, max_length=self.max_length,
                                 return_offsets_mapping=True)
        first = {}
        for position, (sequence, (start, _)) in enumerate(zip(encoded.sequence_ids(), encoded["offset_mapping"])):
            if sequence == 0:
                first.setdefault(start, position)
        label = self.task.label2id.get(example.label, IGNORE)
        feature = Feature(0, encoded["input_ids"], encoded.get("token_type_ids") if pair is not None else None, label)
        return [feature], {w: (0, first[s]) for w, s in enumerate(words.starts()) if s in first}

    def gradient_target(self, labels: torch.Tensor, spots: list[tuple[int, int]], row_of: dict[int, int]) -> torch.Tensor:
        """What the gradient climbs: the labels of the words no swap can replace (NER: the gold entities,
        stopwords and punctuation, whose tags stay true), or all of them when every word may change."""
        if self.task.kind != "ner":
            return labels
        kept = labels.clone()
        for feature, position in spots:
            kept[row_of[feature], position] = IGNORE
        return kept if bool((kept != IGNORE).any()) else labels

    def score(self, model: nn.Module, examples: Sequence[Example]) -> list[Scored]:
        """Each example's losses and predictions, in one batch of all their windows (no gradient)."""
        import torch

        features = encode(self.task, examples, self.tokenizer, self.max_length)
        device = input_embedding(model, "wordswap").weight.device
        (indices, batch), = prediction_batches(features, len(features), self.pad_id, device)
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
        return self.judge(logits, batch["labels"], [features[i] for i in indices], len(examples))

    def judge(self, logits: torch.Tensor, labels: torch.Tensor, rows: Sequence[Feature], count: int) -> list[Scored]:
        """Per example (``Feature.example``), per word read at the first sub-token of the window that predicts
        it (NER) or for its label: the loss, whether the argmax is right, and the argmax."""
        import torch.nn.functional as F

        losses = F.cross_entropy(logits.detach().float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE,
                                 reduction="none").view(labels.shape).cpu()
        predicted, labels = logits.detach().argmax(dim=-1).cpu(), labels.cpu()
        out = [Scored({}, {}, {}) for _ in range(count)]
        for row, feature in enumerate(rows):
            scored = out[feature.example]
            spots = feature.word_positions if self.task.kind == "ner" else [(0, None)]
            for word, position in spots:
                at = (row,) if position is None else (row, position)
                if int(labels[at]) != IGNORE:
                    scored.loss[word] = float(losses[at])
                    scored.right[word] = bool(predicted[at] == labels[at])
                    scored.predicted[word] = int(predicted[at])
        return out
