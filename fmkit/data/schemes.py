"""NER tagging schemes: detection, IOB1 -> IOB2 conversion, label sets and legal transitions."""

from __future__ import annotations

import re

PREFIXES = {"IOB1": "BI", "IOB2": "BI", "IOBES": "BIES"}
TAG_PATTERN = re.compile(r"^([BIES])-(.+)$")


def split_tag(tag: str) -> tuple[str, str | None]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', None); anything else -> ('?', None)."""
    if tag == "O":
        return "O", None
    match = TAG_PATTERN.match(tag)
    return (match.group(1), match.group(2)) if match else ("?", None)


def detect_scheme(sentences: list[list[str]]) -> str:
    """IOBES if E-/S- tags occur; IOB1 if some entity starts with I-; IOB2 otherwise."""
    prefixes = {split_tag(t)[0] for tags in sentences for t in tags}
    if prefixes & {"E", "S"}:
        return "IOBES"
    for tags in sentences:
        previous = (None, None)
        for tag in tags:
            prefix, kind = split_tag(tag)
            if prefix == "I" and (previous[0] in (None, "O") or previous[1] != kind):
                return "IOB1"
            previous = (prefix, kind)
    return "IOB2"


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """An I- tag that starts an entity becomes B-; B- (between two same-type entities) stays."""
    out: list[str] = []
    previous_kind = None
    for tag in tags:
        prefix, kind = split_tag(tag)
        if prefix == "I" and previous_kind != kind:
            tag = f"B-{kind}"
        out.append(tag)
        previous_kind = kind
    return out


def label_set(types: set[str], scheme: str) -> list[str]:
    """'O' then every prefix of the scheme for every type, so the model can emit any legal tag."""
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in PREFIXES[scheme]]


def allowed_transitions(labels: list[str], scheme: str) -> tuple[list[bool], list[list[bool]], list[bool]]:
    """(may start, may follow [prev][next], may end) for constrained decoding of valid spans."""

    def ok(prev: str | None, nxt: str | None) -> bool:
        prev_prefix, prev_kind = split_tag(prev) if prev else ("O", None)
        next_prefix, next_kind = split_tag(nxt) if nxt else ("O", None)
        continues = next_prefix in ("I", "E") if scheme == "IOBES" else next_prefix == "I"
        if continues:
            return prev_prefix in ("B", "I") and prev_kind == next_kind
        return scheme != "IOBES" or prev_prefix in ("O", "E", "S")

    start = [ok(None, label) for label in labels]
    follow = [[ok(a, b) for b in labels] for a in labels]
    end = [ok(label, None) for label in labels]
    return start, follow, end


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in an IOB2 or IOBES tag sequence: an I- or E- tag
    continues the entity of the word before when that is a B- or I- of its type, else starts one."""
    spans: list[tuple[str, int, int]] = []
    previous: tuple[str, str | None] = ("O", None)
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix in ("I", "E") and previous[0] in ("B", "I") and previous[1] == kind:
            spans[-1] = (kind, spans[-1][1], i)
        elif prefix != "O":
            spans.append((kind, i, i))
        previous = (prefix, kind)
    return spans
