"""Request and response bodies of the admin API (`/admin/*`, bearer `OSPO_ADMIN_API_KEY`).

Every admin endpoint answers one of these models, so OpenAPI documents what the console, the
CLI and scripts receive. Rows of the registry are read with `from_attributes`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from service.domain import AdapterStatus, Algorithm, IndexType, RebuildStatus, RunStatus
from service.schemas.text import SafeText, text


class AdapterOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    status: AdapterStatus
    path: str
    checksum: str
    base_model: str
    parent: str | None
    metrics: dict[str, Any] = Field(
        description="`gate` (the offline comparison that admitted it), `canary`, `warmup`."
    )
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None


class RunOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    run_id: str = Field(validation_alias=AliasChoices("id", "run_id"))
    status: RunStatus
    algorithm: str
    config: dict[str, Any]
    metrics: dict[str, Any] = Field(
        description="Training curves, the gate's decision with intervals, timings."
    )
    error: str | None
    adapter: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Algorithm = Algorithm.ospo
    steps: int | None = Field(None, ge=1, le=100_000, description="Policy-gradient steps.")
    group_size: int | None = Field(None, ge=2, le=64, description="Rollouts per query.")
    seed: int | None = None
    warm_start_samples: int | None = Field(
        None, ge=0, le=64, description="Rejection-sampling warm start: samples per query (0: off)."
    )


class TrainQueued(BaseModel):
    run_id: str
    status: RunStatus = RunStatus.queued


class PromotionOut(BaseModel):
    status: Literal["active", "warming"] = Field(
        description="active: flipped (200); warming: a worker warms the rewrite store and then "
        "flips (202; progress under `GET /admin/rewrites` and the adapter's `metrics.warmup`)."
    )
    active: str | None = None
    previous: str | None = None
    seconds: float | None = None
    canary: dict[str, Any] = Field(default_factory=dict)
    warmup: dict[str, Any] | None = None


class RewriteStoreOut(BaseModel):
    active_adapter: str | None
    prompt_version: str
    budget_ms: float = Field(description="How long a miss waits for the policy (0: not at all).")
    miss_policy: str = Field(description="Who rewrites misses: `background` or `deferred`.")
    stored: int = Field(description="Rewrites of the active policy in the database tier.")
    hits: int = Field(description="Searches of this API process answered from the store.")
    misses: int
    hit_ratio: float | None
    pending: int = Field(description="Background generations in flight in this process.")
    local_entries: int
    warmup: dict[str, Any] | None = Field(
        description="The latest warm-up (any adapter): status, total, done, generated, times."
    )


CatalogIdText = text(64, required=True, strip=True)
TitleText = text(2000, required=True, strip=True)


class ProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: CatalogIdText
    title: TitleText
    brand: SafeText | None = None
    description: SafeText | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)


MAX_CATALOG_BATCH = 10_000
ProductBatch = Annotated[
    list[ProductIn], Field(min_length=1, max_length=MAX_CATALOG_BATCH, description="1 to 10,000.")
]


class CatalogOut(BaseModel):
    upserted: int


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: IndexType | None = Field(
        None, description="FAISS index kind; default: the deployment's OSPO_INDEX_TYPE."
    )


class RebuildOut(BaseModel):
    status: RebuildStatus
    kind: str | None = None
    version: str | None = None
    count: int | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class ManifestOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: str
    embedder: str
    dim: int
    count: int
    kind: str
    checksum: str
    created_at: float
    hnsw_m: int | None = None
    lexical: bool


class IndexOut(BaseModel):
    serving: ManifestOut | None = Field(description="The index version this process serves.")
    rebuild: RebuildOut = Field(description="The latest rebuild started by this process.")


class SegmentOut(BaseModel):
    text: str
    start: int
    end: int
    attribution: float = Field(description="The phrase's Shapley/Owen value of ΔNDCG@10.")


class ExplainOut(BaseModel):
    query: str
    adapter: str | None
    rewrite: str = Field(description="The text retrieval searches with.")
    expansion: str | None = Field(description="The policy's additions to the query.")
    parsed: bool = Field(description="The policy's answer followed the prompt's format.")
    reward_ndcg_at_10: float = Field(
        alias="reward_ndcg@10", description="NDCG@10 of the rewrite against the query's labels."
    )
    raw_query_ndcg_at_10: float = Field(
        alias="raw_query_ndcg@10", description="NDCG@10 of the query as typed."
    )
    estimator: str
    coalitions_evaluated: int
    segments: list[SegmentOut]
    efficiency_gap: float = Field(
        description="R(query ⊕ additions) − R(query) − Σφ: 0 for exact estimators."
    )
