"""Multimodal task and the fuse plugins on the tiny model: each fusion method learns a label that needs
both modalities, saves and reloads; a new method is one plugin subclass with its own head; the JSONL
reader's bad rows; train-only feature statistics; missing modalities; per-modality attacks; a
transformers vision encoder from a local directory."""

import json

import numpy as np
import pytest

from fmkit.cli import main
from fmkit.plugin import FmkitError, RunConfig
from fmkit.testing import FAST_TRAIN

TRAIN = [*FAST_TRAIN, "train.epochs=5", "train.new_lr=3e-3"]  # the tiny encoder, too, at FAST_TRAIN's rate
METHODS = ("concat", "gated", "attention", "lmf")


def settings(method: str) -> list[str]:
    return [x for s in (*TRAIN, f"{method}.dim=32") for x in ("--set", s)]


@pytest.fixture(scope="module")
def mm_files(tmp_path_factory):
    from fmkit_fuse.synthetic import write

    return write(tmp_path_factory.mktemp("mm"), {"train": 160, "dev": 40, "test": 40}, seed=0, features=2)


@pytest.fixture(scope="module")
def fused_runs(tiny_model, mm_files, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    for method in METHODS:
        code = main(["run", "--task", "multimodal", "--plugins", method, "--model", str(tiny_model),
                     "--train", str(mm_files["train"]), "--dev", str(mm_files["dev"]), "--test", str(mm_files["test"]),
                     "--runs-dir", str(runs), "--name", method, *settings(method)])
        assert code == 0
    return runs


@pytest.mark.parametrize("method", METHODS)
def test_fusion_learns_a_label_that_needs_both_modalities_and_reloads(method, fused_runs, mm_files, capsys):
    run = fused_runs / method
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9, metrics["test"]  # one modality alone: at most ~0.5
    contribution = metrics["members"]["model"]["modalities"]["test"]["contribution"]
    assert list(contribution) == ["text", "image", "features"]
    assert sum(contribution.values()) == pytest.approx(1.0, abs=1e-3) and min(contribution.values()) >= 0
    assert contribution["features"] < min(contribution["text"], contribution["image"]), "the features are noise"
    assert (run / "model" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(mm_files["test"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


def test_a_new_fusion_method_is_one_subclass_with_its_own_head(tiny_model, mm_files, tmp_path, capsys):
    """A method written outside the family (here: in this test) builds, trains, saves and reloads through
    the fuse stage; the family's modules know nothing about it."""
    import torch
    from torch import nn

    from fmkit.testing import installed_plugin
    from fmkit_fuse.fusion import FusionPlugin

    class MeanHead(nn.Module):
        measure = "equal shares"

        def __init__(self, spec):
            super().__init__()
            self.out = nn.Linear(spec.dim, len(spec.labels))

        def forward(self, parts):
            pooled = torch.stack([p.pooled for p in parts], dim=1)  # N x M x dim
            return self.out(pooled.mean(1)), torch.full(pooled.shape[:2], 1 / len(parts))

    class Mean(FusionPlugin):
        """Average the modalities' projections, then a linear classifier."""

        name = "mean"
        head_class = staticmethod(lambda: MeanHead)

    one_epoch = [x for s in (*FAST_TRAIN, "train.epochs=1", "mean.dim=32") for x in ("--set", s)]
    with installed_plugin("mean", Mean):  # as if a package registered it
        code = main(["run", "--task", "multimodal", "--plugins", "mean", "--model", str(tiny_model),
                     "--train", str(mm_files["train"]), "--dev", str(mm_files["dev"]), "--test", str(mm_files["test"]),
                     "--runs-dir", str(tmp_path), "--name", "mean", *one_epoch])
        assert code == 0
    run = tmp_path / "mean"
    assert json.loads((run / "model" / "config.json").read_text())["method"] == "mean"
    metrics = json.loads((run / "metrics.json").read_text())
    modalities = metrics["members"]["model"]["modalities"]
    assert modalities["measure"] == "equal shares"
    assert modalities["test"]["contribution"] == {"text": 0.3333, "image": 0.3333, "features": 0.3333}
    capsys.readouterr()
    with installed_plugin("mean", Mean):
        assert main(["eval", str(run), "--data", str(mm_files["test"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


class SwapAttack:
    """A stand-in Hardener with the adversarial plugins' dispatch (pixels when the batch has them, else
    the text embeddings) and a known effect: it swaps red and blue, or the words good and bad."""

    name = "swap"

    def __init__(self, good: int, bad: int):
        self.good, self.bad = good, bad

    def attack(self, model, batch):
        from fmkit.plugin import model_inputs

        inputs = model_inputs(batch)
        if "pixel_values" in inputs:
            return model(**{**inputs, "pixel_values": inputs["pixel_values"].flip(1)}).logits
        ids = inputs.pop("input_ids")
        swapped = ids.where(ids != self.good, self.bad).where(ids != self.bad, self.good)
        return model(**inputs, inputs_embeds=model.get_input_embeddings()(swapped)).logits


def fuse_builder(loaded):
    """The saved run's ModelBuilder, from its fuse plugin."""
    return loaded.run.hook.fmkit_fuse(run=loaded.run, foundation=loaded.run.foundation)


def test_each_modality_is_attacked_alone_and_both_together(fused_runs, mm_files):
    from fmkit.plugin import load_run, prediction_batches, read_examples
    from fmkit_fuse.report import attacked_logits

    loaded = load_run(fused_runs / "concat")
    model, scorer = loaded.ensemble.members[0].model, loaded.scorer
    examples = read_examples(loaded.run.config, mm_files["test"])
    features = scorer.encode("test", examples)
    rows, batch = next(prediction_batches(features, len(features), scorer.pad_id))  # one batch, sorted by length
    labels = loaded.run.task.labels
    swap = SwapAttack(*loaded.run.foundation.tokenizer.convert_tokens_to_ids(["good", "bad"]))
    predicted = {k: [labels[i] for i in v.argmax(-1)] for k, v in attacked_logits(swap, model, batch).items()}
    gold = [examples[features[row].example].label.split("-") for row in rows]
    for attack, (word_kept, colour_kept) in {"text": (0, 1), "image": (1, 0), "text+image": (0, 0)}.items():
        parts = [p.split("-") for p in predicted[attack]]
        assert np.mean([(p[0] == g[0]) == word_kept and (p[1] == g[1]) == colour_kept
                        for p, g in zip(parts, gold)]) >= 0.9, attack

    robust = fuse_builder(loaded).member_metrics(model, scorer, {"test": examples}, [swap])
    assert set(robust["modalities"]["test"]["robust_accuracy"]["swap"]) == {"text", "image", "text+image"}
    assert max(robust["modalities"]["test"]["robust_accuracy"]["swap"].values()) <= 0.1


def test_the_pgd_plugin_attacks_each_modality_of_a_fused_model(fused_runs, mm_files):
    from fmkit.plugin import load_run, read_examples

    loaded = load_run(fused_runs / "attention", attack="pgd",
                      settings=["pgd.norm=linf", "pgd.epsilon=0.03", "pgd.pixel_epsilon=0.2"])
    examples = read_examples(loaded.run.config, mm_files["test"])
    hardener = loaded.attacks["pgd"]
    model = loaded.ensemble.members[0].model
    report = fuse_builder(loaded).member_metrics(model, loaded.scorer, {"test": examples}, [hardener])
    report = report["modalities"]["test"]
    robust = report["robust_accuracy"]["pgd"]
    clean = json.loads((fused_runs / "attention" / "metrics.json").read_text())["test"]["accuracy"]
    assert robust["text"] < clean and robust["image"] <= 0.75, robust  # a colour flip halves the image's classes
    assert robust["text+image"] <= min(robust["text"], robust["image"]) + 0.05, robust


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def read(path, **data):
    from fmkit.plugin import read_examples

    return read_examples(RunConfig(task="multimodal", data=data), path)


GOOD = {"text": "good day", "label": "a", "image": [[0, 255], [255, 0]], "features": [1.0, 2.0]}


@pytest.mark.parametrize("row, message", [
    ({**GOOD, "image": "nowhere.png"}, "image file"),
    ({**GOOD, "image": "fake.png"}, "is not an image Pillow can read"),
    ({**GOOD, "image": [[0, 255, 0], [255, 0, 255]]}, "image array of shape (2, 3), but line 1 has shape (2, 2)"),
    ({**GOOD, "image": [[0, 255], [255]]}, "ragged"),
    ({**GOOD, "image": [[0, 300], [255, 0]]}, "pixel values must lie in"),
    ({**GOOD, "features": [1.0, "high"]}, "feature 'features' holds 'high', not a finite number"),
    ({**GOOD, "features": [1.0, True]}, "feature 'features' holds True, not a finite number"),
    ({**GOOD, "features": [1.0, 2.0, 3.0]}, "3 values in feature 'features', but line 1 has 2"),
    ({k: v for k, v in GOOD.items() if k != "label"}, "no 'label' field"),
    ('{"text": "x",', "not valid JSON"),
])
def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path, row, message):
    (tmp_path / "fake.png").write_text("not a picture")
    path = write_rows(tmp_path / "bad.jsonl", [GOOD, row])
    with pytest.raises(FmkitError) as error:
        read(path)
    text = str(error.value)
    assert text.startswith(f"{path}:2: ") and message in text and "\n" not in text


def test_arrays_and_named_feature_columns(tmp_path):
    np.save(tmp_path / "grey.npy", np.array([[0.0, 1.0], [1.0, 0.0]]))
    path = write_rows(tmp_path / "ok.jsonl", [
        {"text": "t", "label": "a", "image": "grey.npy", "age": 30, "size": [1.5, 2]},
        {"text": "t", "label": "b", "image": [[0, 255], [255, 0]], "age": 40, "size": [0, 1]},
    ])
    first, second = read(path, image_size=4, feature_columns=["age", "size"])
    assert first.image.shape == (3, 4, 4) and np.allclose(first.image, second.image)  # floats = ints / 255
    assert np.allclose(first.image[0], first.image[2]), "grey becomes three equal channels"
    assert 0 <= first.image.min() < first.image.max() <= 1
    assert first.features.tolist() == [30, 1.5, 2]


def test_features_are_standardised_with_training_statistics_only(tmp_path):
    from fmkit.data.multimodal import model_extras
    from fmkit.plugin import load_task_data

    rows = [{"text": "t", "label": "ab"[i % 2], "features": [float(i), 100.0 + 10 * i * i]} for i in range(40)]
    task, data = load_task_data(RunConfig(task="multimodal", data={"train": write_rows(tmp_path / "all.jsonl", rows)}))
    train = np.array([e.features for e in data.train], dtype=np.float64)
    everything = np.array([r["features"] for r in rows])
    assert len(train) == 32 and not np.allclose(train.mean(0), everything.mean(0))
    assert task.inputs["feature_mean"] == pytest.approx(train.mean(0).tolist())
    assert task.inputs["feature_std"] == pytest.approx(train.std(0).tolist())
    held_out = data.test[0]
    standardised = model_extras(held_out, task.inputs)["features"]
    assert standardised == pytest.approx((held_out.features - train.mean(0)) / train.std(0), rel=1e-5)


def test_missing_modalities_error_or_learned_embedding(tmp_path, tiny_model):
    import torch
    from transformers import AutoModel

    from fmkit.data.multimodal import model_extras
    from fmkit.plugin import load_task_data
    from fmkit_fuse.concat import Concat
    from fmkit_fuse.model import FusionModel, FusionSpec

    rows = [{"text": "t", "label": "ab"[i % 2], "image": [[i * 10, 0], [0, 0]]} for i in range(10)]
    rows[3].pop("image")
    train = write_rows(tmp_path / "train.jsonl", rows)
    with pytest.raises(FmkitError, match=rf"^{train}:4: no image.*data.allow_missing=true"):
        load_task_data(RunConfig(task="multimodal", data={"train": train}))
    allowed = RunConfig(task="multimodal", data={"train": train, "allow_missing": True, "image_size": 4})
    task, data = load_task_data(allowed)
    lacking = next(e for e in data.train + data.dev + data.test if e.image is None)
    assert model_extras(lacking, task.inputs)["image_missing"]

    spec = FusionSpec("concat", task.labels, ["text", "image"], image_size=4, missing=True, dim=16)
    model = FusionModel(spec, Concat.head_class(), AutoModel.from_pretrained(tiny_model)).eval()
    inputs = {"input_ids": torch.tensor([[2, 3]] * 2), "attention_mask": torch.ones(2, 2, dtype=torch.long),
              "image_missing": torch.tensor([True, False])}
    with torch.no_grad():
        dark, bright = (model(**inputs, pixel_values=torch.full((2, 3, 4, 4), v)).logits for v in (0.0, 1.0))
    assert torch.allclose(dark[0], bright[0]) and not torch.allclose(dark[1], bright[1])


def xor_rows(n, seed):
    """The label is the XOR of a word in the text (good/bad) and the sign of a number: each alone is at chance."""
    import random

    from fmkit.testing import FILLER

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word, number = rng.choice(["good", "bad"]), rng.choice([-1, 1]) * rng.uniform(0.5, 2)
        words = rng.sample(FILLER, 4)
        words.insert(rng.randint(0, 4), word)
        rows.append({"text": " ".join(words), "features": [round(number, 3), round(rng.gauss(0, 1), 3)],
                     "label": "yes" if (word == "good") != (number > 0) else "no"})
    return rows


@pytest.fixture(scope="module")
def xor_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("xor")
    return {split: write_rows(root / f"{split}.jsonl", xor_rows(n, seed))
            for split, n, seed in (("train", 320, 0), ("dev", 80, 1), ("test", 80, 2))}


@pytest.mark.parametrize("method", ["lmf", "concat", "gated", "attention"])  # attention: with its product term
def test_interactions_are_learned(method, tiny_model, xor_files, tmp_path):
    settings = [*FAST_TRAIN, "train.epochs=8", f"{method}.dim=32"]  # new modules: the plugin's new_lr
    assert main(["run", "--task", "multimodal", "--plugins", method, "--model", str(tiny_model),
                 "--train", str(xor_files["train"]), "--dev", str(xor_files["dev"]), "--test", str(xor_files["test"]),
                 "--runs-dir", str(tmp_path), "--name", "xor", *[x for s in settings for x in ("--set", s)]]) == 0
    accuracy = json.loads((tmp_path / "xor" / "metrics.json").read_text())["test"]["accuracy"]
    assert accuracy >= 0.9, accuracy


def test_multimodal_without_a_fuse_plugin_names_them(capsys, tmp_path):
    assert main(["run", "--task", "multimodal", "--train", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmkit: error: --task multimodal needs a fuse plugin") and "\n" not in err
    assert all(name in err for name in METHODS)


def test_transformers_vision_encoder_from_a_local_directory(tmp_path, tiny_model):
    import torch
    from transformers import ViTConfig, ViTModel

    from fmkit.plugin import Foundation, Run, Task
    from fmkit_fuse.attention import Attention
    from fmkit_fuse.fusion import FusionBuilder

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)).save_pretrained(vit)
    (vit / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4, 0.4, 0.4], "image_std": [0.2] * 3}))
    task = Task("multimodal", ["a", "b"], inputs={"modalities": ["image"], "image_size": 8, "missing": False})
    options = Attention.Options(dim=16, heads=2, image_encoder=str(vit))
    builder = FusionBuilder(Run(RunConfig(task="multimodal"), task, None, None), Foundation(str(tiny_model), None),
                            Attention(options))
    model = builder.build().eval()
    assert model.spec.image_width == 24 and model.spec.vision_size == 16 and model.spec.image_mean == [0.4] * 3
    inputs = {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
              "pixel_values": torch.rand(1, 3, 8, 8)}  # resized to the ViT's 16 inside the model
    model.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        before = model(**inputs)
        after = builder.load(tmp_path / "saved").eval()(**inputs)
    assert torch.allclose(before.logits, after.logits) and before.contributions.shape == (1, 2)


def table_file(path, rows):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([["title", "body", "size", "price", "label"], *rows])
    return path


def table_rows(n, seed):
    """The label is the size (a category), the text holds nothing but filler, the price is noise."""
    import random

    from fmkit.testing import FILLER

    rng = random.Random(seed)
    return [[" ".join(rng.sample(FILLER, 3)), " ".join(rng.sample(FILLER, 3)), size, round(rng.uniform(5, 50), 2),
             "big" if size in ("L", "XL") else "small"] for size in (rng.choice(["S", "M", "L", "XL"]) for _ in range(n))]


def test_a_csv_run_saves_its_encoding_and_eval_and_predict_read_new_files_alike(tiny_model, tmp_path, capsys):
    """Categories learned as embeddings from a CSV; the saved run encodes a new file (an unseen size, a
    missing price) with the training split's levels and statistics."""
    train = table_file(tmp_path / "train.csv", table_rows(160, 0))
    dev = table_file(tmp_path / "dev.csv", table_rows(40, 1))
    settings = [*TRAIN, "train.epochs=10", "concat.dim=32", "data.text_column=[title, body]",
                "data.categorical_columns=[size]", "data.feature_columns=[price]"]
    assert main(["run", "--task", "multimodal", "--plugins", "concat", "--model", str(tiny_model), "--train", str(train),
                 "--dev", str(dev), "--runs-dir", str(tmp_path), "--name", "csv",
                 *[x for s in settings for x in ("--set", s)]]) == 0
    run = tmp_path / "csv"
    saved = json.loads((run / "config.json").read_text())["task"]["inputs"]
    sizes = [r[2] for r in table_rows(160, 0)]
    assert saved["category_levels"] == [sorted(set(sizes), key=lambda s: (-sizes.count(s), s))]  # most frequent first
    assert json.loads((run / "model" / "config.json").read_text())["category_sizes"] == [5]  # 4 sizes + unknown
    assert json.loads((run / "metrics.json").read_text())["dev"]["accuracy"] >= 0.9

    rows = table_rows(40, 2)
    rows[0][2:4] = ["XXL", ""]  # a size never seen in training, a missing price
    new = table_file(tmp_path / "new.csv", rows)
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(new), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
    assert main(["predict", str(run), str(new)]) == 0
    predicted = capsys.readouterr().out.split()
    assert len(predicted) == 40 and np.mean([p == r[4] for p, r in zip(predicted, rows)]) >= 0.9
