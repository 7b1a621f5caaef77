"""The retrieval reward: NDCG@k of a text's search results against a query's judged products.

OSPO values a rewrite *and* every coalition of its phrases by a real retrieval (the v(S) of
trainer/method/ospo.py's notation), so one training step asks for thousands of rankings.
``RewardModel.score`` takes all of them at once as ``(text, query_key)`` pairs and does ONE
embedder call, ONE FAISS search and one BM25 pass for the distinct texts it has not seen;
rankings are cached by text (per step: the trainer calls ``clear_cache`` between steps), so
duplicate coalition texts cost nothing. Calling the model is ``score``: a RewardModel is the
``PairValueFn`` (trainer/method/attribution.py) that the training step takes as its reward.

Retrieval is the serving retriever's, in ``retrieval`` mode (default: the retriever's own
default, hybrid), so the reward measures what shoppers would see. Two scopes:
* ``"full"``   — search the whole index (``Retriever.rank``), as serving does.
* ``"pooled"`` — rank only the query's candidate pool: its judged products that are in the
  index (any gain, including 0) plus ``pool_negatives`` random catalogue products drawn with a
  generator seeded by (seed, query key). Each arm scores the pool (dot products with
  ``retriever.embeddings[pool_rows]``; BM25 scores of those rows) and the arms are fused with
  the retriever's fusion settings (the paper's pooled setting, made hybrid).

In full scope the policy's additions enter retrieval as serving lets them (``entry``,
``ExpansionEntry``): ``concat`` searches the text as given; ``lexical`` and ``fused`` need the
raw query of each key (``queries``) to tell it from the additions — ``lexical`` ranks the raw
query with the text as BM25's query, ``fused`` fuses the raw query's ranking with the text's
(service/retrieval/fusion.py ``fuse_expansion``). A text equal to its raw query is the raw
query's ranking under every entry, so v(∅) = 0 holds whatever the entry.

An empty text retrieves nothing and scores 0. (Attribution values coalitions relative to the
raw query, so its v(∅) = 0 is the raw query, not the empty text: see trainer/training/step.py.)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.domain import ExpansionEntry, RetrievalMode
from service.retrieval.exact import DenseBackend, dense_search_on
from service.retrieval.fusion import fuse, fuse_expansion
from service.retrieval.lexical import top_k
from service.retrieval.metrics import judged_at_k, ndcg_at_k
from trainer.method.attribution import TextValueFn

if TYPE_CHECKING:  # faiss comes with the index: the training step imports this module without it
    from service.retrieval.index import Retriever

RewardMode = Literal["full", "pooled"]
# Lexical entry: a ranking is cached under "raw query <_LEXICAL> text" (dense arm, lexical arm).
_LEXICAL = "\x00"
Pair = tuple[str, str]  # (text to search with, query key whose targets score it)


@dataclass
class RewardStats:
    """Counters since construction."""

    requests: int = 0  # (text, query) pairs asked for
    cache_hits: int = 0  # pairs answered from the ranking cache (incl. duplicates in a call)
    texts_embedded: int = 0  # distinct texts sent to the embedder
    embed_calls: int = 0  # embedder calls (one per ``score`` call with something new)
    search_calls: int = 0  # FAISS searches (full mode)
    seconds: float = 0.0  # wall time inside ``score``/``rankings``

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class RewardModel:
    """Batched, cached NDCG@k rewards over a frozen retriever.

    retriever: the embedder + FAISS index that serving uses.
    targets:   {query key: {product id: gain}}; ids missing from the index are kept (they
               count in the ideal DCG, so an unreachable target lowers the reward ceiling;
               ``trainer.training.data.restrict_to_index`` drops them beforehand if unwanted).
    k:         NDCG cut-off.
    depth:     how many results each ranking keeps (>= k; evaluation asks for more).
    mode:      "full" or "pooled" (module docstring).
    retrieval: dense, lexical or hybrid; None = the retriever's default mode.
    device:    where the dense arm embeds and ranks (the training device; "cpu": the
               retriever as it is); dense: its backend, "auto" | "faiss" | "torch"
               (service/retrieval/exact.py's ``dense_search_on``: a matmul on the GPU).
    """

    def __init__(
        self,
        retriever: Retriever,
        targets: Mapping[str, Mapping[str, float]],
        *,
        k: int = 10,
        depth: int | None = None,
        mode: RewardMode = "full",
        pool_negatives: int = 0,
        seed: int = 0,
        max_cache: int = 500_000,
        retrieval: RetrievalMode | str | None = None,
        device: str = "cpu",
        dense: DenseBackend = "auto",
        entry: ExpansionEntry = ExpansionEntry.concat,
        queries: Mapping[str, str] | None = None,
    ) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        if mode not in ("full", "pooled"):
            raise ValueError(f"mode must be 'full' or 'pooled', got {mode!r}")
        self.entry = ExpansionEntry(entry) if mode == "full" else ExpansionEntry.concat
        self.queries = dict(queries or {})
        if self.entry != ExpansionEntry.concat and not set(targets) <= set(self.queries):
            raise ValueError(f"entry {self.entry} needs the raw query of every target key")
        self.retriever = dense_search_on(retriever, device, dense)
        self.targets = {key: dict(t) for key, t in targets.items()}
        self.k = k
        self.depth = max(k, depth or k)
        self.mode: RewardMode = mode
        self.retrieval = retriever.resolve_mode(retrieval)
        self.max_cache = max_cache
        self.stats = RewardStats()
        self._rankings: dict[str, list[str]] | dict[Pair, list[str]] = {}
        self._vectors: dict[str, np.ndarray] = {}  # pooled mode: text -> (dim,) embedding
        self._pools: dict[str, np.ndarray] = {}
        if mode == "pooled":
            self._pools = {
                key: self._pool_rows(key, t, pool_negatives, seed)
                for key, t in self.targets.items()
            }

    # -- public -------------------------------------------------------------------------------

    def score(self, pairs: Sequence[Pair]) -> np.ndarray:
        """NDCG@k of each (text, query key) pair, shape (len(pairs),) float64."""
        ranked = self.rankings(pairs)
        return np.array(
            [
                ndcg_at_k(r, self.targets[key], self.k)
                for r, (_, key) in zip(ranked, pairs, strict=True)
            ],
            dtype=np.float64,
        )

    def rankings(self, pairs: Sequence[Pair]) -> list[list[str]]:
        """Ranked product ids (up to ``depth``) for each pair, the additions entering as
        ``entry`` says; one embed + one search in all."""
        if self.entry == ExpansionEntry.concat:
            return self._searched(pairs)
        raws = [self.queries[key] for _, key in pairs]
        if self.entry == ExpansionEntry.lexical:
            return self._searched(
                [(f"{raw}{_LEXICAL}{t}", key) for (t, key), raw in zip(pairs, raws, strict=True)]
            )
        ranked = self._searched(
            [*pairs, *((r, key) for r, (_, key) in zip(raws, pairs, strict=True))]
        )
        n = len(pairs)
        return [
            ranked[n + i] if text == raws[i] else self._fused(ranked[n + i], ranked[i])
            for i, (text, _) in enumerate(pairs)
        ]

    def _fused(self, raw: list[str], expanded: list[str]) -> list[str]:
        ids, row_of = self.retriever.ids, self.retriever.row_of
        arms = [
            (np.array([row_of[p] for p in ranking], dtype=np.int64), np.zeros(len(ranking)))
            for ranking in (raw, expanded)
        ]
        rows, _ = fuse_expansion(arms[0], arms[1], self.retriever.fusion, self.depth)
        return [ids[r] for r in rows.tolist()]

    def _searched(self, pairs: Sequence[Pair]) -> list[list[str]]:
        started = time.perf_counter()
        for _, key in pairs:
            if key not in self.targets:
                raise KeyError(f"no targets for query {key!r}")
        cache_keys = [self._cache_key(text, key) for text, key in pairs]
        missing = [c for c in dict.fromkeys(cache_keys) if c not in self._rankings]
        self.stats.requests += len(pairs)
        self.stats.cache_hits += len(pairs) - len(missing)
        if len(self._rankings) + len(missing) > self.max_cache:
            self.clear_cache()
        if missing:
            if self.mode == "full":
                self._search_full(missing)  # type: ignore[arg-type]
            else:
                self._search_pooled(missing)  # type: ignore[arg-type]
        self.stats.seconds += time.perf_counter() - started
        return [self._rankings[c] for c in cache_keys]  # type: ignore[index]

    def judged(self, pairs: Sequence[Pair]) -> np.ndarray:
        """judged@k of each pair's ranking: the share of its top k with any grade."""
        ranked = self.rankings(pairs)
        return np.array(
            [
                judged_at_k(r, self.targets[key], self.k)
                for r, (_, key) in zip(ranked, pairs, strict=True)
            ],
            dtype=np.float64,
        )

    def __call__(self, pairs: Sequence[Pair]) -> np.ndarray:
        """``score``: the model as the step's reward function (a ``PairValueFn[str]``)."""
        return self.score(pairs)

    def value_fn(self, query_key: str) -> TextValueFn:
        """``attribute``'s value function for one query: texts -> NDCG@k (one batch per call)."""
        return lambda texts: self.score([(t, query_key) for t in texts])

    def clear_cache(self) -> None:
        self._rankings.clear()
        self._vectors.clear()

    # -- internals ----------------------------------------------------------------------------

    def _cache_key(self, text: str, key: str) -> str | Pair:
        # A full-index ranking depends on the text only; a pooled one also on the query's pool.
        return text if self.mode == "full" else (text, key)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) in one embedder call; empty texts are never sent."""
        self.stats.texts_embedded += len(texts)
        self.stats.embed_calls += 1
        return self.retriever.embedder.encode(texts)

    def _search_full(self, texts: list[str]) -> None:
        nonempty = [t for t in texts if t.strip()]
        for t in texts:
            if not t.strip():
                self._rankings[t] = []  # type: ignore[index]
        if not nonempty:
            return
        if self.retrieval != RetrievalMode.lexical:
            self.stats.texts_embedded += len(nonempty)
            self.stats.embed_calls += 1
        self.stats.search_calls += 1
        if self.entry == ExpansionEntry.lexical:
            parts = [t.split(_LEXICAL, 1) for t in nonempty]
            rankings = self.retriever.rank(
                [raw for raw, _ in parts], self.depth, self.retrieval,
                lexical_texts=[text for _, text in parts],
            )  # fmt: skip
        else:
            rankings = self.retriever.rank(nonempty, self.depth, self.retrieval)
        ids = self.retriever.ids
        for text, ranking in zip(nonempty, rankings, strict=True):
            self._rankings[text] = [ids[r] for r in ranking.rows.tolist()]  # type: ignore[index]

    def _search_pooled(self, pairs: list[Pair]) -> None:
        new_texts = [t for t in dict.fromkeys(t for t, _ in pairs) if t.strip()]
        new_texts = [t for t in new_texts if t not in self._vectors]
        use_dense = self.retrieval != RetrievalMode.lexical
        use_lexical = self.retrieval != RetrievalMode.dense
        if new_texts and use_dense:
            self._vectors.update(zip(new_texts, self._embed(new_texts), strict=True))
        ids = self.retriever.ids
        embeddings = self.retriever.embeddings
        fusion = self.retriever.fusion
        weights = (fusion.dense_weight, fusion.lexical_weight)
        by_key: dict[str, list[str]] = {}
        for text, key in pairs:
            if not text.strip():
                self._rankings[(text, key)] = []  # type: ignore[index]
            else:
                by_key.setdefault(key, []).append(text)
        for key, texts in by_key.items():
            pool = self._pools[key]  # (m,) rows
            if pool.size == 0:
                for t in texts:
                    self._rankings[(t, key)] = []  # type: ignore[index]
                continue
            m = pool.size
            dense = lexical = None
            if use_dense:
                pool_vectors = np.asarray(embeddings[pool], dtype=np.float32)  # (m, dim)
                query_vectors = np.stack([self._vectors[t] for t in texts])  # (b, dim)
                dense = query_vectors @ pool_vectors.T  # (b, m)
            if use_lexical:
                assert self.retriever.lexical is not None
                lexical = self.retriever.lexical.scores(texts)[:, pool]  # (b, m)
            for b, t in enumerate(texts):
                if dense is not None and lexical is None:
                    order = np.argsort(-dense[b], kind="stable")[: self.depth]
                elif dense is None and lexical is not None:
                    order, _ = top_k(lexical[b], min(self.depth, m))
                else:
                    assert dense is not None and lexical is not None
                    dense_arm = np.argsort(-dense[b], kind="stable")[: fusion.depth]
                    lexical_arm = top_k(lexical[b], min(fusion.depth, m))
                    order, _ = fuse(
                        ((dense_arm, dense[b][dense_arm]), lexical_arm),
                        weights,
                        fusion,
                        self.depth,
                    )
                self._rankings[(t, key)] = [ids[pool[j]] for j in order.tolist()]  # type: ignore[index]

    def _pool_rows(
        self, key: str, targets: Mapping[str, float], negatives: int, seed: int
    ) -> np.ndarray:
        """Rows of the query's judged products in the index, plus seeded random negatives."""
        row_of = self.retriever.row_of
        rows = sorted({row_of[pid] for pid in targets if pid in row_of})
        n = len(self.retriever.ids)
        if negatives > 0 and n > len(rows):
            digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            taken = set(rows)
            extra = [int(r) for r in rng.permutation(n)[: negatives + len(rows)] if r not in taken]
            rows = rows + sorted(extra[:negatives])
        return np.asarray(rows, dtype=np.int64)
