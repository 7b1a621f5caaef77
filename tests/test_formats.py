"""Catalog and judgment parsers on the shipped real data, and their errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.catalog.formats import (
    CHORUS_GAINS,
    FormatError,
    parse_catalog,
    parse_chorus_labels,
    parse_esci_labels,
    parse_icecat_products,
    parse_jsonl_products,
    parse_labels,
    parse_wands_labels,
    parse_wands_products,
)
from tests.conftest import DATA, SHARED_DATA


def test_esci_sample_products_and_labels(esci_records) -> None:
    products = [p for p, _ in esci_records if p is not None]
    labels = [lab for _, lab in esci_records if lab is not None]
    assert len(products) == 392
    assert len(labels) == 392
    assert all(lab.gain == 1.0 for lab in labels)  # the sample is Exact-only
    assert len({lab.query for lab in labels}) == 39
    p = products[0]
    assert p.title and p.source == "esci"
    assert p.search_text.startswith(p.title)
    assert "<br>" not in (p.description or "")


def test_icecat_catalogue_is_complete() -> None:
    products = [p for p, _ in parse_icecat_products(DATA / "chorus_icecat" / "icecat_products")]
    assert len(products) == 19_406
    assert len({p.id for p in products}) == 19_406
    xerox = next(p for p in products if p.id == "3920564")
    assert xerox.brand == "Xerox"
    assert xerox.attributes["attr_t_printing_colours"] == "Black"


def test_chorus_labels_cover_catalogue() -> None:
    labels = list(parse_chorus_labels(DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"))
    assert len(labels) == 3085
    assert len({lab.query for lab in labels}) == 116
    assert {lab.gain for lab in labels} <= set(CHORUS_GAINS.values())
    ids = {p.id for p, _ in parse_icecat_products(DATA / "chorus_icecat" / "icecat_products")}
    assert {lab.product_id for lab in labels} <= ids


def test_esci_opensearch_judgments() -> None:
    path = SHARED_DATA / "esci" / "opensearch_us_judgments" / "esci_us_judgments.json"
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/data is absent)")
    labels = list(parse_esci_labels(path))
    assert len(labels) == 5358
    assert {lab.gain for lab in labels} == {1.0, 0.1, 0.01, 0.0}


def test_wands_formats(tmp_path: Path) -> None:
    (tmp_path / "product.csv").write_text(
        "product_id\tproduct_name\tproduct_class\tcategory hierarchy\tproduct_description\n"
        "7\tsmart coffee table\tCoffee Tables\tFurniture / Tables\tA <b>table</b> with USB\n"
    )
    (tmp_path / "query.csv").write_text("query_id\tquery\tquery_class\n1\tsmart table\tTables\n")
    (tmp_path / "label.csv").write_text(
        "id\tquery_id\tproduct_id\tlabel\n0\t1\t7\tExact\n1\t1\t8\tPartial\n2\t99\t7\tIrrelevant\n"
    )
    [(p, _)] = list(parse_wands_products(tmp_path / "product.csv"))
    assert p.id == "7" and p.description == "A table with USB"
    labels = list(parse_wands_labels(tmp_path / "label.csv"))
    assert [(lab.product_id, lab.gain) for lab in labels] == [("7", 1.0), ("8", 0.5)]


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "c.jsonl"
    good.write_text(
        json.dumps({"id": "p1", "title": "Red mug", "labels": [{"query": "mug", "gain": 1}]})
        + "\n\n"
        + json.dumps({"id": "p2", "title": "Blue mug", "brand": "Acme"})
        + "\n"
    )
    rows = list(parse_jsonl_products(good))
    assert [p.id for p, _ in rows if p] == ["p1", "p2"]
    assert [(lab.query, lab.product_id) for _, lab in rows if lab] == [("mug", "p1")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p1", "title": "ok"}\n{"id": "p2"}\n')
    with pytest.raises(FormatError, match=r"bad.jsonl:2"):
        list(parse_jsonl_products(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(FormatError, match="invalid JSON"):
        list(parse_jsonl_products(broken))


def test_bad_inputs_raise_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        parse_catalog("esci", tmp_path / "missing.csv")
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(FormatError, match="missing column"):
        list(parse_catalog("esci", wrong))
    ratings = tmp_path / "r.csv"
    ratings.write_text("query,docid,rating\nlaptop,1,7\n")
    with pytest.raises(FormatError, match="not 0–3"):
        list(parse_labels("chorus", ratings))
