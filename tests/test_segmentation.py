"""Tests for trainer.method.segmentation: players tile the text, phrases stay short, unions follow
sentences."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.method.segmentation import Segment, coalition_text, segment, unions

WORDS = ["red", "shoes", "for", "women", "and", "with", "Größe", "42", "café", "&", "/", "e.g."]
texty = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(list("ab c,;.!?\n\t-()&/'\"é😀\u00a0\u3000"))),
    st.lists(
        st.tuples(st.sampled_from(WORDS), st.sampled_from([" ", ", ", ". ", "  ", "\n", "; ", ""]))
    ).map(lambda parts: "".join(w + s for w, s in parts)),
)


@pytest.mark.parametrize("mode", ["phrase", "word", "sentence"])
@settings(max_examples=150, deadline=None)
@given(text=texty)
def test_segments_tile_the_text(mode: str, text: str) -> None:
    segs = segment(text, mode)  # type: ignore[arg-type]
    assert "".join(s.text for s in segs) == text
    if not text:
        assert segs == []
        return
    assert segs[0].start == 0 and segs[-1].end == len(text)
    for a, b in itertools.pairwise(segs):
        assert a.end == b.start
    for s in segs:
        assert s.end > s.start and s.text == text[s.start : s.end]


@settings(max_examples=100, deadline=None)
@given(text=texty)
def test_phrases_are_short_and_nest_in_sentences(text: str) -> None:
    phrases = segment(text, "phrase", max_words=3)
    for s in phrases:  # players are words (or & + /); bare punctuation rides along
        words = [t for t in s.text.split() if any(c.isalnum() for c in t) or t in {"&", "+", "/"}]
        assert len(words) <= 3
    groups = unions(phrases, text, "sentence")
    assert [p for g in groups for p in g] == list(range(len(phrases)))
    sentence_starts = {s.start for s in segment(text, "sentence")}
    assert {phrases[g[0]].start for g in groups} == sentence_starts


def test_phrase_examples() -> None:
    text = "running shoes for women with arch support, waterproof and breathable"
    assert [s.text for s in segment(text)] == [
        "running shoes ",
        "for women ",
        "with arch support, ",
        "waterproof ",
        "and breathable",
    ]
    assert [s.text for s in segment("  red, shoes!", "word")] == ["  red, ", "shoes!"]
    assert [s.text for s in segment("Hi there. Size (e.g. 42) ok! Next", "sentence")] == [
        "Hi there. ",
        "Size (e.g. 42) ok! ",
        "Next",
    ]
    assert len(segment("a b c d e f g", max_words=3)) == 3
    with pytest.raises(ValueError):
        Segment(0, 2, "abc")


def test_unions_blocks_and_coalition_text() -> None:
    text = "red shoes, size 42. Blue laces and gift box"
    segs = segment(text)
    assert [s.text for s in segs] == ["red shoes, ", "size 42. ", "Blue laces ", "and gift box"]
    assert unions(segs, text, "blocks", block_size=3) == [[0, 1, 2], [3]]
    assert unions(segs, text, "sentence") == [[0, 1], [2, 3]]
    assert coalition_text(text, segs, frozenset({0, 2})) == "red shoes, Blue laces"
    assert coalition_text(text, segs, frozenset()) == ""
    assert coalition_text(text, segs, frozenset(range(len(segs)))) == text
