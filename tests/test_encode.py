import numpy as np
import pytest

from fmkit.data.batching import BucketBatchSampler, Collator, IndexedFeatures
from fmkit.data.encode import IGNORE, encode_ner, ownership, windows
from fmkit.data.readers import Sentence
from fmkit.evaluate import decode, example_probs, labels_from_probs
from fmkit.types import Task

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TASK = Task("ner", LABELS, "IOB2")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_labels_sit_on_first_sub_token_only(tokenizer):
    sentence = Sentence(["alice", "zzyzx", "paris"], ["B-PER", "O", "B-LOC"], 1)
    [feature] = encode_ner([sentence], tokenizer, TASK.label2id, max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(feature.input_ids)
    assert tokens[:2] == ["[CLS]", "alice"] and tokens[-1] == "[SEP]"
    assert tokens[2:7] == ["z", "##z", "##y", "##z", "##x"]
    assert feature.labels == [IGNORE, 3, 0, IGNORE, IGNORE, IGNORE, IGNORE, 1, IGNORE]
    assert feature.word_positions == [(0, 1), (1, 2), (2, 7)]


def test_words_the_tokenizer_drops_become_unknown(tokenizer):
    [feature] = encode_ner([Sentence(["alice", "\u200b", "rome"], ["B-PER", "O", "B-LOC"], 1)], tokenizer,
                           TASK.label2id, 64)
    assert [w for w, _ in feature.word_positions] == [0, 1, 2]
    assert tokenizer.convert_ids_to_tokens(feature.input_ids)[2] == "[UNK]"


def test_window_spans_fit_the_budget_overlap_and_ownership_partitions():
    counts = [1, 3, 2, 1, 4, 1, 1, 2, 1, 1, 3, 1]
    spans = windows(counts, budget=6)
    assert spans[0][0] == 0 and spans[-1][1] == len(counts)
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert c < b, "consecutive windows overlap"
        assert a < c, "windows advance"
    for a, b in spans:
        assert sum(counts[a:b]) <= 6 or b - a == 1
    owned = ownership(spans, len(counts))
    assert owned[0][0] == 0 and owned[-1][1] == len(counts)
    assert all(o[1] == p[0] for o, p in zip(owned, owned[1:]))
    assert all(a <= oa and ob <= b for (a, b), (oa, ob) in zip(spans, owned))


def test_long_sentence_is_windowed_and_every_word_gets_exactly_one_prediction(tokenizer):
    words = ["alice", "went", "to", "new", "york", "with", "bob", "today"] * 6  # 48 words, >60 sub-tokens
    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "B-PER", "O"] * 6
    features = encode_ner([Sentence(words, tags, 1)], tokenizer, TASK.label2id, max_length=16)
    assert len(features) > 3 and all(len(f) <= 16 for f in features)
    predicted_words = [w for f in features for w, _ in f.word_positions]
    assert sorted(predicted_words) == list(range(len(words)))

    def oracle(batch):  # predicts each token's gold label: the round trip must give back the tags
        import torch

        labels = batch["labels"].clamp(min=0)
        return torch.nn.functional.one_hot(labels, len(LABELS)).float()

    probs = example_probs(TASK, features, 1, oracle, batch_size=4, pad_id=0)
    assert labels_from_probs(TASK, probs) == [tags]


def test_viterbi_decoding_never_emits_an_orphan_inside_tag():
    probs = np.array([[0.1, 0.0, 0.0, 0.0, 0.9], [0.6, 0.0, 0.4, 0.0, 0.0]])  # argmax: I-PER then O
    assert decode(TASK, probs) in (["B-PER", "O"], ["O", "O"])
    iobes = Task("ner", ["O", "B-X", "I-X", "E-X", "S-X"], "IOBES")
    out = decode(iobes, np.array([[0.0, 0.6, 0.0, 0.0, 0.4], [0.9, 0.0, 0.0, 0.1, 0.0]]))
    assert out in (["S-X", "O"], ["B-X", "E-X"])


def test_bucket_sampler_covers_every_row_once_per_epoch_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500).tolist()
    sampler = BucketBatchSampler(lengths, batch_size=16, shuffle=True, seed=3)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(500))
    assert first == list(sampler), "same epoch, same order"
    sampler.set_epoch(1)
    assert first != list(sampler), "a new epoch reshuffles"
    padded = sum(len(b) * max(lengths[i] for i in b) for b in first)
    random_batches = [list(range(500))[i: i + 16] for i in range(0, 500, 16)]
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert padded < 0.7 * padded_random


def test_collator_pads_to_the_longest_in_the_batch(tokenizer):
    features = encode_ner([Sentence(["bob"], ["B-PER"], 1), Sentence(["alice", "saw", "rome"], ["B-PER", "O", "B-LOC"], 3)],
                          tokenizer, TASK.label2id, 64)
    data = IndexedFeatures(features)
    batch = Collator(pad_id=0, weights=[1.0, 2.0])([data[0], data[1]])
    assert batch["input_ids"].shape == (2, max(len(f) for f in features))
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * (batch["input_ids"].shape[1] - 3)
    assert batch["labels"][0, 3:].eq(IGNORE).all()
    assert batch["weights"].tolist() == [1.0, 2.0]
