"""File readers: CoNLL columns for NER, TSV/CSV/JSONL for classification, plain text for prediction.

Every problem is an FmkitError naming the file and line, so the CLI can print it as one line.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import io
import json
import re
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from fmkit.data.schemes import split_tag
from fmkit.errors import FmkitError


@dataclass
class Sentence:
    """A NER example: words, their tags (None for unlabeled input) and the line it starts on."""

    words: list[str]
    tags: list[str] | None
    line: int
    text: str | None = None  # the line of plain text the words were split from (``words_in``), for character offsets


@dataclass
class TextExample:
    """A classification example: text (and optional pair), label (None for unlabeled input)."""

    text: str
    label: str | None
    line: int
    text_pair: str | None = None


_CONTENT: ContextVar[dict[str, bytes]] = ContextVar("fmkit_input_content", default={})


@contextlib.contextmanager
def input_content(path: Path, data: bytes) -> Iterator[None]:
    """Within the block, every reader takes ``data`` as the content of ``path``: input that can be read only
    once (standard input) is parsed by the same readers as a file, and their errors name ``path``."""
    token = _CONTENT.set({**_CONTENT.get(), str(path): data})
    try:
        yield
    finally:
        _CONTENT.reset(token)


def read_lines(path: Path) -> list[str]:
    """The file's lines, decoded as UTF-8; a missing, empty or non-UTF-8 file is a one-line error."""
    path = Path(path)
    raw = _CONTENT.get().get(str(path))
    if raw is None:
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
    """CoNLL columns rather than one sentence a line: every line's last column is a tag (a labelled file,
    even of one sentence), or lines of at most a few columns with blank lines between sentences."""
    lines = read_lines(path)
    filled = [line.split() for line in lines if line.strip()]
    if all(len(fields) >= 2 and split_tag(fields[-1])[0] != "?" for fields in filled):
        return True
    has_breaks = any(not line.strip() for line in lines[:-1])
    return has_breaks and sum(map(len, filled)) / max(len(filled), 1) <= 4


WORD = re.compile(r"(?:https?://|www\.)\S+?(?=[.,!?;:)\]\"']*(?:\s|$))|[@#]\w+|(?:[a-z]\.){2,}|\w+(?=n't\b)|n't\b"
                  r"|'(?:s|m|d|re|ve|ll)\b|\w+(?:[-.]\w+)*|[^\w\s]+", re.IGNORECASE)
"""Words as tweet NER corpora cut them (WNUT): URLs, @mentions, #hashtags and abbreviations (U.S.) whole,
clitics ('s, n't) and runs of punctuation apart from words."""


