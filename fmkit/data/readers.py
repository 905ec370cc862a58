"""File readers: CoNLL columns for NER, TSV/CSV/JSONL for classification, plain text for prediction.

Every problem is an FmkitError naming the file and line, so the CLI can print it as one line.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from fmkit.data.schemes import split_tag
from fmkit.errors import FmkitError


@dataclass
class Sentence:
    """A NER example: words, their tags (None for unlabeled input) and the line it starts on."""

    words: list[str]
    tags: list[str] | None
    line: int


@dataclass
class TextExample:
    """A classification example: text (and optional pair), label (None for unlabeled input)."""

    text: str
    label: str | None
    line: int
    text_pair: str | None = None


def read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; a missing, empty or non-UTF-8 file is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise FmkitError(f"{path}: file does not exist")
    if path.is_dir():
        raise FmkitError(f"{path}: is a directory, expected a file")
    raw = path.read_bytes()
    if not raw.strip():
        raise FmkitError(f"{path}: file is empty")
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            out.append(line.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as exc:
            raise FmkitError(f"{path}:{number}: not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})") from None
    if out and out[0].startswith("\ufeff"):
        out[0] = out[0][1:]
    return out


def read_conll(path: Path, labeled: bool = True) -> list[Sentence]:
    """Read CoNLL columns: first column the word, last the tag; blank lines and -DOCSTART- split.

    Tab-separated lines split on tabs only (words may then hold spaces); others on whitespace.
    Every line of a labeled file must have the same number of columns (at least two) and an
    IOB-style tag (O, B-X, I-X, E-X, S-X); with ``labeled=False`` only the first column is read.
    """
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    columns = None
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(words, tags if labeled else None, start))
            words, tags = [], []
            continue
        if not words:
            start = number
        if labeled:
            if columns is None:
                columns = len(fields)
                if columns < 2:
                    raise FmkitError(f"{path}:{number}: expected a word and a tag column, found 1 column")
            if len(fields) != columns:
                raise FmkitError(f"{path}:{number}: expected {columns} columns like the lines before, found {len(fields)}")
            tag = fields[-1]
            if split_tag(tag)[0] == "?":
                raise FmkitError(f"{path}:{number}: tag {tag!r} is not O or B-/I-/E-/S- followed by a type")
            tags.append(tag)
        if not fields[0]:
            raise FmkitError(f"{path}:{number}: empty word in the first column")
        words.append(fields[0])
    if words:
        sentences.append(Sentence(words, tags if labeled else None, start))
    if not sentences:
        raise FmkitError(f"{path}: no sentences found")
    return sentences


def looks_like_conll(path: Path) -> bool:
    """One token per line with blank lines between sentences (vs. one sentence per line)."""
    lines = read_lines(path)
    filled = [len(line.split()) for line in lines if line.strip()]
    has_breaks = any(not line.strip() for line in lines[:-1])
    return has_breaks and sum(filled) / max(len(filled), 1) <= 4


def read_text_lines(path: Path) -> list[Sentence]:
    """Plain text for prediction: one sentence per line, words split on whitespace."""
    sentences = [Sentence(line.split(), None, n) for n, line in enumerate(read_lines(path), start=1) if line.strip()]
    if not sentences:
        raise FmkitError(f"{path}: no sentences found")
    return sentences


def read_table(path: Path, text_column: str, label_column: str | None, pair_column: str | None) -> list[TextExample]:
    """TSV/CSV (header row naming the columns) or JSONL (one object a line) for classification.

    ``label_column=None`` reads unlabeled input (for prediction); a ``.txt`` file then is one text a line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    lines = read_lines(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _json_rows(path, lines)
    elif suffix == ".txt" and label_column is None:
        rows = [(n, {text_column: line}) for n, line in enumerate(lines, start=1) if line.strip()]
    else:
        rows = _delimited_rows(path, lines, "," if suffix == ".csv" else "\t")
    wanted = [c for c in (text_column, label_column, pair_column) if c]
    examples = []
    for number, row in rows:
        for column in wanted:
            if column not in row or row[column] is None:
                raise FmkitError(f"{path}:{number}: no {column!r} field (fields: {', '.join(row) or 'none'})")
        text = str(row[text_column])
        if not text.strip():
            raise FmkitError(f"{path}:{number}: empty {text_column!r}")
        label = str(row[label_column]).strip() if label_column else None
        if label_column and not label:
            raise FmkitError(f"{path}:{number}: empty {label_column!r}")
        pair = str(row[pair_column]) if pair_column else None
        examples.append(TextExample(text, label, number, pair))
    if not examples:
        raise FmkitError(f"{path}: no examples found")
    return examples


def _json_rows(path: Path, lines: list[str]) -> list[tuple[int, dict]]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FmkitError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise FmkitError(f"{path}:{number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _delimited_rows(path: Path, lines: list[str], delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header = None
    rows = []
    for fields in reader:
        number = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
            continue
        if len(fields) != len(header):
            raise FmkitError(f"{path}:{number}: expected {len(header)} fields like the header, found {len(fields)}")
        rows.append((number, dict(zip(header, fields))))
    return rows
