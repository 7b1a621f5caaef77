"""The product's named sets of values: one `StrEnum` per set, used by the database models, the
API schemas, the CLI and the trainer alike.

A `StrEnum` member *is* its string (`EventType.click == "click"`), so rows, JSON bodies and
Celery arguments carry plain strings while code names the members; FastAPI documents each set
as an OpenAPI enum and typer offers it as a choice.
"""

from __future__ import annotations

from enum import StrEnum

# The adapter name under which the bare base model is served and loaded (vLLM's served model
# name, the local backend's "no adapter", and the rewrite store's key for "no adapter").
BASE_ADAPTER = "base"


def model_name(adapter: str | None) -> str:
    """The served model name of `adapter` (None: the base model)."""
    return adapter or BASE_ADAPTER


class RetrievalMode(StrEnum):
    """Which arms a search uses."""

    dense = "dense"
    lexical = "lexical"
    hybrid = "hybrid"  # both, fused (service.retrieval.fusion)


class PromptVersion(StrEnum):
    """The versions of the rewrite prompt (service/policy/prompt.py holds their text); every
    stored rewrite and trained adapter records one, so they never mix."""

    expand = "expand-v2"  # free additions to the query, or NONE
    grounded = "grounded-v1"  # additions copied from the raw query's top titles, or NONE
    replace = "rewrite-v1"  # the policy's line replaces the query (the paper's setting)


class ExpansionEntry(StrEnum):
    """How a policy's additions enter retrieval (measured: bench/grounding.py)."""

    concat = "concat"  # both arms search `query + additions`
    lexical = "lexical"  # the dense arm keeps the raw query; BM25 searches with the additions
    fused = "fused"  # the raw query's ranking and the expanded query's, fused by reciprocal rank


class GradeSet(StrEnum):
    """Which relevance grades score a ranking (service.grades says how sources combine)."""

    completed = "completed"  # human grades, with assessed grades filling the judged pool
    human = "human"  # human (and shopper-derived) grades only: the pool-biased yardstick


class FusionMethod(StrEnum):
    rrf = "rrf"  # reciprocal rank fusion
    score = "score"  # weighted sum of min-max normalised scores


class EventType(StrEnum):
    """A shopper's interaction with one result of one search."""

    impression = "impression"
    click = "click"
    add_to_cart = "add_to_cart"
    purchase = "purchase"


class RewriteSource(StrEnum):
    """Where a search's text came from."""

    policy = "policy"  # the policy answered within the request
    cache = "cache"  # a stored rewrite of this (query, adapter, prompt version)
    fallback = "fallback"  # the policy was wanted but missed, failed or was down: raw query
    none = "none"  # no policy is configured or active: raw query


class MissPolicy(StrEnum):
    """Who rewrites a query that has no stored rewrite (search serves it raw meanwhile)."""

    background = "background"  # the API process asks the policy at once
    deferred = "deferred"  # the serving worker's next refresh (service.rewriting.warmup)


class RewriteOrigin(StrEnum):
    """Why a stored rewrite was generated."""

    warmup = "warmup"  # ahead of traffic, before a promotion flips or at start-up
    miss = "miss"  # in the background after a shopper's query missed the store


class Algorithm(StrEnum):
    """How an update trains the policy."""

    ospo = "ospo"  # GRPO with Shapley/Owen-shaped token advantages
    grpo = "grpo"  # GRPO: the sequence advantage on every token


class IndexType(StrEnum):
    """The FAISS index kind of a new index version."""

    auto = "auto"  # HNSW above OSPO_HNSW_THRESHOLD products, exact (flat) below
    flat = "flat"
    hnsw = "hnsw"


class RebuildStatus(StrEnum):
    """An API process's latest index rebuild."""

    idle = "idle"
    building = "building"
    done = "done"
    failed = "failed"


class AdapterStatus(StrEnum):
    candidate = "candidate"  # registered, never served
    active = "active"  # the one being served (at most one)
    retired = "retired"  # served before; a rollback target
    rejected = "rejected"  # failed the gate or its canary; never promoted


class RunStatus(StrEnum):
    queued = "queued"
    running = "running"
    comparing = "comparing"  # passed the offline gate; its interleaved comparison decides
    promoted = "promoted"  # passed the gate and serves
    rejected = "rejected"  # trained, but the gate kept the baseline
    failed = "failed"

    @classmethod
    def live(cls) -> tuple[RunStatus, ...]:
        """Statuses of a run that still holds the one-run-at-a-time slot."""
        return (cls.queued, cls.running, cls.comparing)

    @classmethod
    def finished(cls) -> tuple[RunStatus, ...]:
        return (cls.promoted, cls.rejected, cls.failed)


class RuleKind(StrEnum):
    """A merchandising rule (stored in `rules`, edited through /admin/rules)."""

    synonym = "synonym"  # interchangeable terms: each adds the others to the lexical arm's query
    pin = "pin"  # these products first, in this order, for one normalised query
    hide = "hide"  # these products never shown for one normalised query


class ComparisonStatus(StrEnum):
    """An interleaved comparison of a candidate adapter with what serves."""

    running = "running"
    won = "won"  # the preference's interval excludes zero in the candidate's favour
    lost = "lost"  # ... against it
    expired = "expired"  # the traffic or time budget ran out first
    aborted = "aborted"  # stopped by hand, or what served changed underneath it

    @classmethod
    def finished(cls) -> tuple[ComparisonStatus, ...]:
        return (cls.won, cls.lost, cls.expired, cls.aborted)
