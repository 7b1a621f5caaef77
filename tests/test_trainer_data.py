"""trainer.training.data: examples from files and the database, deterministic query split."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.catalog.formats import FormatError
from service.records import LabelRecord
from trainer.training.data import (
    Example,
    examples_from_labels,
    load_examples,
    restrict_to_index,
    sniff_label_format,
    split_examples,
)

DATA = Path(__file__).resolve().parents[1] / "data"
CHORUS = DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"
ESCI = DATA / "esci" / "sample_2c_full_data.csv"


def _examples(n: int) -> list[Example]:
    return [Example(f"Query {i}", f"query {i}", {f"p{i}": 1.0}) for i in range(n)]


def test_labels_merge_by_normalised_query_keeping_max_gain() -> None:
    labels = [
        LabelRecord("USB  Charger", "a", 0.5, "x"),
        LabelRecord("usb charger", "a", 1.0, "y"),
        LabelRecord("usb charger", "b", 0.0, "x"),
        LabelRecord("laptop", "c", 0.1, "x"),
    ]
    ex = examples_from_labels(labels)
    assert [e.key for e in ex] == ["laptop", "usb charger"]
    assert ex[1].query == "USB Charger"  # first spelling, whitespace collapsed
    assert ex[1].targets == {"a": 1.0, "b": 0.0}
    assert ex[1].n_relevant == 1


def test_split_is_deterministic_order_free_and_seeded() -> None:
    ex = _examples(200)
    train, val = split_examples(ex, 0.25, seed=7)
    assert len(train) + len(val) == 200 and 25 < len(val) < 75
    assert {e.key for e in train}.isdisjoint({e.key for e in val})
    train2, val2 = split_examples(list(reversed(ex)), 0.25, seed=7)
    assert {e.key for e in val2} == {e.key for e in val}
    # The side of a query does not depend on the other examples, nor on its spelling.
    _, val_sub = split_examples(ex[:50], 0.25, seed=7)
    assert {e.key for e in val_sub} == {e.key for e in val if e in ex[:50]}
    shouted = [Example(e.query.upper(), e.key.upper(), e.targets) for e in ex]
    assert [e.key.lower() for e in split_examples(shouted, 0.25, seed=7)[1]] == [e.key for e in val]
    assert {e.key for e in split_examples(ex, 0.25, seed=8)[1]} != {e.key for e in val}
    assert split_examples(ex, 0.0)[1] == []
    with pytest.raises(ValueError):
        split_examples(ex, 1.0)


def test_restrict_to_index_drops_unknown_products_and_empty_queries() -> None:
    ex = [
        Example("a", "a", {"p1": 1.0, "gone": 1.0}),
        Example("b", "b", {"gone": 1.0, "p2": 0.0}),
    ]
    kept = restrict_to_index(ex, {"p1", "p2"})
    assert kept == [Example("a", "a", {"p1": 1.0})]


@pytest.mark.skipif(not CHORUS.exists() or not ESCI.exists(), reason="demo data absent")
def test_load_shipped_judgment_files() -> None:
    assert sniff_label_format(CHORUS) == "chorus" and sniff_label_format(ESCI) == "esci"
    chorus = load_examples(str(CHORUS))
    assert len(chorus) == 116
    assert all(0.0 <= g <= 1.0 for e in chorus for g in e.targets.values())
    esci = load_examples(str(ESCI))
    assert len(esci) == 39 and sum(e.n_relevant for e in esci) > 0


def test_bad_files_raise_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        load_examples(str(tmp_path / "missing.csv"))
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(FormatError):
        load_examples(str(odd))
    with pytest.raises(ValueError):
        load_examples("db")


def test_examples_from_database(db_url: str) -> None:
    from service.db.engine import session_scope
    from service.repositories.labels import upsert_labels
    from trainer.training.data import load_db_examples

    with session_scope(db_url) as session:
        upsert_labels(
            session,
            [
                LabelRecord("AA Battery", "p1", 1.0, "chorus"),
                LabelRecord("aa battery", "p2", 0.5, "chorus"),
                LabelRecord("dining chairs", "p3", 1.0, "esci"),
            ],
        )
    every = load_db_examples(db_url)
    assert [e.key for e in every] == ["aa battery", "dining chairs"]
    assert every[0].targets == {"p1": 1.0, "p2": 0.5}
    assert every[0].query.lower() == "aa battery"
    assert [e.key for e in load_db_examples(db_url, ["esci"])] == ["dining chairs"]
