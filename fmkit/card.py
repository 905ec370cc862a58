"""The model card every run writes as its ``README.md``: Hugging Face model-card metadata (base model,
datasets, the model-index with the held-out metrics, fmkit's plugins and options) and a short text: what
it was trained on, how to load it without fmkit (code a test runs), its per-type scores, its limits.

What the card says about loading is read from the files the run saved (an adapter's ``adapter_config.json``,
an ensemble's ``ensemble.json``, a model type transformers does not know) and, for how an ensemble
combines its members, from the combine plugin (``Ensemble.combine_code`` / ``Ensemble.standalone``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmkit.artifacts import BASE_DIR, ENSEMBLE_FILE, MEMBERS_DIR, MODEL_DIR

TASKS = {  # task kind -> (model-index task type, its name, transformers auto class, pipeline)
    "ner": ("token-classification", "Named-entity recognition", "AutoModelForTokenClassification",
            "token-classification"),
    "classify": ("text-classification", "Text classification", "AutoModelForSequenceClassification",
                 "text-classification"),
    "multimodal": ("text-classification", "Multimodal classification", "", ""),
}
METRIC_NAMES = {"f1": "entity F1 (seqeval, strict)", "precision": "entity precision", "recall": "entity recall",
                "accuracy": "accuracy", "macro_f1": "macro F1"}
EXAMPLE = {"ner": "Barack Obama visited Paris .", "classify": "a wonderful film", "multimodal": "a wonderful film"}


def model_card(record: dict[str, Any], metrics: dict[str, Any], report: str, ensemble: Any, model_dir: Path,
               target: Path) -> str:
    """The run's README.md: YAML metadata, then the text."""
    import yaml

    return "---\n" + yaml.safe_dump(metadata(record, metrics, model_dir), sort_keys=False, allow_unicode=True) \
        + "---\n\n" + text(record, metrics, report, ensemble, model_dir, target)


def held_out(metrics: dict[str, Any]) -> str:
    """The split whose scores the card reports: test, else dev (which also picked the model)."""
    return "test" if "test" in metrics else "dev"


