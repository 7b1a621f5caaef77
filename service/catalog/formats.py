"""Parsers for the catalog and judgment formats we ingest.

Gain tables (documented in docs/data.md; NDCG uses gains linearly):

| format | label → gain |
|---|---|
| ESCI (`esci_label`) | E 1.0, S 0.1, C 0.01, I 0.0 (the ESCI task-1 gains) |
| ESCI OpenSearch judgments (`rating`) | 100 → 1.0, 10 → 0.1, 1 → 0.01, 0 → 0.0 |
| WANDS (`label`) | Exact 1.0, Partial 0.5, Irrelevant 0.0 |
| Chorus (`rating`, 0–3) | 3 → 1.0, 2 → 0.5, 1 → 0.1, 0 → 0.0 |
"""

from __future__ import annotations

import csv
import html
import json
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from service.grades import is_assessed
from service.records import LabelRecord, ProductRecord

CatalogFormat = Literal["esci", "wands", "icecat", "jsonl"]
LabelFormat = Literal["esci", "wands", "chorus", "jsonl"]

ESCI_GAINS = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}
WANDS_GAINS = {"Exact": 1.0, "Partial": 0.5, "Irrelevant": 0.0}
CHORUS_GAINS = {3: 1.0, 2: 0.5, 1: 0.1, 0: 0.0}

csv.field_size_limit(sys.maxsize)
_TAG = re.compile(r"<[^>]+>")


class FormatError(ValueError):
    """The input does not match the declared format; the message says where and why."""


def _clean(text: Any) -> str | None:
    if text is None:
        return None
    if isinstance(text, float) and text != text:  # NaN from pandas/pyarrow
        return None
    s = html.unescape(_TAG.sub(" ", str(text)))
    s = " ".join(s.split())
    return s or None


def _require(row: dict[str, Any], cols: tuple[str, ...], where: str) -> None:
    missing = [c for c in cols if c not in row]
    if missing:
        raise FormatError(f"{where}: missing column(s) {missing}; found {sorted(row)}")


