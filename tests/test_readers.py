from pathlib import Path

import pytest

from fmkit.config import RunConfig
from fmkit.data import load_task_data, read_unlabeled, split
from fmkit.data.readers import looks_like_conll, read_conll, read_table
from fmkit.data.schemes import detect_scheme, iob1_to_iob2
from fmkit.errors import FmkitError


def write(tmp_path: Path, text: str, name: str = "f.conll", raw: bytes | None = None) -> Path:
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_conll_handles_docstart_blank_whitespace_lines_crlf_bom_and_spaces_in_tab_files(tmp_path):
    text = "\ufeff-DOCSTART- -X- O O\r\n\r\nNew York\tB-LOC\r\nis\tO\r\n\t\r\n \r\nBob\tB-PER\r\n\r\n\r\n-DOCSTART-\tO\nrains\tO"
    sentences = read_conll(write(tmp_path, text))
    assert [s.words for s in sentences] == [["New York", "is"], ["Bob"], ["rains"]]
    assert [s.tags for s in sentences] == [["B-LOC", "O"], ["B-PER"], ["O"]]
    assert [s.line for s in sentences] == [3, 7, 11]


def test_conll_last_column_is_the_tag_with_space_separated_columns(tmp_path):
    sentences = read_conll(write(tmp_path, "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"))
    assert sentences[0].words == ["EU", "rejects"] and sentences[0].tags == ["B-ORG", "O"]


@pytest.mark.parametrize(
    ("text", "raw", "message"),
    [
        ("a\tO\nb\tO\tX\n", None, "f.conll:2: expected 2 columns"),
        ("a\tO\n\nb\tPERSON\n", None, "f.conll:3: tag 'PERSON' is not O"),
        ("word\n", None, "f.conll:1: expected a word and a tag column"),
        (None, b"a\tO\n\nb\xff\tO\n", "f.conll:3: not UTF-8"),
        (None, b"  \n\n", "f.conll: file is empty"),
        ("-DOCSTART- O\n\n", None, "f.conll: no sentences found"),
    ],
)
def test_conll_errors_name_file_and_line(tmp_path, text, raw, message):
    with pytest.raises(FmkitError, match=message.replace("(", r"\(")):
        read_conll(write(tmp_path, text or "", raw=raw))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FmkitError, match="does not exist"):
        read_conll(tmp_path / "nope.conll")


def test_scheme_detection_and_iob1_conversion():
    assert detect_scheme([["B-PER", "I-PER", "O"]]) == "IOB2"
    assert detect_scheme([["I-PER", "I-PER", "O", "I-LOC"]]) == "IOB1"
    assert detect_scheme([["S-PER", "O", "B-LOC", "E-LOC"]]) == "IOBES"
    assert iob1_to_iob2(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"]) == [
        "B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG"]


def test_iob1_files_are_converted_and_declared_schemes_checked(tmp_path):
    train = write(tmp_path, "Bob\tI-PER\nSmith\tI-PER\nsaw\tO\nRome\tI-LOC\n", "train.conll")
    dev = write(tmp_path, "Ann\tI-PER\n", "dev.conll")
    config = RunConfig(data={"train": train, "dev": dev})
    task, data = load_task_data(config)
    assert task.scheme == "IOB2"
    assert data.train[0].tags == ["B-PER", "I-PER", "O", "B-LOC"]
    assert task.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    iobes = write(tmp_path, "Bob\tS-PER\n", "iobes.conll")
    with pytest.raises(FmkitError, match=r"iobes.conll:1: tag 'S-PER' is outside the IOB2 scheme"):
        load_task_data(RunConfig(data={"train": train, "dev": iobes, "scheme": "IOB2"}))
    iob2 = write(tmp_path, "Bob\tB-PER\nSmith\tI-PER\nsaw\tO\n\nAnn\tB-PER\nsaw\tO\n", "iob2.conll")
    with pytest.raises(FmkitError, match=r"iob2.conll:2: tag 'I-PER' is not followed by I- or E- of its type, "
                                         r"as IOBES requires \(the file reads as IOB2: set data.scheme=IOB2 or auto\)"):
        load_task_data(RunConfig(data={"train": iob2, "dev": iob2, "scheme": "IOBES"}))


