"""Multimodal rows from CSV/TSV tables: several text columns, categorical columns (levels learned on the
training split, an "unknown" entry for the rest, counted), numerical columns (missing values imputed
with the training median plus an indicator; standardised or quantile-transformed with training
statistics only), the "all columns as text" baseline, and bad tables as one-line errors before training."""

import csv

import numpy as np
import pytest

from fmkit.cli import main
from fmkit.data.multimodal import model_extras, read_multimodal
from fmkit.plugin import FmkitError, RunConfig, load_task_data, read_examples

HEADER = ["Title", "Review", "Colour", "Rating", "Age", "label"]
COLUMNS = {"text_column": ["Title", "Review"], "categorical_columns": ["Colour"],
           "feature_columns": ["Rating", "Age"]}


def write_csv(path, rows, header=HEADER, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table_rows(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rating = int(rng.integers(1, 6))
        rows.append([f"title {i}", "good" if rating > 3 else "bad", ["red", "blue", "green"][i % 3],
                     rating, round(float(rng.normal(40, 10)), 1), "yes" if rating > 3 else "no"])
    return rows


def config(train, dev=None, test=None, **data):
    files = {"train": train, **({"dev": dev} if dev else {}), **({"test": test} if test else {})}
    return RunConfig(task="multimodal", data={**COLUMNS, **files, **data})


def test_csv_columns_become_text_categories_and_numbers(tmp_path):
    rows = table_rows(6)
    rows[1][0] = ""  # an empty title: the review alone is the text
    rows[2][3] = ""  # a missing rating
    rows[3][2] = "NA"  # a missing colour
    first, second, third, fourth, *_ = read_multimodal(write_csv(tmp_path / "t.csv", rows), config(None).data)
    assert first.text == f"title 0 | {rows[0][1]}" and second.text == rows[1][1]
    assert first.categories == ("red",) and fourth.categories == ("(missing)",)
    assert first.features.tolist() == pytest.approx([rows[0][3], rows[0][4]])
    assert np.isnan(third.features[0]) and not np.isnan(third.features[1])
    assert first.label == rows[0][5] and first.line == 2


def test_tabular_encoding_is_learned_on_the_training_split_and_applied_to_every_split(tmp_path):
    train_rows = table_rows(40)
    train_rows[5][3] = ""  # a missing rating in training: the rating gains a "was missing" indicator
    dev_rows = table_rows(8, seed=1)
    dev_rows[0][2], dev_rows[1][2] = "purple", "orange"  # unseen colours
    dev_rows[2][4] = ""  # a missing age, never missing in training: imputed, no indicator
    train = write_csv(tmp_path / "train.csv", train_rows)
    dev = write_csv(tmp_path / "dev.csv", dev_rows)
    task, data = load_task_data(config(train, dev))
    inputs = task.inputs
    raw = np.array([[float(r[3]) if r[3] != "" else np.nan, r[4]] for r in train_rows])
    median = np.nanmedian(raw, axis=0)
    imputed = np.where(np.isnan(raw), median, raw)
    assert inputs["feature_median"] == pytest.approx(median.tolist())
    assert inputs["feature_indicators"] == [0] and inputs["feature_count"] == 3
    assert inputs["feature_mean"] == pytest.approx(imputed.mean(0).tolist())
    assert inputs["category_levels"] == [["red", "blue", "green"]]  # most frequent first (14), then by name
    assert "dev: categories unseen in training, read as 'unknown': Colour 2" in data.description

    extras = [model_extras(e, inputs) for e in data.dev[:3]]
    assert [int(x["categories"][0]) for x in extras[:2]] == [0, 0]  # the reserved "unknown" entry
    assert extras[2]["features"][1] == pytest.approx((median[1] - imputed[:, 1].mean()) / imputed[:, 1].std(), rel=1e-5)
    assert extras[2]["features"][2] == 0.0  # the rating was there
    missing_rating = model_extras(data.train[5], inputs)["features"]
    assert missing_rating[0] == pytest.approx((median[0] - imputed[:, 0].mean()) / imputed[:, 0].std(), rel=1e-5)
    assert missing_rating[2] == 1.0


def test_quantile_transform_uses_training_quantiles(tmp_path):
    """Without ties inside the training range it is scikit-learn's QuantileTransformer (normal output);
    tied values (a rating) take the middle of their ranks instead of being sent to the tails."""
    from sklearn.preprocessing import QuantileTransformer

    train_rows, dev_rows = table_rows(50), table_rows(10, seed=3)
    task, data = load_task_data(config(write_csv(tmp_path / "train.csv", train_rows),
                                       write_csv(tmp_path / "dev.csv", dev_rows), numeric_transform="quantile"))
    ages = np.array([[r[4]] for r in train_rows], dtype=float)
    fitted = QuantileTransformer(n_quantiles=50, output_distribution="normal").fit(ages)
    encoded = np.stack([model_extras(e, task.inputs)["features"] for e in data.dev])
    inside = [i for i, r in enumerate(dev_rows) if ages.min() < r[4] < ages.max()]
    assert len(inside) >= 5
    expected = fitted.transform(np.array([[dev_rows[i][4]] for i in inside]))[:, 0]
    assert encoded[inside, 1] == pytest.approx(expected, abs=1e-4)
    by_rating = {r[3]: encoded[i, 0] for i, r in enumerate(dev_rows)}
    assert sorted(by_rating.values()) == [by_rating[k] for k in sorted(by_rating)] and max(map(abs, by_rating.values())) < 3


def test_all_columns_as_text_baseline(tmp_path):
    rows = table_rows(3)
    train = write_csv(tmp_path / "t.tsv", rows, delimiter="\t")
    classify = RunConfig(task="classify", data={**COLUMNS, "all_as_text": True})
    first = read_examples(classify, train)[0]
    title, review, colour, rating, age, _ = rows[0]
    assert first.text == f"{title} | {review} | Colour: {colour} | Rating: {rating} | Age: {age}"
    with pytest.raises(FmkitError, match="data.categorical_columns, data.feature_columns: --task classify reads text"):
        read_examples(RunConfig(task="classify", data=COLUMNS), train)


def run_on(tmp_path, model, train, *settings):
    flags = [x for s in settings for x in ("--set", s)]
    return main(["run", "--task", "multimodal", "--plugins", "concat", "--model", str(model),
                 "--train", str(train), "--runs-dir", str(tmp_path / "runs"), "--name", "r",
                 "--set", "data.text_column=[Title, Review]", "--set", "data.categorical_columns=[Colour]",
                 "--set", "data.feature_columns=[Rating, Age]", *flags])


@pytest.mark.parametrize("change, settings, message", [
    (None, ["data.categorical_columns=[Color]"],
     "{file}: data.categorical_columns: no column 'Color' (did you mean 'Colour'?); the columns are 'Title', "),
    (lambda rows: rows[3].__setitem__(4, "forty"), [], "{file}:5: feature 'Age' holds 'forty', not a finite number"),
    (lambda rows: [row.__setitem__(2, "red") for row in rows], [],
     "data.categorical_columns: 'Colour' has a single level in the training rows of {file} ('red')"),
    (lambda rows: rows[6].append("extra"), [], "{file}:8: expected 6 fields like the header, found 7"),
])
def test_bad_tables_are_one_line_errors_before_training(tmp_path, tiny_model, capsys, change, settings, message):
    rows = table_rows(30)
    if change:
        change(rows)
    train = tmp_path / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as out:
        csv.writer(out).writerows([HEADER, *rows])
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "kept.txt").write_text("an earlier run")
    assert run_on(tmp_path, tiny_model, train, "overwrite=true", *settings) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmkit: error: ") and "\n" not in err and "Traceback" not in err, err
    assert message.format(file=train) in err, err
    assert (tmp_path / "runs" / "r" / "kept.txt").read_text() == "an earlier run"
