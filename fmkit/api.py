"""The Python API for users (docs/api.md): train a run, load a saved one and predict with it, export it.
The ``fmkit`` command is a thin layer over these functions. Importing this module stays cheap: torch and
transformers load when a run is trained or loaded.

    import fmkit

    result = fmkit.run({"task": "ner", "data": {"train": "train.conll"}, "train": {"epochs": 3}})
    predictor = fmkit.load(result.directory)
    predictor.predict(["Barack Obama visited Paris ."])[0].entities
    # [Entity(type='person', start=0, end=12, text='Barack Obama', score=0.97), Entity(type='geo-loc', ...)]
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, Union

from fmkit.errors import FmkitError

Input = Union[str, Sequence[str], Mapping[str, Any]]
"""One input to predict: a text; for ner also a list of words (already split); for classify or multimodal a
mapping with the fields the run was trained on (``text``, ``text_pair``, ``image``, ``features``, ...)."""


@dataclass(frozen=True)
class Entity:
    """An entity found in a text: its type, its characters ``text[start:end]`` and the model's confidence
    (the mean probability of its words' tags)."""

    type: str
    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class Tagged:
    """The ner prediction for one input: its entities, and the words with their tags (IOB2 or IOBES)."""

    text: str
    entities: list[Entity]
    words: list[str]
    tags: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Classified:
    """The classify or multimodal prediction for one input: the label and every label's probability."""

    label: str
    probabilities: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


Prediction = Union[Tagged, Classified]


@dataclass(frozen=True)
class RunResult:
    """A finished training: where its run directory is, and its metrics (as in ``metrics.json``)."""

    directory: Path
    metrics: dict[str, Any] = field(repr=False)


def run(config: str | Path | Mapping[str, Any] | None = None, *, callbacks: Sequence[Any] = (),
        **options: Any) -> RunResult:
    """Train, evaluate and save a run, as ``fmkit run`` does, and return its directory and metrics.

    ``config`` is a YAML or TOML file, a run's own ``config.json`` (to reproduce it), or a mapping with the same
    keys; ``options`` add to it, with the same keys (``task="ner"``, ``plugins="adapter,bagging"``,
    ``data={"train": "my.conll"}``, ``train={"epochs": 3}``, ``adapter={"r": 4}``). ``callbacks``: objects
    with ``@fmkit.hookimpl`` methods, registered on this run's plugin manager: an ``fmkit_event`` method hears
    the run's events and may stop a member's training (docs/api.md, "Callbacks")."""
    from fmkit.config import build_config, deep_update, read_config_file
    from fmkit.pipeline import execute
    from fmkit.registry import discover, select

    available = discover()
    values = read_config_file(Path(config)) if isinstance(config, (str, Path)) else dict(config or {})
    resolved = build_config(deep_update(values, dict(options)), {}, [], set(available))
    directory, metrics = execute(resolved, select(resolved, available, callbacks=callbacks))
    return RunResult(directory, metrics)


def load(run_dir: str | Path, *, base_model: str | None = None, attack: str | None = None,
         settings: Sequence[str] = ()) -> Predictor:
    """A saved run, ready to predict. ``base_model``: a local copy (or hub id) of the foundation, for runs
    that reload on it (prompt tuning) where the one they were trained on is not here. ``attack``: a harden
    plugin whose attack ``Predictor.evaluate`` also scores (``settings``: its options, ``NAME.OPTION=VALUE``)."""
    from fmkit.artifacts import load as load_run

    return Predictor(load_run(Path(run_dir), attack, settings, base_model), Path(run_dir))


def export(run_dir: str | Path, out: str | Path, *, base_model: str | None = None) -> Path:
    """Write the run as one plain transformers model directory in ``out`` (which must not exist): its model
    with any adapter merged into the weights, or a soup's averaged model; the tokenizer beside it."""
    from fmkit.artifacts import MODEL_DIR
    from fmkit.model import quiet_transformers

    out = Path(out)
    if out.exists():
        raise FmkitError(f"{out} already exists; choose another path")
    predictor = load(run_dir, base_model=base_model)
    ensemble, run_state = predictor.loaded.ensemble, predictor.loaded.run
    standalone = getattr(ensemble, "standalone", None)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with quiet_transformers():
        if standalone:
            shutil.copytree(Path(run_dir) / MODEL_DIR / standalone, partial)
        elif len(ensemble.members) == 1:
            model = run_state.hook.fmkit_adapt_merge(run=run_state, model=ensemble.members[0].model)
            if not callable(getattr(model, "save_pretrained", None)) or not hasattr(model, "config"):
                raise FmkitError(f"{run_dir}: its model is not a transformers model; load it with fmkit.load")
            model.save_pretrained(partial)
        else:
            raise FmkitError(f"{run_dir}: an ensemble of {len(ensemble.members)} models, which is not one model; "
                             "load it with fmkit.load, or see its README.md for its members")
        run_state.foundation.tokenizer.save_pretrained(partial)
    if json.loads((partial / "config.json").read_text(encoding="utf-8")).get("model_type") == "fmkit-fusion":
        shutil.rmtree(partial)
        raise FmkitError(f"{run_dir}: a fusion model, not a transformers architecture; load it with fmkit.load")
    os.replace(partial, out)
    return out


class Predictor:
    """A loaded run: ``predict`` turns inputs into entities (ner) or labels with probabilities (classify,
    multimodal), whatever plugins trained it; ``evaluate`` scores a labelled file."""

    def __init__(self, loaded: Any, directory: Path):
        self.loaded = loaded  # fmkit.artifacts.LoadedRun
        self.directory = directory

    @property
    def task(self) -> str:
        """``ner``, ``classify`` or ``multimodal``."""
        return self.loaded.run.task.kind

    @property
    def labels(self) -> list[str]:
        """What the model predicts: the tags (ner) or labels, in the order of its outputs."""
        return list(self.loaded.run.task.labels)

    def predict(self, inputs: Iterable[Input], batch_size: int | None = None) -> list[Prediction]:
        """One prediction per input, in order; the model runs in batches of ``batch_size`` (default the run's
        ``train.eval_batch_size``). Texts for ner are cut into words as tweet corpora are (``words_in``)."""
        return self._predict(self._examples(list(inputs)), batch_size)

    def predict_file(self, path: str | Path, fmt: str = "auto", batch_size: int | None = None) -> list[Prediction]:
        """Predict every input of a file in the run's task format: for ner CoNLL columns or one sentence a line
        (``fmt`` "conll", "text", or "auto" to tell them apart); a table, JSONL or .txt of one text a line
        otherwise. Errors name the file and line."""
        from fmkit.data import read_unlabeled

        return self._predict(read_unlabeled(self.loaded.run.config, Path(path), fmt), batch_size)

    def evaluate(self, path: str | Path) -> dict[str, Any]:
        """The metrics on a labelled file (with ``report``, the per-label text, and ``examples``); under the
        ``attack`` given to ``load``, also ``robust`` metrics and the attack's success rate."""
        from fmkit.assess import attack_targets, robust_metrics
        from fmkit.evaluate import softmax_predictor

        scorer, ensemble = self.loaded.scorer, self.loaded.ensemble
        examples = read_labelled(self.loaded.run, Path(path))
        result, predicted = scorer.evaluate(ensemble.predict_proba, examples, "eval")
        result["examples"] = len(examples)
        if self.loaded.attacks:
            result["robust"] = {}
            for member, model in attack_targets(ensemble).items():  # the combination, or each member
                clean = predicted if member is None else scorer.predict(softmax_predictor(model), examples, "eval")
                robust = robust_metrics(scorer, model, self.loaded.attacks, {"eval": examples}, {"eval": clean})
                suffix = "" if member is None else f" ({member})"
                result["robust"].update({name + suffix: by_split["eval"] for name, by_split in robust.items()})
        return result

    def _examples(self, inputs: list[Input]) -> list[Any]:
        """The readers' examples for ``inputs``: mappings go through the task's JSONL reader (so they are checked
        as a file's rows are, and name their position), texts and word lists are made directly."""
        from fmkit.data import read_unlabeled
        from fmkit.data.readers import Sentence, TextExample, input_content, words_in

        if any(isinstance(item, Mapping) for item in inputs):
            if self.task == "ner" or not all(isinstance(item, Mapping) for item in inputs):
                raise FmkitError(f"predict: a {self.task} run takes "
                                 + ("texts or lists of words" if self.task == "ner" else "all texts or all mappings"))
            name = Path("<inputs>.jsonl")
            try:
                rows = "\n".join(json.dumps(dict(item), default=_jsonable) for item in inputs).encode("utf-8")
            except TypeError as exc:
                raise FmkitError(f"predict: {exc}") from None
            with input_content(name, rows):
                return read_unlabeled(self.loaded.run.config, name)
        if self.task == "multimodal":
            raise FmkitError("predict: a multimodal run takes mappings with text and image and/or features")
        examples: list[Any] = []
        for line, item in enumerate(inputs, start=1):
            if isinstance(item, str):
                examples.append(Sentence([w for w, _, _ in words_in(item)], None, line, text=item)
                                if self.task == "ner" else TextExample(item, None, line))
            elif self.task == "ner" and isinstance(item, (list, tuple)) and all(isinstance(w, str) for w in item):
                examples.append(Sentence(list(item), None, line))
            else:
                raise FmkitError(f"predict: input {line} is a {type(item).__name__}, not a text")
        return examples

    def _predict(self, examples: list[Any], batch_size: int | None) -> list[Prediction]:
        from fmkit.assess import Scorer
        from fmkit.evaluate import labels_from_probs

        run = self.loaded.run
        filled = [i for i, e in enumerate(examples) if getattr(e, "words", True)]  # an empty text has no word
        probs: list[Any] = [None] * len(examples)
        if filled:
            found = Scorer(run).probabilities(self.loaded.ensemble.predict_proba, [examples[i] for i in filled],
                                              "predict", batch_size=batch_size)
            for i, p in zip(filled, found):
                probs[i] = p
        if self.task != "ner":
            return [Classified(label, {name: float(p) for name, p in zip(self.labels, row)})
                    for label, row in zip(labels_from_probs(run.task, probs), probs)]
        tags = [labels_from_probs(run.task, [p])[0] if p is not None else [] for p in probs]
        return [tagged(example, sentence_tags, p, self.labels) for example, sentence_tags, p in zip(examples, tags, probs)]


def tagged(sentence: Any, tags: list[str], probs: Any, labels: list[str]) -> Tagged:
    """The entities of one sentence, with character offsets into its text (the line it was read from, else
    its words joined by spaces) and each entity's mean tag probability."""
    from fmkit.data.readers import words_in
    from fmkit.data.schemes import entity_spans

    if sentence.text is not None:
        text, offsets = sentence.text, [(start, end) for _, start, end in words_in(sentence.text)]
    else:
        text, offsets, position = " ".join(sentence.words), [], 0
        for word in sentence.words:
            offsets.append((position, position + len(word)))
            position += len(word) + 1
    index = {label: i for i, label in enumerate(labels)}
    entities = []
    for kind, first, last in entity_spans(tags):
        start, end = offsets[first][0], offsets[last][1]
        score = sum(float(probs[w][index[tags[w]]]) for w in range(first, last + 1)) / (last - first + 1)
        entities.append(Entity(kind, start, end, text[start:end], round(score, 4)))
    return Tagged(text, entities, list(sentence.words), tags)


def read_labelled(run: Any, path: Path) -> list:
    """Read the labelled ``path`` as the saved run's task reads it; NER tags are brought to the run's scheme."""
    from fmkit.data import read_examples
    from fmkit.data.schemes import detect_scheme, iob1_to_iob2

    examples = read_examples(run.config, path)
    if run.task.kind == "ner" and detect_scheme([e.tags for e in examples]) == "IOB1" and run.task.scheme == "IOB2":
        for e in examples:
            e.tags = iob1_to_iob2(e.tags)
    return examples


def _jsonable(value: Any) -> Any:
    """Arrays in an input mapping (an image, features) as the nested lists the JSONL reader takes."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a text, number, list, array or path")