def words_in(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of each word of ``text``, with character offsets into it."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def read_text_lines(path: Path) -> list[Sentence]:
    """Plain text for prediction: one sentence a line, cut into words as the training corpora are (``words_in``)."""
    sentences = [Sentence([w for w, _, _ in words_in(line)], None, n, text=line)
                 for n, line in enumerate(read_lines(path), start=1) if line.strip()]
    if not sentences:
        raise FmkitError(f"{path}: no sentences found")
    return sentences


TEXT_SEPARATOR = " | "  # between the text columns of one row
MISSING = {"", "na", "nan", "null", "none", "n/a"}  # a table cell that holds no value (any case), like JSON null


def read_table(path: Path, text_column: str | Sequence[str], label_column: str | None, pair_column: str | None,
               as_text: dict[str, list[str]] | None = None) -> list[TextExample]:
    """TSV/CSV (header row naming the columns) or JSONL (one object a line) for classification.

    Several text columns are joined (empty ones skipped; a row may have none: a review without a title or
    body); ``as_text`` columns (by the option that names them) follow as ``column: value``, the "all
    columns as text" baseline. ``label_column=None`` reads unlabeled input (for prediction); a ``.txt``
    file then is one text a line.
    """
    rows, columns = table_rows(path, text_column if isinstance(text_column, str) and label_column is None else None)
    texts = [text_column] if isinstance(text_column, str) else list(text_column)
    declared = {"data.text_column": texts, "data.label_column": [label_column] if label_column else [],
                "data.text_pair_column": [pair_column] if pair_column else [], **(as_text or {})}
    check_columns(path, columns, declared)
    rendered = [c for names in (as_text or {}).values() for c in names]
    examples = [text_example(path, number, row, texts, label_column, pair_column, rendered, empty_text=len(texts) > 1)
                for number, row in rows]
    if not examples:
        raise FmkitError(f"{path}: no examples found")
    return examples


def text_example(path: Path, number: int, row: dict, texts: Sequence[str], label_column: str | None,
                 pair_column: str | None, as_text: Sequence[str] = (), empty_text: bool = False) -> TextExample:
    """The text example of one row (see ``read_table``); an empty label, or an empty text unless
    ``empty_text`` allows it (a multimodal row has other inputs), is a one-line error."""
    text = row_text(row, texts, as_text)
    if not text.strip() and not empty_text:
        raise FmkitError(f"{path}:{number}: empty {', '.join(map(repr, texts))}")
    label = None
    if label_column:
        if row.get(label_column) is None:
            raise FmkitError(f"{path}:{number}: no {label_column!r} field (fields: {', '.join(row) or 'none'})")
        label = str(row[label_column]).strip()
        if not label:
            raise FmkitError(f"{path}:{number}: empty {label_column!r}")
    pair = str(row.get(pair_column) or "") if pair_column else None
    return TextExample(text, label, number, pair)


def table_rows(path: Path, txt_column: str | None = None) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line, row) pairs of a TSV/CSV file (its header names the fields) or a JSONL file, and the column
    names: the header, or every key that some JSONL row has. A ``.txt`` file is one ``txt_column`` value a
    line, when that is given (unlabeled input)."""
    path = Path(path)
    suffix = path.suffix.lower()
    lines = read_lines(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = _json_rows(path, lines)
        return rows, list(dict.fromkeys(key for _, row in rows for key in row))
    if suffix == ".txt" and txt_column is not None:
        return [(n, {txt_column: line}) for n, line in enumerate(lines, start=1) if line.strip()], [txt_column]
    return _delimited_rows(path, lines, "," if suffix == ".csv" else "\t")


def check_columns(path: Path, columns: list[str], declared: dict[str, Sequence[str]]) -> None:
    """Every declared column (by the option that names it) is one of ``columns``, else a one-line error
    naming the option and the closest column name."""
    for option, names in declared.items():
        for name in names:
            if name not in columns:
                hint = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
                raise FmkitError(f"{path}: {option}: no column {name!r}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                 + f"; the columns are {', '.join(map(repr, columns)) or 'none'}")


def is_missing(value: object) -> bool:
    """A cell that holds no value: JSON null, or an empty or NA-like table cell (see ``MISSING``)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in MISSING)


def row_text(row: dict, texts: Sequence[str], as_text: Sequence[str] = ()) -> str:
    """The row's text columns joined, then its ``as_text`` columns as ``column: value`` (missing values left out)."""
    parts = [str(row[c]).strip() for c in texts if not is_missing(row.get(c))]
    parts += [f"{c}: {_cell_text(row[c])}" for c in as_text if not is_missing(row.get(c))]
    return TEXT_SEPARATOR.join(p for p in parts if p)


def _cell_text(value: object) -> str:
    """A cell as a reader sees it: whole floats without their ``.0``, lists comma-separated."""
    if isinstance(value, list):
        return ", ".join(_cell_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


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


def _delimited_rows(path: Path, lines: list[str], delimiter: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """The rows of a table with a header line, each as a dict by column name, and the header."""
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header: list[str] | None = None
    rows = []
    while True:
        number = reader.line_num + 1  # where the record starts: a quoted field may span lines
        fields = next(reader, None)
        if fields is None:
            break
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip() for f in fields]
            continue
        if len(fields) != len(header):
            raise FmkitError(f"{path}:{number}: expected {len(header)} fields like the header, found {len(fields)}")
        rows.append((number, dict(zip(header, fields))))
    return rows, header or []
