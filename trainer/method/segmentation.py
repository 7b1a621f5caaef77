"""Cutting a rewrite into players: the phrases whose credit OSPO estimates.

A *player* is a span of the rewrite that the credit estimators (trainer/method/attribution.py)
switch on and off. Players tile the text exactly (joined back they give the rewrite, character for
character), so credit on a player maps to a character span and from there to the tokens that
generated it (``trainer.method.ospo.spread_to_tokens``). No player is empty, and punctuation is a
player only in a text made of nothing else: it rides with the word before it (after it at the start
of the text).

A *phrase* is the default player: a run of at most ``max_words`` words (3) that a shopper would
keep or drop as a unit — "running shoes", "for women", "with arch support,". Words are too fine
("running" without "shoes" retrieves nonsense, and n words cost 2^n coalitions for exact
Shapley); sentences are too coarse (most rewrites are one sentence). A phrase ends after
``, ; : . ! ?`` or a dash and before a connector (and, or, &, +, /, ...) or a preposition (with,
for, in, ...), which is where the attributes of a product query meet; a longer run is cut into
balanced pieces.

These are English heuristics on purpose, not a parser: every rewrite of every training step is
segmented (twice: ``attribute_batch`` records, then replays), queries and rewrites are short
keyword strings that a sentence parser handles no better, and a parser would add a model
download and a dependency to the training step. Text in other languages still tiles correctly;
it is cut at punctuation and into ``max_words`` pieces.

``unions`` groups players by sentence for the Owen value's union structure, and
``coalition_text`` renders a coalition back into the text that is scored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SegmentMode = Literal["phrase", "word", "sentence"]
UnionMode = Literal["sentence", "blocks"]

__all__ = ["Segment", "SegmentMode", "UnionMode", "coalition_text", "segment", "unions"]

_CLOSERS = "\"')]}»”’"
_OPENERS = "\"'([{«“‘"
_SENTENCE_END = ".!?…。！？"
# A phrase ends after a token whose core ends with one of these.
_PHRASE_END = ",;:" + _SENTENCE_END + "-–—|"
# Non-alphanumeric tokens that are connectors in their own right ("salt & pepper"). Every other
# punctuation-only token is glued to its left neighbour so it never becomes a player on its own.
_CONNECTOR_SYMBOLS = frozenset({"&", "+", "/"})
_CONNECTOR_WORDS = frozenset({"and", "or", "but", "nor", "plus", "vs", "versus"})
_PREPOSITIONS = frozenset(
    {
        "about", "above", "across", "after", "against", "along", "among", "around", "at",
        "before", "behind", "below", "beneath", "beside", "between", "by", "during", "except",
        "for", "from", "in", "inside", "into", "near", "of", "off", "on", "onto", "over", "per",
        "than", "through", "to", "toward", "towards", "under", "until", "upon", "via", "with",
        "within", "without",
    }
)  # fmt: skip
_PHRASE_STARTERS = _CONNECTOR_WORDS | _PREPOSITIONS | _CONNECTOR_SYMBOLS
# Tokens ending in "." that are not sentence ends.
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "vs.", "approx.", "no.", "dr.", "mr.", "mrs.", "ms."})
_TOKEN_RE = re.compile(r"\S+\s*")


@dataclass(frozen=True)
class Segment:
    """One player: the character span ``[start, end)`` of the source text and its text.

    ``text`` keeps the trailing whitespace/punctuation, so concatenating all segments gives back
    the source exactly.
    """

    start: int
    end: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end or len(self.text) != self.end - self.start:
            raise ValueError(f"inconsistent segment {self!r}")


@dataclass
class _Unit:
    """A word together with its trailing whitespace and glued punctuation (a span of the text)."""

    start: int
    end: int
    core: str  # the word(s) without surrounding whitespace, used for boundary decisions
    trailing_ws: str = ""


def _units(text: str) -> list[_Unit]:
    """Split into words; punctuation-only tokens join their left neighbour (right if first).

    Leading whitespace of the text is absorbed into the first unit so the spans tile the text.
    """
    units: list[_Unit] = []
    pending_start: int | None = None  # start of a leading punctuation run waiting for a word
    for m in _TOKEN_RE.finditer(text):
        word = m.group().rstrip()
        trailing = m.group()[len(word) :]
        is_word = any(c.isalnum() for c in word) or word in _CONNECTOR_SYMBOLS
        if not is_word and units:
            last = units[-1]
            last.end, last.core, last.trailing_ws = m.end(), last.core + " " + word, trailing
            continue
        if not is_word:
            pending_start = m.start() if pending_start is None else pending_start
            continue
        start = m.start() if pending_start is None else pending_start
        units.append(_Unit(start, m.end(), text[start : m.start() + len(word)].strip(), trailing))
        pending_start = None
    if pending_start is not None:  # text made only of punctuation
        units.append(_Unit(pending_start, len(text), text[pending_start:].strip()))
    if units:
        units[0].start = 0
    return units


def _ends_sentence(unit: _Unit) -> bool:
    core = unit.core.rstrip(_CLOSERS + " ")
    if "\n" in unit.trailing_ws:
        return True
    return (
        bool(core)
        and core[-1] in _SENTENCE_END
        and core.lstrip(_OPENERS).lower() not in _ABBREVIATIONS
    )


def _ends_phrase(unit: _Unit) -> bool:
    core = unit.core.rstrip(_CLOSERS + " ")
    return _ends_sentence(unit) or (bool(core) and core[-1] in _PHRASE_END)


def _starts_phrase(unit: _Unit) -> bool:
    first = unit.core.split()[0] if unit.core.split() else ""
    return first.strip(_OPENERS + _CLOSERS + ",.;:").lower() in _PHRASE_STARTERS


def _group_units(units: list[_Unit], breaks_after: list[bool]) -> list[list[_Unit]]:
    groups: list[list[_Unit]] = [[]]
    for unit, brk in zip(units, breaks_after, strict=True):
        groups[-1].append(unit)
        if brk:
            groups.append([])
    return [g for g in groups if g]


def _balanced_chunks(items: list[_Unit], max_size: int) -> list[list[_Unit]]:
    """Cut a run into ceil(len/max_size) nearly equal pieces (7 words, max 3 -> 2+3+2)."""
    n_chunks = -(-len(items) // max_size)
    bounds = [round(k * len(items) / n_chunks) for k in range(n_chunks + 1)]
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def segment(text: str, mode: SegmentMode = "phrase", *, max_words: int = 3) -> list[Segment]:
    """Cut ``text`` into players that tile it: ``"".join(s.text for s in segs) == text``.

    * ``"word"``: one player per word (trailing whitespace and punctuation attached).
    * ``"sentence"``: split after ``.!?`` (not after a few abbreviations) and at newlines.
    * ``"phrase"``: a cheap noun-chunk approximation without spaCy. Split after ``, ; : . ! ?``
      and dashes, before connectors (and/or/&/+//, plus) and prepositions (with, for, in, ...),
      then cut what remains into balanced pieces of at most ``max_words`` words.

    Empty text gives ``[]``; whitespace-only text gives one whitespace segment. No segment is
    ever empty.
    """
    if mode not in ("phrase", "word", "sentence"):
        raise ValueError(f"unknown segmentation mode {mode!r}")
    if max_words < 1:
        raise ValueError("max_words must be >= 1")
    if not text:
        return []
    units = _units(text)
    if not units:
        return [Segment(0, len(text), text)]
    units[-1].end = len(text)

    if mode == "word":
        groups = [[u] for u in units]
    elif mode == "sentence":
        groups = _group_units(units, [_ends_sentence(u) for u in units])
    else:
        breaks = [
            _ends_phrase(u) or (nxt is not None and _starts_phrase(nxt))
            for u, nxt in zip(units, [*units[1:], None], strict=True)
        ]
        groups = [
            chunk
            for group in _group_units(units, breaks)
            for chunk in _balanced_chunks(group, max_words)
        ]
    return [Segment(g[0].start, g[-1].end, text[g[0].start : g[-1].end]) for g in groups]


def unions(
    segments: Sequence[Segment],
    text: str,
    mode: UnionMode = "sentence",
    block_size: int = 4,
) -> list[list[int]]:
    """Group player indices into contiguous unions (a partition of ``range(len(segments))``).

    ``"sentence"`` puts players whose first character lies in the same sentence of ``text``
    together (phrases never straddle sentences, so this is exact for phrase/word players);
    ``"blocks"`` cuts the players into consecutive blocks of ``block_size``.
    """
    n = len(segments)
    if mode == "blocks":
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        return [list(range(a, min(a + block_size, n))) for a in range(0, n, block_size)]
    if mode != "sentence":
        raise ValueError(f"unknown union mode {mode!r}")
    sentence_starts = [s.start for s in segment(text, "sentence")]
    groups: list[list[int]] = []
    last_id = -1
    for i, seg in enumerate(segments):
        sid = int(np.searchsorted(sentence_starts, seg.start, side="right")) - 1
        if sid != last_id or not groups:
            groups.append([])
            last_id = sid
        groups[-1].append(i)
    return groups


def coalition_text(text: str, segments: Sequence[Segment], coalition: Iterable[int]) -> str:
    """The text of a coalition: chosen segments in original order, whitespace normalised."""
    del text  # segments carry their own text; kept in the signature for call-site symmetry
    joined = "".join(segments[i].text for i in sorted(coalition))
    return " ".join(joined.split())