def _rows(path: Path, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of a CSV/TSV (delimiter sniffed from the header) or a parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
            yield from batch.to_pylist()
        return
    with path.open(newline="", encoding="utf-8") as f:
        header = f.readline()
        f.seek(0)
        delim = delimiter or ("\t" if header.count("\t") > header.count(",") else ",")
        yield from csv.DictReader(f, delimiter=delim)


# ---------------------------------------------------------------- catalogs


def parse_esci_products(path: Path) -> Iterator[tuple[ProductRecord, LabelRecord | None]]:
    """The ESCI merged schema (examples joined with products), CSV or parquet.

    Rows of the products-only parquet (no `query`) yield products without labels.
    """
    seen: set[str] = set()
    for i, row in enumerate(_rows(path)):
        _require(row, ("product_id", "product_title"), f"{path} row {i + 1}")
        pid = str(row["product_id"])
        label = None
        if row.get("query") and row.get("esci_label") in ESCI_GAINS:
            label = LabelRecord(row["query"], pid, ESCI_GAINS[row["esci_label"]], "esci")
        if pid in seen:
            if label:
                yield None, label  # type: ignore[misc]
            continue
        seen.add(pid)
        bullets = _clean(row.get("product_bullet_point"))
        desc = _clean(row.get("product_description"))
        attrs = {
            k: v
            for k in ("product_color", "product_locale")
            if (v := _clean(row.get(k))) is not None
        }
        yield (
            ProductRecord(
                id=pid,
                title=_clean(row["product_title"]) or pid,
                brand=_clean(row.get("product_brand")),
                description=" ".join(x for x in (bullets, desc) if x) or None,
                attributes=attrs,
                source="esci",
            ),
            label,
        )


def parse_wands_products(path: Path) -> Iterator[tuple[ProductRecord, None]]:
    """WANDS `product.csv` (tab-separated): product_id, product_name, product_class, ..."""
    for i, row in enumerate(_rows(path, "\t")):
        _require(row, ("product_id", "product_name"), f"{path} row {i + 1}")
        attrs = {
            k: v
            for k in ("product_class", "category hierarchy", "product_features")
            if (v := _clean(row.get(k))) is not None
        }
        yield (
            ProductRecord(
                id=str(row["product_id"]),
                title=_clean(row["product_name"]) or str(row["product_id"]),
                description=_clean(row.get("product_description")),
                attributes=attrs,
                source="wands",
            ),
            None,
        )


def _icecat_product(obj: dict[str, Any]) -> ProductRecord:
    attrs = {k: v for k, v in obj.items() if k.startswith("attr_") and v not in (None, "")}
    for k in ("name", "date_released", "ean", "img_500x500"):
        if obj.get(k) not in (None, ""):
            attrs[k] = obj[k]
    if isinstance(obj.get("price"), int | float):
        attrs["price"] = obj["price"] / 100  # Icecat gives cents; filters speak currency units
    return ProductRecord(
        id=str(obj["id"]),
        title=_clean(obj.get("title")) or str(obj.get("name") or obj["id"]),
        brand=_clean(obj.get("supplier")),
        description=_clean(obj.get("short_description")),
        attributes=attrs,
        source="icecat",
    )


def parse_icecat_products(path: Path) -> Iterator[tuple[ProductRecord, None]]:
    """Open Icecat product JSON: a `.json` array, a `.zip` of them, or a folder of zips."""
    files = (
        sorted(path.glob("*.json.zip")) + sorted(path.glob("*.json")) if path.is_dir() else [path]
    )
    if not files:
        raise FormatError(f"{path}: no *.json or *.json.zip files")
    for file in files:
        if file.suffix == ".zip":
            with zipfile.ZipFile(file) as z:
                arrays = [
                    json.load(z.open(name)) for name in z.namelist() if name.endswith(".json")
                ]
        else:
            arrays = [json.loads(file.read_text(encoding="utf-8"))]
        for array in arrays:
            if not isinstance(array, list):
                raise FormatError(f"{file}: expected a JSON array of products")
            for obj in array:
                if "id" not in obj:
                    raise FormatError(f"{file}: product without `id`: {str(obj)[:120]}")
                yield _icecat_product(obj), None


def jsonl_objects(path: Path) -> Iterator[tuple[str, Any]]:
    """(`path:line`, parsed value) of each non-blank line of a JSON Lines file; invalid JSON is
    a `FormatError` naming the line. Callers check the value's shape."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}: invalid JSON ({e.msg})") from e


def parse_jsonl_products(path: Path) -> Iterator[tuple[ProductRecord | None, LabelRecord | None]]:
    """Our JSONL: one product per line.

    `{"id": str, "title": str, "brand"?: str, "description"?: str, "attributes"?: {...},
    "labels"?: [{"query": str, "gain": float}]}`
    """
    for where, obj in jsonl_objects(path):
        if not isinstance(obj, dict) or not obj.get("id") or not obj.get("title"):
            raise FormatError(f"{where}: each line needs non-empty `id` and `title`")
        pid = str(obj["id"])
        yield (
            ProductRecord(
                id=pid,
                title=str(obj["title"]),
                brand=obj.get("brand"),
                description=obj.get("description"),
                attributes=dict(obj.get("attributes") or {}),
                source=str(obj.get("source") or "jsonl"),
            ),
            None,
        )
        for lab in obj.get("labels") or []:
            yield None, LabelRecord(str(lab["query"]), pid, float(lab["gain"]), "jsonl")


def parse_catalog(fmt: CatalogFormat, path: Path):  # type: ignore[no-untyped-def]
    parsers = {
        "esci": parse_esci_products,
        "wands": parse_wands_products,
        "icecat": parse_icecat_products,
        "jsonl": parse_jsonl_products,
    }
    if not path.exists():
        raise FormatError(f"{path}: no such file or folder")
    return parsers[fmt](path)


# ---------------------------------------------------------------- judgments


def parse_esci_labels(path: Path) -> Iterator[LabelRecord]:
    """ESCI examples (CSV/parquet, `esci_label`) or OpenSearch judgment JSON (100/10/1/0)."""
    if path.suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "judgmentRatings" not in doc:
            raise FormatError(f"{path}: expected an OpenSearch judgment file (judgmentRatings)")
        for entry in doc["judgmentRatings"]:
            for r in entry["ratings"]:
                gain = float(r["rating"]) / 100.0
                yield LabelRecord(entry["query"], str(r["docId"]), gain, "esci")
        return
    for i, row in enumerate(_rows(path)):
        _require(row, ("query", "product_id", "esci_label"), f"{path} row {i + 1}")
        if row["esci_label"] not in ESCI_GAINS:
            raise FormatError(f"{path} row {i + 1}: esci_label {row['esci_label']!r} not E/S/C/I")
        yield LabelRecord(
            row["query"], str(row["product_id"]), ESCI_GAINS[row["esci_label"]], "esci"
        )


def parse_wands_labels(path: Path, queries: Path | None = None) -> Iterator[LabelRecord]:
    """WANDS `label.csv` (tab-separated: id, query_id, product_id, label) + `query.csv`."""
    qpath = queries or path.with_name("query.csv")
    if not qpath.exists():
        raise FormatError(f"WANDS labels need the query file; {qpath} not found (use --queries)")
    qtext = {str(r["query_id"]): r["query"] for r in _rows(qpath, "\t")}
    for i, row in enumerate(_rows(path, "\t")):
        _require(row, ("query_id", "product_id", "label"), f"{path} row {i + 1}")
        if row["label"] not in WANDS_GAINS:
            raise FormatError(
                f"{path} row {i + 1}: label {row['label']!r} not Exact/Partial/Irrelevant"
            )
        q = qtext.get(str(row["query_id"]))
        if q is None:
            continue  # query withheld or unknown: nothing to attach the label to
        yield LabelRecord(q, str(row["product_id"]), WANDS_GAINS[row["label"]], "wands")


def parse_chorus_labels(path: Path) -> Iterator[LabelRecord]:
    """Chorus `Broad_Query_Set_rated.csv`: query, docid, rating (0–3); or an assessed grade file
    (`assessed/*.csv`: query, docid, grade, source), whose rows keep their own source."""
    for i, row in enumerate(_rows(path, ",")):
        col = next((c for c in ("rating", "final_rating", "grade") if c in row), "rating")
        _require(row, ("query", "docid", col), f"{path} row {i + 1}")
        source = row.get("source") or "chorus"
        if col == "grade" and not is_assessed(source):
            raise FormatError(
                f"{path} row {i + 1}: source {source!r} of an assessed grade file must be "
                "'assessed' or 'assessed:WHO'"
            )
        try:
            rating = int(float(row[col]))
        except ValueError as e:
            raise FormatError(f"{path} row {i + 1}: rating {row[col]!r} is not 0–3") from e
        if rating not in CHORUS_GAINS:
            raise FormatError(f"{path} row {i + 1}: rating {rating} is not 0–3")
        yield LabelRecord(row["query"], str(row["docid"]), CHORUS_GAINS[rating], source)


def assessed_grade_files(path: Path) -> list[Path]:
    """The assessed grade files that complete a Chorus judgment file's pool: every CSV in the
    `assessed/` folder beside it (service.grades says how they combine with human grades)."""
    return sorted((Path(path).parent / "assessed").glob("*.csv"))


def parse_labels(
    fmt: LabelFormat, path: Path, queries: Path | None = None
) -> Iterator[LabelRecord]:
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if fmt == "esci":
        return parse_esci_labels(path)
    if fmt == "wands":
        return parse_wands_labels(path, queries)
    if fmt == "chorus":
        return parse_chorus_labels(path)
    return (lab for _, lab in parse_jsonl_products(path) if lab is not None)
