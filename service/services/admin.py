"""Admin use cases: adapters, training runs, catalog upserts, index rebuilds, explanations."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout

from service.db.engine import session_scope
from service.domain import Algorithm, IndexType, RebuildStatus, RunStatus
from service.errors import Conflict, NotFound, ServiceError, Unavailable, WorkerTimeout
from service.queue import DEFAULT_QUEUE, EXPLAIN_TASK, TRAIN_TASK, celery_client
from service.records import ProductRecord
from service.repositories.adapters import list_adapters
from service.repositories.products import upsert_products
from service.repositories.runs import (
    create_run,
    expire_stale_runs,
    get_run,
    list_runs,
    live_run,
)
from service.schemas.admin import (
    AdapterOut,
    CatalogOut,
    ExplainOut,
    IndexOut,
    ManifestOut,
    ProductIn,
    RebuildOut,
    RunOut,
)
from service.settings import Settings
from service.state import RetrieverHolder
from service.workers import WorkerPresence

log = logging.getLogger(__name__)


def get_adapters(url: str) -> list[AdapterOut]:
    with session_scope(url) as s:
        return [AdapterOut.model_validate(a) for a in list_adapters(s)]


def get_runs(url: str, limit: int) -> list[RunOut]:
    with session_scope(url) as s:
        expire_stale_runs(s)  # a run whose worker died reads as failed, not running forever
    with session_scope(url) as s:
        return [RunOut.model_validate(r) for r in list_runs(s, limit)]


def get_one_run(url: str, run_id: str) -> RunOut:
    with session_scope(url) as s:
        expire_stale_runs(s)
    with session_scope(url) as s:
        run = get_run(s, run_id)
        if run is None:
            raise NotFound(f"no training run {run_id!r}")
        return RunOut.model_validate(run)


def enqueue_training(settings: Settings, algorithm: Algorithm, overrides: dict[str, Any]) -> str:
    """Record a queued run and hand it to a worker by task name. One live run at a time."""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        expire_stale_runs(s)
    with session_scope(url) as s:
        live = live_run(s)
        if live is not None:
            raise Conflict(f"training run {live.id} is already {live.status}")
        run = create_run(s, algorithm, {"overrides": overrides, "trigger": "admin"})
        run_id = run.id
    try:
        celery_client(settings).send_task(TRAIN_TASK, args=[run_id])
    except Exception as e:  # noqa: BLE001 - the broker is down: the run must not linger queued
        from service.repositories.runs import finish_run

        with session_scope(url) as s:
            finish_run(s, run_id, RunStatus.failed, error=f"could not enqueue: {e}")
        raise Unavailable(f"the task broker is unavailable: {e}") from e
    return run_id


def explain(settings: Settings, workers: WorkerPresence, query: str) -> ExplainOut:
    """The active policy's rewrite of `query` with per-segment attributions, computed by a
    worker (attribution lives in the trainer). The task raises `NoLabels` (a `ServiceError`)
    for an unjudged query; Celery brings the type back, so it keeps its 404. No live worker on
    its queue: 503 with Retry-After at once. No answer within `worker_timeout_s` (the worker is
    busy, say with a training run): 504, and the task expires instead of running for nobody."""
    workers.require(DEFAULT_QUEUE, "explain the rewrite")
    timeout_s = settings.worker_timeout_s
    try:
        result = celery_client(settings).send_task(EXPLAIN_TASK, args=[query], expires=timeout_s)
        return ExplainOut.model_validate(result.get(timeout=timeout_s))
    except ServiceError:
        raise
    except CeleryTimeout as e:
        raise WorkerTimeout(f"no worker answered within {timeout_s:g} s") from e
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"explain failed: {type(e).__name__}: {e}") from e


def upsert_catalog(url: str, products: list[ProductIn]) -> CatalogOut:
    """Upsert products by id; they are searchable after the next index rebuild."""
    records = [
        ProductRecord(
            id=p.id,
            title=p.title,
            brand=p.brand,
            description=p.description,
            attributes=p.attributes,
            source="api",
        )
        for p in products
    ]
    with session_scope(url) as s:
        return CatalogOut(upserted=upsert_products(s, records))


@dataclass
class IndexRebuilds:
    """One background index rebuild at a time; the new version is swapped in atomically."""

    settings: Settings
    retrievers: RetrieverHolder
    state: RebuildOut = field(default_factory=lambda: RebuildOut(status=RebuildStatus.idle))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kind: IndexType | None) -> RebuildOut:
        if not self._lock.acquire(blocking=False):
            raise Conflict("an index rebuild is already running")
        kind = kind or self.settings.index_type
        self.state = RebuildOut(status=RebuildStatus.building, kind=kind, started_at=time.time())
        threading.Thread(target=self._run, args=(kind,), daemon=True).start()
        return self.state

    def status(self) -> IndexOut:
        current = self.retrievers.get()
        return IndexOut(
            serving=ManifestOut.model_validate(current.manifest) if current else None,
            rebuild=self.state,
        )

    def _run(self, kind: IndexType) -> None:
        from service.retrieval.build import build_index_from_db

        s = self.settings
        try:
            manifest = build_index_from_db(
                s.resolved_database_url,
                s.index_dir,
                self.retrievers.embedder(),
                kind,
                s.hnsw_threshold,
                s.hnsw_m,
                activate=True,
            )
            self.retrievers.refresh()
            self.state = self.state.model_copy(
                update={
                    "status": RebuildStatus.done,
                    "version": manifest.version,
                    "count": manifest.count,
                    "finished_at": time.time(),
                }
            )
        except Exception as e:  # noqa: BLE001 - the old version keeps serving
            log.exception("index rebuild failed")
            self.state = self.state.model_copy(
                update={
                    "status": RebuildStatus.failed,
                    "error": str(e),
                    "finished_at": time.time(),
                }
            )
        finally:
            self._lock.release()