def test_dev_types_unseen_in_train_warn_and_still_count(tmp_path, capsys):
    train = write(tmp_path, "Bob\tB-PER\nsaw\tO\n\nAnn\tB-PER\n", "train.conll")
    dev = write(tmp_path, "Acme\tB-ORG\n", "dev.conll")
    task, data = load_task_data(RunConfig(data={"train": train, "dev": dev}))
    assert "dev.conll: entity types ORG never occur in train" in capsys.readouterr().err
    assert "B-ORG" not in task.labels and data.dev[0].tags == ["B-ORG"]


def test_seeded_split_is_deterministic_and_disjoint():
    items = list(range(100))
    a = split(items, (0.8, 0.1, 0.1), seed=7)
    assert [len(p) for p in a] == [80, 10, 10]
    assert a == split(items, (0.8, 0.1, 0.1), seed=7)
    assert a != split(items, (0.8, 0.1, 0.1), seed=8)
    assert sorted(sum(a, [])) == items


def test_tables_tsv_csv_jsonl(tmp_path):
    tsv = write(tmp_path, "text\tlabel\ngood film\tpos\nbad, bad\tneg\n", "d.tsv")
    csv_ = write(tmp_path, 'label,text\npos,"good, really"\n', "d.csv")
    jsonl = write(tmp_path, '{"text": "meh", "label": 0}\n\n{"text": "wow", "label": 1}\n', "d.jsonl")
    assert [(e.text, e.label) for e in read_table(tsv, "text", "label", None)] == [("good film", "pos"), ("bad, bad", "neg")]
    assert read_table(csv_, "text", "label", None)[0].text == "good, really"
    rows = read_table(jsonl, "text", "label", None)
    assert [(e.label, e.line) for e in rows] == [("0", 1), ("1", 3)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("d.tsv", "text\tlabel\nonly one field\n", r"d.tsv:2: expected 2 fields"),
        ("d.tsv", "text\tgold\nhi\tx\n", r"d.tsv: data.label_column: no column 'label'; the columns are 'text', 'gold'$"),
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label"\n', r"d.jsonl:2: not valid JSON"),
        ("d.jsonl", '{"text": "", "label": "x"}\n', r"d.jsonl:1: empty 'text'"),
    ],
)
def test_table_errors(tmp_path, name, text, message):
    with pytest.raises(FmkitError, match=message):
        read_table(write(tmp_path, text, name), "text", "label", None)


def test_plain_text_vs_conll_detection(tmp_path):
    assert looks_like_conll(write(tmp_path, "Bob\tB-PER\nsaw\tO\n\nAnn\tO\n"))
    assert not looks_like_conll(write(tmp_path, "Bob saw Ann in Paris today\nso did I , really\n", "t.txt"))


def test_read_unlabeled_tells_conll_from_text_and_reads_the_task_format(tmp_path):
    ner = RunConfig(task="ner")
    conll = read_unlabeled(ner, write(tmp_path, "Bob\tB-PER\nsaw\tO\n\nAnn\tI-LOC\n"))
    assert [(s.words, s.tags) for s in conll] == [(["Bob", "saw"], None), (["Ann"], None)]  # tags ignored
    text = write(tmp_path, "Bob saw Ann in Paris today\nso did I , really\n", "t.txt")
    assert [len(s.words) for s in read_unlabeled(ner, text)] == [6, 5]
    assert [s.words for s in read_unlabeled(ner, text, fmt="conll")] == [["Bob", "so"]]  # first column, one sentence
    rows = read_unlabeled(RunConfig(task="classify"), write(tmp_path, "good film\nbad one\n", "c.txt"))
    assert [(e.text, e.label) for e in rows] == [("good film", None), ("bad one", None)]
