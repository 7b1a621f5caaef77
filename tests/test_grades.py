"""Grades from several sources (service/grades.py), judged@k, and where they are used: the
human grade wins, assessed grades only fill the pool, and every score says how judged it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.catalog.formats import FormatError, assessed_grade_files, parse_chorus_labels
from service.db.engine import session_scope
from service.domain import GradeSet
from service.grades import is_assessed, merge_grades
from service.records import LabelRecord
from service.repositories.labels import has_label_source, targets_by_query, upsert_labels
from service.retrieval.metrics import judged_at_k
from trainer.online.gate import gate_decision
from trainer.training.data import examples_from_labels, load_examples

DATA = Path(__file__).resolve().parents[1] / "data" / "chorus_icecat"
CHORUS = DATA / "Broad_Query_Set_rated.csv"
# assessed_grades.csv: 3,438, none with a human grade (its README); surfaced_grades.csv: 182,
# of which 48 are human-graded pairs graded blind to measure agreement (the human grade wins)
ASSESSED_PAIRS = 3438 + 182 - 48


def test_assessed_sources_are_named_assessed_or_assessed_colon_who() -> None:
    assert is_assessed("assessed") and is_assessed("assessed:ospo")
    assert not is_assessed("chorus") and not is_assessed("assessedx")
    assert not is_assessed("interactions")


def test_human_grade_wins_whichever_is_higher_and_assessed_fills_the_rest() -> None:
    rows = [
        ("q", "a", 0.1, "chorus"),
        ("q", "a", 1.0, "assessed"),  # higher, but a person graded (q, a): ignored
        ("q", "b", 0.0, "assessed:ospo"),
        ("q", "b", 0.5, "assessed"),  # two assessors: the higher
        ("q", "c", 0.5, "assessed"),
        ("q", "c", 0.0, "interactions"),  # shoppers are people too: wins over the assessor
        ("r", "d", 1.0, "chorus"),
        ("r", "d", 0.5, "chorus"),  # two human sources: the higher
    ]
    assert merge_grades(rows) == {"q": {"a": 0.1, "b": 0.5, "c": 0.0}, "r": {"d": 1.0}}
    assert merge_grades(rows, GradeSet.human) == {"q": {"a": 0.1, "c": 0.0}, "r": {"d": 1.0}}


def test_judged_at_k_by_hand() -> None:
    targets = {"a": 1.0, "b": 0.0}  # a graded 0 is judged: it is known to be irrelevant
    assert judged_at_k(["a", "x", "b", "y"], targets, k=4) == 0.5
    assert judged_at_k(["a", "x", "b", "y"], targets, k=1) == 1.0
    assert judged_at_k(["x", "y"], targets, k=10) == 0.0
    assert judged_at_k([], targets, k=10) == 1.0  # nothing shown, nothing ungraded
    with pytest.raises(ValueError):
        judged_at_k(["a"], targets, k=0)


def test_chorus_loader_reads_an_assessed_file_with_its_source(tmp_path: Path) -> None:
    (tmp_path / "assessed").mkdir()
    (tmp_path / "rated.csv").write_text("query,docid,rating\nTV,1,3\nTV,2,0\n")
    (tmp_path / "assessed" / "ours.csv").write_text(
        "query,docid,grade,source\nTV,1,0,assessed:ospo\nTV,3,2,assessed:ospo\nradio,4,3,assessed\n"
    )
    assert assessed_grade_files(tmp_path / "rated.csv") == [tmp_path / "assessed" / "ours.csv"]
    recs = list(parse_chorus_labels(tmp_path / "assessed" / "ours.csv"))
    assert [(r.product_id, r.gain, r.source) for r in recs] == [
        ("1", 0.0, "assessed:ospo"), ("3", 0.5, "assessed:ospo"), ("4", 1.0, "assessed"),
    ]  # fmt: skip
    completed = load_examples(str(tmp_path / "rated.csv"))
    # the human 3 on (TV, 1) wins over the assessed 0; "radio" has no human grade: no example
    assert [(e.key, e.targets) for e in completed] == [("tv", {"1": 1.0, "2": 0.0, "3": 0.5})]
    human = load_examples(str(tmp_path / "rated.csv"), grades=GradeSet.human)
    assert [(e.key, e.targets) for e in human] == [("tv", {"1": 1.0, "2": 0.0})]


def test_an_assessed_file_must_name_an_assessor(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("query,docid,grade,source\nTV,1,2,chorus\n")
    with pytest.raises(FormatError, match="assessed"):
        list(parse_chorus_labels(bad))


def test_shipped_pools_are_completed_by_default() -> None:
    completed = {e.key: e for e in load_examples(str(CHORUS))}
    human = {e.key: e for e in load_examples(str(CHORUS), grades=GradeSet.human)}
    assert completed.keys() == human.keys()
    graded_c = sum(len(e.targets) for e in completed.values())
    graded_h = sum(len(e.targets) for e in human.values())
    assert graded_c - graded_h == ASSESSED_PAIRS  # the assessed pool adds its pairs ...
    for key, ex in human.items():  # ... and never override a human grade
        assert all(completed[key].targets[pid] == g for pid, g in ex.targets.items())


def test_examples_from_labels_keep_human_spelling() -> None:
    ex = examples_from_labels(
        [LabelRecord("tv", "1", 1.0, "assessed"), LabelRecord("TV ", "2", 0.5, "chorus")]
    )
    assert [(e.query, e.targets) for e in ex] == [("TV", {"1": 1.0, "2": 0.5})]


def test_database_targets_follow_the_same_rule(db_url: str) -> None:
    with session_scope(db_url) as s:
        upsert_labels(
            s,
            [
                LabelRecord("red mug", "p1", 0.1, "chorus"),
                LabelRecord("red mug", "p1", 1.0, "assessed"),
                LabelRecord("red mug", "p2", 0.5, "assessed"),
            ],
        )
    with session_scope(db_url) as s:
        assert targets_by_query(s) == {"red mug": {"p1": 0.1, "p2": 0.5}}
        assert targets_by_query(s, grades=GradeSet.human) == {"red mug": {"p1": 0.1}}
        assert has_label_source(s, "assessed") and not has_label_source(s, "wands")


def test_gate_reports_judged_and_flags_an_unreliable_decision() -> None:
    cand, raw = [0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8]
    ok = gate_decision(cand, raw, None, judged={"candidate": [1.0] * 4, "raw": [0.9] * 4})
    assert ok["reliable"] is True and ok["candidate"]["judged@10"] == 1.0
    low = gate_decision(cand, raw, None, judged={"candidate": [0.5] * 4, "raw": [1.0] * 4})
    assert low["reliable"] is False and low["judged@10"]["candidate"] == 0.5
    assert low["passed"] == ok["passed"]  # judged@k informs, the paired interval decides
    assert "reliable" not in gate_decision(cand, raw, None)
