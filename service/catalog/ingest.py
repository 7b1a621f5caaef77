"""Stream parsed records into the database in batches, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from service.catalog.formats import CatalogFormat, LabelFormat, parse_catalog, parse_labels
from service.db.engine import session_scope
from service.records import LabelRecord, ProductRecord
from service.repositories.labels import upsert_labels
from service.repositories.products import upsert_products

BATCH = 1000


@dataclass
class IngestSummary:
    products: int = 0
    labels: int = 0


def _flush(url: str, products: list[ProductRecord], labels: list[LabelRecord], s: IngestSummary):  # type: ignore[no-untyped-def]
    with session_scope(url) as session:
        if products:
            upsert_products(session, products)
            s.products += len(products)
        if labels:
            upsert_labels(session, labels)
            s.labels += len(labels)
    products.clear()
    labels.clear()


def ingest_catalog(
    url: str, fmt: CatalogFormat, path: Path, progress: bool = True
) -> IngestSummary:
    summary = IngestSummary()
    products: list[ProductRecord] = []
    labels: list[LabelRecord] = []
    for product, label in tqdm(
        parse_catalog(fmt, path), desc=f"ingest {fmt}", unit=" rows", disable=not progress
    ):
        if product is not None:
            products.append(product)
        if label is not None:
            labels.append(label)
        if len(products) + len(labels) >= BATCH:
            _flush(url, products, labels, summary)
    _flush(url, products, labels, summary)
    return summary


def ingest_labels(
    url: str,
    fmt: LabelFormat,
    path: Path,
    queries: Path | None = None,
    progress: bool = True,
) -> IngestSummary:
    summary = IngestSummary()
    batch: list[LabelRecord] = []
    records: Iterable[LabelRecord] = parse_labels(fmt, path, queries)
    for label in tqdm(records, desc=f"labels {fmt}", unit=" labels", disable=not progress):
        batch.append(label)
        if len(batch) >= BATCH:
            _flush(url, [], batch, summary)
    _flush(url, [], batch, summary)
    return summary
