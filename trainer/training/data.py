"""Training examples: a shopper query and its judged products, from the database or from files.

An ``Example`` is one prompt of OSPO/GRPO: the query the policy rewrites and its targets
{product id: gain} that the reward scores retrieval against. Labels for the same normalised
query are merged by ``service.grades.merge_grades`` (a human grade wins over an assessed one;
within a tier the highest gain), as ``targets_by_query`` does in the database. By default a
Chorus judgment file brings the assessed grades that complete its pool (``assessed/`` beside
it); ``grades=GradeSet.human`` scores with human grades only.

The train/validation split hashes ``seed`` and the *normalised* query, so it is deterministic,
independent of the order and number of examples, and a query never lands on both sides
whatever its casing or spacing.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from service.catalog.formats import FormatError, LabelFormat, assessed_grade_files, parse_labels
from service.domain import GradeSet
from service.grades import is_assessed, merge_grades
from service.normalize import normalize_query
from service.records import LabelRecord

LABEL_FORMATS: tuple[str, ...] = ("chorus", "esci", "wands", "jsonl")


@dataclass(frozen=True)
class Example:
    """query: text shown to the policy; key: its normalised form; targets: {product id: gain}."""

    query: str
    key: str
    targets: dict[str, float]

    @property
    def n_relevant(self) -> int:
        return sum(1 for g in self.targets.values() if g > 0)


def examples_from_targets(
    targets: Mapping[str, Mapping[str, float]], texts: Mapping[str, str] | None = None
) -> list[Example]:
    """Examples from {query key: {product id: gain}}, sorted by key; ``texts``: display text."""
    texts = texts or {}
    return [
        Example(query=texts.get(key, key), key=key, targets=dict(t))
        for key, t in sorted(targets.items())
    ]


def examples_from_labels(
    labels: Iterable[LabelRecord], grades: GradeSet = GradeSet.completed
) -> list[Example]:
    """Merge label records by normalised query; the first spelling seen is the display text.

    A query only assessed grades know (none from a person) is not an example: its pool was
    completed, never judged."""
    rows: list[tuple[str, str, float, str]] = []
    texts: dict[str, str] = {}
    for lab in labels:
        key = normalize_query(lab.query)
        if key:
            rows.append((key, lab.product_id, lab.gain, lab.source))
            if not is_assessed(lab.source):
                texts.setdefault(key, " ".join(lab.query.split()))
    targets = {k: t for k, t in merge_grades(rows, grades).items() if k in texts}
    return examples_from_targets(targets, texts)


def sniff_label_format(path: Path) -> str:
    """Guess the label format of ``path`` from its suffix and CSV header."""
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            header = f.readline()
        delim = "\t" if header.count("\t") > header.count(",") else ","
        cols = {c.strip() for c in next(csv.reader([header], delimiter=delim), [])}
        if "docid" in cols:
            return "chorus"
        if "esci_label" in cols:
            return "esci"
        if {"query_id", "label"} <= cols:
            return "wands"
    if path.suffix == ".parquet":
        return "esci"
    raise FormatError(
        f"{path}: cannot tell the label format; pass one of {', '.join(LABEL_FORMATS)}"
    )


def load_file_examples(
    path: Path, fmt: str | None = None, grades: GradeSet = GradeSet.completed
) -> list[Example]:
    """Examples from a judgment file (Chorus CSV, ESCI CSV/parquet, WANDS label.csv, JSONL);
    a Chorus file's assessed grades (``assessed/*.csv`` beside it) join unless ``grades`` is
    human."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    fmt = fmt or sniff_label_format(path)
    if fmt not in LABEL_FORMATS:
        raise FormatError(f"unknown label format {fmt!r}; choose one of {', '.join(LABEL_FORMATS)}")
    fmt_: LabelFormat = fmt  # type: ignore[assignment]
    labels = list(parse_labels(fmt_, path))
    if fmt_ == "chorus" and grades == GradeSet.completed:
        for extra in assessed_grade_files(path):
            if extra.resolve() != path.resolve():
                labels.extend(parse_labels("chorus", extra))
    return examples_from_labels(labels, grades)


def load_db_examples(
    database_url: str,
    sources: Sequence[str] | None = None,
    grades: GradeSet = GradeSet.completed,
) -> list[Example]:
    """Examples from the relevance labels in the database (``targets_by_query``)."""
    from service.db.engine import session_scope
    from service.repositories.labels import labelled_queries, targets_by_query

    with session_scope(database_url) as session:
        targets = targets_by_query(session, sources, grades)
        texts = {nq: " ".join(q.split()) for nq, q in labelled_queries(session, sources)}
    return examples_from_targets(targets, texts)


def load_examples(
    source: str,
    *,
    database_url: str | None = None,
    fmt: str | None = None,
    sources: Sequence[str] | None = None,
    grades: GradeSet = GradeSet.completed,
) -> list[Example]:
    """``"db"`` (needs ``database_url``) or a path to a judgment file."""
    if source == "db":
        if database_url is None:
            raise ValueError("database_url is required for source 'db'")
        return load_db_examples(database_url, sources, grades)
    return load_file_examples(Path(source), fmt, grades)


def restrict_to_index(examples: Iterable[Example], known_ids: Collection[str]) -> list[Example]:
    """Drop targets that are not in the index, then examples left without a positive gain."""
    out = []
    for ex in examples:
        targets = {pid: g for pid, g in ex.targets.items() if pid in known_ids}
        if any(g > 0 for g in targets.values()):
            out.append(Example(ex.query, ex.key, targets))
    return out


def split_fraction(key: str, seed: int) -> float:
    """A uniform number in [0, 1) determined by (seed, normalised query)."""
    digest = hashlib.sha256(f"{seed}\x00{normalize_query(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_examples(
    examples: Sequence[Example], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, validation), deterministic per query; input order is kept on both sides."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    train, val = [], []
    for ex in examples:
        (val if split_fraction(ex.key, seed) < val_fraction else train).append(ex)
    return train, val