def metadata(record: dict[str, Any], metrics: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    task, config = record["task"], record["config"]
    task_type, task_name, _, _ = TASKS[task["kind"]]
    split = held_out(metrics)
    dataset = metrics.get("data", "").split(":")[0] or "training data"
    meta: dict[str, Any] = {"library_name": "peft" if _adapter_files(model_dir) else "transformers"}
    if record["foundation"].get("origin"):
        meta["base_model"] = record["foundation"]["origin"]
    meta["pipeline_tag"] = task_type
    meta["tags"] = ["fmkit", task["kind"], *record["plugins"]]
    meta["datasets"] = [dataset]
    meta["model-index"] = [{
        "name": record["run"],
        "results": [{
            "task": {"type": task_type, "name": task_name},
            "dataset": {"name": dataset, "type": dataset, "split": split},
            "metrics": [{"type": name, "value": round(float(metrics[split][name]), 4), "name": METRIC_NAMES[name]}
                        for name in METRIC_NAMES if name in metrics[split]],
        }],
    }]
    meta["fmkit"] = {"version": record["fmkit_version"], "seed": config["seed"],
                     "plugins": {name: {"stage": p["stage"], "package": f"{p['package']} {p['version']}",
                                        "options": p["options"]} for name, p in record["plugins"].items()},
                     "train": config["train"]}
    return meta


def text(record: dict[str, Any], metrics: dict[str, Any], report: str, ensemble: Any, model_dir: Path,
         target: Path) -> str:
    task, foundation = record["task"], record["foundation"]
    split = held_out(metrics)
    types = sorted({label.split("-", 1)[1] for label in task["labels"] if label != "O"}) if task["kind"] == "ner" \
        else task["labels"]
    plugins = ", ".join(f"`{name}`" for name in record["plugins"])
    lines = [
        f"# {record['run']}",
        "",
        f"{TASKS[task['kind']][1]} ({len(types)} {'entity types' if task['kind'] == 'ner' else 'labels'}: "
        f"{', '.join(types)}), trained by fmkit {record['fmkit_version']} from "
        f"`{foundation.get('origin') or foundation['source'] or foundation['path']}` with the plugins {plugins}, "
        f"on {metrics.get('data', 'the training data')}.",
        "",
        "## How to load",
        "",
        *loading(record, ensemble, model_dir, target),
        "",
        f"With fmkit, on any run: `fmkit.load(\"{target}\").predict([...])`"
        + (" gives entity spans with character offsets and scores" if task["kind"] == "ner"
           else " gives each label with its probabilities") + " (docs/api.md); "
        f"`fmkit export {target} OUT` writes one plain transformers model when the run is one.",
        "",
        "## Scores",
        "",
        *scores(metrics, split),
        "",
        f"Per {'entity type' if task['kind'] == 'ner' else 'label'} ({split}):",
        "",
        "```",
        _report_of(report, split).rstrip(),
        "```",
        "",
        "## Limits",
        "",
        *limits(record, metrics, split, types),
        "",
    ]
    return "\n".join(lines)


def scores(metrics: dict[str, Any], split: str) -> list[str]:
    rows = ["| split | " + " | ".join(METRIC_NAMES[n] for n in METRIC_NAMES if n in metrics[split]) + " |",
            "|---" * (1 + sum(n in metrics[split] for n in METRIC_NAMES)) + "|"]
    for name in ("dev", "test"):
        if name in metrics:
            rows.append(f"| {name} | " + " | ".join(f"{metrics[name][n]:.4f}" for n in METRIC_NAMES if n in metrics[name])
                        + " |")
    for attack, by_split in metrics.get("robust", {}).items():
        if split in by_split:
            rows.append(f"| {split} under {attack} | " + " | ".join(f"{by_split[split][n]:.4f}" for n in METRIC_NAMES
                                                                     if n in by_split[split]) + " |")
    return rows


def limits(record: dict[str, Any], metrics: dict[str, Any], split: str, types: list[str]) -> list[str]:
    task, config = record["task"], record["config"]
    size = metrics.get("data", "")
    out = [f"- Learned from one source ({size.split(':')[0] or 'the training data'}); expect lower scores on text "
           "unlike it (another domain, language or period).",
           f"- It predicts only what it was trained on: {', '.join(types)}."]
    if task["kind"] == "ner":
        out.append("- Words are cut as the training corpus cuts them (fmkit splits raw text into words, "
                   "punctuation, @mentions, #hashtags and URLs); a sentence longer than "
                   f"{config['train']['max_length']} sub-tokens is read in overlapping windows.")
    else:
        out.append(f"- Texts longer than {config['train']['max_length']} sub-tokens are cut.")
    out.append(f"- The {split} scores come from {_count(size, split)} examples: differences of a point or two "
               "between runs can be noise." + (" No test split was held out: dev also picked the model, so its "
                                               "score is optimistic." if split == "dev" else ""))
    if "robust" not in metrics:
        out.append("- Not evaluated under attack (`fmkit eval RUN --data FILE --attack pgd` measures it).")
    return out


def loading(record: dict[str, Any], ensemble: Any, model_dir: Path, target: Path) -> list[str]:
    """Markdown that loads the saved model(s) without fmkit, with code that runs as written."""
    kind = record["task"]["kind"]
    _, _, auto, pipeline = TASKS[kind]
    folder = f"{target}/{MODEL_DIR}"
    standalone = getattr(ensemble, "standalone", None)
    if not auto or not _transformers_type(model_dir / (standalone or "")):
        return [f"Its model is fmkit's own (`{_model_type(model_dir)}`), not a transformers architecture: load it "
                "with fmkit installed, with the plugins the run used:", "", "```python", "import fmkit", "",
                f"predictor = fmkit.load(\"{target}\")",
                "print(predictor.predict([{\"text\": \"" + EXAMPLE[kind] + "\"}]))  # with the image and/or "
                "features the run was trained on", "```"]
    if (model_dir / ENSEMBLE_FILE).is_file() and not standalone:
        return ensemble_loading(record, ensemble, model_dir, target)
    path = f"{folder}/{standalone}" if standalone else folder
    lines = []
    if standalone:
        lines += [f"The members' weights are averaged into one plain model in `{MODEL_DIR}/{standalone}`:", ""]
    if (Path(model_dir) / "config.json").is_file() or standalone:
        lines += [f"`{auto}.from_pretrained` loads it with its label maps"
                  + (", the adapter on the base model saved beside it (no download)" if _adapter_files(model_dir)
                     and not standalone else "") + ":", "",
                  "```python", f"from transformers import {auto}, AutoTokenizer, pipeline", "",
                  f"model = {auto}.from_pretrained(\"{path}\")",
                  f"tokenizer = AutoTokenizer.from_pretrained(\"{folder}\")",
                  f"predict = pipeline(\"{pipeline}\", model=model, tokenizer=tokenizer"
                  + (", aggregation_strategy=\"first\"" if kind == "ner" else "") + ")",
                  f"print(predict(\"{EXAMPLE[kind]}\"))", "```"]
    if _adapter_files(model_dir) and not standalone:
        lines += ["", *peft_loading(record, folder, auto)]
    return lines


def peft_loading(record: dict[str, Any], folder: str, auto: str) -> list[str]:
    """PEFT's own call, which builds the base model from the hub id in adapter_config.json: the label maps
    must be passed, since the foundation's hub config has none of this task's."""
    origin = record["foundation"].get("origin")
    labels = record["task"]["labels"]
    base = f"the hub model `{origin}`" if origin else f"`{record['foundation']['path']}` (no hub id is known for it)"
    return [f"With PEFT, on the base model {base} (downloaded, or from the hub cache), or on a local copy of it:", "",
            "```python", f"from peft import AutoPeftModel{auto[len('AutoModel'):]}, PeftModel",
            f"from transformers import {auto}", "",
            f"id2label = {dict(enumerate(labels))!r}",
            "label2id = {label: i for i, label in id2label.items()}",
            f"model = AutoPeftModel{auto[len('AutoModel'):]}.from_pretrained(\"{folder}\", num_labels=len(id2label), "
            "id2label=id2label, label2id=label2id)",
            "# or on a local copy of the base model:",
            f"# base = {auto}.from_pretrained(\"path/to/base\", num_labels=len(id2label), id2label=id2label, "
            "label2id=label2id)",
            f"# model = PeftModel.from_pretrained(base, \"{folder}\")", "```"]


def ensemble_loading(record: dict[str, Any], ensemble: Any, model_dir: Path, target: Path) -> list[str]:
    """Each member with the standard calls (adapters on the one base model saved in model/base), then the
    combine plugin's rule over their probabilities."""
    kind = record["task"]["kind"]
    auto = TASKS[kind][2]
    folder = f"{target}/{MODEL_DIR}"
    combine = getattr(ensemble, "combine_code", None)
    adapters = (model_dir / BASE_DIR / "config.json").is_file()
    code = ["import json", "", "import torch", f"from transformers import {auto}, AutoTokenizer"]
    if adapters:
        code += ["from peft import PeftModel", ""]
    else:
        code += [""]
    code += [f"model_dir = \"{folder}\"", f"layout = json.load(open(f\"{{model_dir}}/{ENSEMBLE_FILE}\"))",
             "state = layout[\"state\"]", "names = [member[\"name\"] for member in layout[\"members\"]]",
             "tokenizer = AutoTokenizer.from_pretrained(model_dir)"]
    if adapters:
        code += [f"model = PeftModel.from_pretrained({auto}.from_pretrained(f\"{{model_dir}}/{BASE_DIR}\"), "
                 f"f\"{{model_dir}}/{MEMBERS_DIR}/{{names[0]}}\", adapter_name=names[0]).eval()",
                 "for name in names[1:]:",
                 f"    model.load_adapter(f\"{{model_dir}}/{MEMBERS_DIR}/{{name}}\", adapter_name=name)",
                 "id2label = model.config.id2label", "",
                 "def member_probabilities(inputs):", "    out = []", "    for name in names:",
                 "        model.set_adapter(name)", "        out.append(model(**inputs).logits.softmax(-1)[0])",
                 "    return out"]
    else:
        code += [f"members = [{auto}.from_pretrained(f\"{{model_dir}}/{MEMBERS_DIR}/{{name}}\").eval() for name in names]",
                 "id2label = members[0].config.id2label", "",
                 "def member_probabilities(inputs):",
                 "    return [member(**inputs).logits.softmax(-1)[0] for member in members]"]
    code += ["", f"inputs = tokenizer(\"{EXAMPLE[kind]}\", return_tensors=\"pt\")", "with torch.no_grad():",
             "    probs = member_probabilities(inputs)  # one tensor per member, in ensemble.json's order"]
    if callable(combine):
        code += [*combine().strip().splitlines(),
                 "print([id2label[int(i)] for i in combined.argmax(-1).reshape(-1)])"
                 + ("  # one label per sub-token, [CLS] and [SEP] included" if kind == "ner" else "")]
    members = "adapters on the one base model saved in `model/base`" if adapters else "whole models"
    return [f"An ensemble of {len(ensemble.members)} members, {members}, in `model/members/NAME`, listed with the "
            f"combination's state in `model/{ENSEMBLE_FILE}`. Without fmkit:", "", "```python", *code, "```",
            *([] if callable(combine) else ["", "(The combine plugin gives no code for its combination: "
                                                "load the run with fmkit.load to predict with it.)"])]


def _adapter_files(model_dir: Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def _model_type(folder: Path) -> str:
    config = Path(folder) / "config.json"
    if not config.is_file():
        members = sorted((Path(folder) / MEMBERS_DIR).glob("*/config.json"))
        config = members[0] if members else config
    return json.loads(config.read_text(encoding="utf-8")).get("model_type", "") if config.is_file() else ""


def _transformers_type(folder: Path) -> bool:
    """Whether transformers knows the saved model's architecture (fmkit's fusion models it does not)."""
    from transformers import CONFIG_MAPPING

    model_type = _model_type(folder)
    return not model_type or model_type in CONFIG_MAPPING


def _report_of(report: str, split: str) -> str:
    """The per-label report of ``split`` from the run's report text (sections ``== split (N examples) ==``)."""
    for section in report.split("== ")[1:]:
        if section.startswith(f"{split} "):
            return section.split("==\n", 1)[-1]
    return report


def _count(description: str, split: str) -> str:
    """The size of ``split`` from the data description ('...: 1915 train / 240 dev / 239 test (...)')."""
    for part in description.split(":", 1)[-1].split("/"):
        words = part.split()
        if len(words) >= 2 and words[1] == split:
            return words[0]
    return "its"
