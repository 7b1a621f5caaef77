"""What a grounded prompt shows the policy: the titles of the raw query's top results.

``TitleGrounder`` is the ``Grounder`` (service/policy/prompt.py) of one retriever: it ranks the
shopper's own words the way search does (the retriever's default mode) and returns the top
``n`` titles. Answers are cached per normalised query (an LRU); ``prefetch`` ranks many queries
in one embedder call and one search, which is how training and warm-up use it.
``serving_prompt`` is the one place a deployment's prompt is resolved (API, serving worker,
promotion, online update and explain all call it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cachetools import LRUCache

from service.normalize import normalize_query
from service.policy.prompt import PromptConfig, prompt_by_version
from service.retrieval.index import Retriever
from service.settings import Settings

CONTEXT_TITLES = 5  # measured: bench/grounding.py


class TitleGrounder:
    def __init__(
        self,
        retriever: Retriever | Callable[[], Retriever | None],
        n: int = CONTEXT_TITLES,
        max_cache: int = 100_000,
    ) -> None:
        if n < 1:
            raise ValueError("a grounded prompt shows at least one title")
        self._retriever = retriever
        self.n = n
        self._cache: LRUCache[tuple[str, str], tuple[str, ...]] = LRUCache(max_cache)

    def _current(self) -> Retriever:
        retriever = self._retriever() if callable(self._retriever) else self._retriever
        if retriever is None:
            raise RuntimeError("no index is loaded: a grounded prompt has no titles to show")
        return retriever

    def prefetch(self, queries: Sequence[str]) -> None:
        """Rank every query not cached yet, in one batch."""
        retriever = self._current()
        todo = list(
            dict.fromkeys(
                q for q in queries if (retriever.version, normalize_query(q)) not in self._cache
            )
        )
        if not todo:
            return
        for query, ranking in zip(todo, retriever.rank(todo, self.n), strict=True):
            titles = tuple(retriever.titles[r] for r in ranking.rows.tolist())
            self._cache[(retriever.version, normalize_query(query))] = titles

    def __call__(self, query: str) -> tuple[str, ...]:
        retriever = self._current()
        key = (retriever.version, normalize_query(query))
        if key not in self._cache:
            self.prefetch([query])
        return self._cache[key]


def serving_prompt(
    settings: Settings, retriever: Retriever | Callable[[], Retriever | None] | None = None
) -> PromptConfig:
    """The deployment's prompt (``policy_prompt``); a grounded one shows the titles of
    ``retriever`` (default: the index version current when first needed, kept for the
    process: a worker's warm-up grounds on the version it started with)."""
    prompt = prompt_by_version(settings.policy_prompt)
    if not prompt.grounded:
        return prompt
    return prompt.with_grounder(TitleGrounder(retriever or _opened_once(settings)))


def _opened_once(settings: Settings) -> Callable[[], Retriever]:
    from service.retrieval.open import open_retriever

    opened: list[Retriever] = []

    def get() -> Retriever:
        if not opened:
            opened.append(open_retriever(settings))
        return opened[0]

    return get
