"""The lexical arm: a BM25 index (``bm25s``) stored beside the FAISS index of the same version.

bm25s precomputes every (term, document) BM25 weight into a sparse matrix, so scoring a query
is one sparse column slice and a sum: no inverted-list walking, numpy only, memory-mapped from
disk. We score all documents of the version (``scores``) and take the top k ourselves; that is
what lets the pooled training reward and filters restrict the candidates exactly.

Text processing (``analyze``): lower-case, words of ≥ 2 word characters, English stopwords
removed, Snowball English stemming (PyStemmer). Queries and products go through the same
function; a query whose every term is unknown scores 0 everywhere and retrieves nothing.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

LEXICAL_DIRNAME = "lexical"
_ANALYZER_FILE = "analyzer.json"
# The analysed terms of each row, one line per row (terms never hold whitespace): what a
# search-engine backend indexes to score exactly the terms this arm scores
# (service/retrieval/milvus.py); gzip level 1, read only when a version is published.
TERMS_FILE = "terms.txt.gz"
_NO_TERMS = " "


@lru_cache(maxsize=1)
def _stemmer():  # type: ignore[no-untyped-def]
    import Stemmer

    return Stemmer.Stemmer("english")


def analyze(texts: Sequence[str], stem: bool = True) -> list[list[str]]:
    """Terms of each text (see module docstring)."""
    import bm25s

    if not texts:
        return []
    tokens = bm25s.tokenize(
        list(texts),
        stopwords="en",
        stemmer=_stemmer() if stem else None,
        return_ids=False,
        show_progress=False,
    )
    return [list(t) for t in tokens]


class LexicalIndex:
    """BM25 (Lucene variant, k1=1.5, b=0.75) over one text per index row."""

    def __init__(self, model, stem: bool, terms: list[str] | None = None) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self.stem = stem
        self.count = int(model.scores["num_docs"])
        self.terms = terms  # each row's analysed text, kept from a build (TERMS_FILE)

    @classmethod
    def build(cls, texts: Sequence[str], stem: bool = True) -> LexicalIndex:
        import bm25s

        model = bm25s.BM25(method="lucene")
        # An empty document list breaks bm25s; keep a row per product even if its text is empty.
        analysed = analyze(texts, stem)
        corpus = [list(t) for t in analysed] or [[]]
        if not any(corpus):
            # No term at all (every title a stopword or a single character) also breaks bm25s:
            # give it one term no query can produce (the analyzer never emits a space), so the
            # arm exists and simply matches nothing.
            corpus[0] = [_NO_TERMS]
        model.index(corpus, show_progress=False)
        return cls(model, stem, [" ".join(t) for t in analysed])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save(str(directory), show_progress=False)
        (directory / _ANALYZER_FILE).write_text(json.dumps({"stem": self.stem}))
        if self.terms is not None:
            with gzip.open(directory / TERMS_FILE, "wt", compresslevel=1) as f:
                f.writelines(f"{t}\n" for t in self.terms)

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        import bm25s

        model = bm25s.BM25.load(str(directory), mmap=True, show_progress=False)
        analyzer = json.loads((directory / _ANALYZER_FILE).read_text())
        return cls(model, bool(analyzer["stem"]))

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(B, N) BM25 score of every row for every text (0 where no term matches)."""
        out = np.zeros((len(texts), self.count), dtype=np.float32)
        for b, terms in enumerate(analyze(texts, self.stem)):
            ids = self.model.get_tokens_ids(terms)
            if ids:
                out[b] = self.model.get_scores_from_ids(ids)
        return out

    def search(
        self, texts: Sequence[str], k: int, masks: Sequence[np.ndarray | None] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-k (rows, scores) per text, best first; rows with score 0 are not matches.

        ``masks`` (one per text, None = every row) restricts a text to the admitted rows: every
        row is scored anyway, so the others are simply zeroed before the top k is taken."""
        out = []
        for b, row in enumerate(self.scores(texts)):
            mask = masks[b] if masks is not None else None
            if mask is not None:
                row[~mask] = 0
            out.append(top_k(row, k))
        return out


def read_terms(directory: Path) -> list[str] | None:
    """Each row's analysed text (TERMS_FILE), None for versions built before it was kept."""
    try:
        with gzip.open(directory / TERMS_FILE, "rt") as f:
            return [line.rstrip("\n") for line in f]
    except FileNotFoundError:
        return None


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) of the k best positive scores of a (N,) vector, best first, ties by row."""
    positive = np.flatnonzero(scores > 0)
    if positive.size > k:
        part = np.argpartition(-scores[positive], k - 1)[:k]
        positive = positive[part]
    order = np.lexsort((positive, -scores[positive]))
    rows = positive[order].astype(np.int64)
    return rows, scores[rows].astype(np.float32)
