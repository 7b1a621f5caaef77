"""Admin use cases: adapters, training runs, catalog upserts, index rebuilds, explanations."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from service.catalog.records import ProductRecord
from service.db.engine import session_scope
from service.db.models import Adapter, TrainingRun
from service.errors import Conflict, NotFound, Unavailable
from service.queue import EXPLAIN_TASK, PROMOTE_TASK, TRAIN_TASK, celery_client
from service.repositories.adapters import list_adapters
from service.repositories.products import upsert_products
from service.repositories.rewrites import count_rewrites
from service.repositories.runs import (
    create_run,
    expire_stale_runs,
    get_run,
    list_runs,
    live_run,
)
from service.settings import Settings
from service.state import RetrieverHolder

log = logging.getLogger(__name__)


def adapter_dict(a: Adapter) -> dict[str, Any]:
    return {
        "name": a.name,
        "status": a.status,
        "path": a.path,
        "checksum": a.checksum,
        "base_model": a.base_model,
        "parent": a.parent,
        "metrics": a.metrics,
        "created_at": a.created_at,
        "activated_at": a.activated_at,
        "retired_at": a.retired_at,
    }


def run_dict(r: TrainingRun) -> dict[str, Any]:
    return {
        "run_id": r.id,
        "status": r.status,
        "algorithm": r.algorithm,
        "config": r.config,
        "metrics": r.metrics,
        "error": r.error,
        "adapter": r.adapter,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
    }


def get_adapters(url: str) -> list[dict[str, Any]]:
    with session_scope(url) as s:
        return [adapter_dict(a) for a in list_adapters(s)]


def get_runs(url: str, limit: int) -> list[dict[str, Any]]:
    with session_scope(url) as s:
        expire_stale_runs(s)  # a run whose worker died reads as failed, not running forever
    with session_scope(url) as s:
        return [run_dict(r) for r in list_runs(s, limit)]


def get_one_run(url: str, run_id: str) -> dict[str, Any]:
    with session_scope(url) as s:
        expire_stale_runs(s)
    with session_scope(url) as s:
        run = get_run(s, run_id)
        if run is None:
            raise NotFound(f"no training run {run_id!r}")
        return run_dict(run)


def enqueue_training(settings: Settings, algorithm: str, overrides: dict[str, Any]) -> str:
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
            finish_run(s, run_id, "failed", error=f"could not enqueue: {e}")
        raise Unavailable(f"the task broker is unavailable: {e}") from e
    return run_id


def enqueue_promotion(settings: Settings, name: str) -> None:
    """Queue a promotion with warm-up for a worker of the serving queue (404/409 first)."""
    from service.services.promotion import check_promotable, mark_queued

    check_promotable(settings, name)
    mark_queued(settings, name)
    try:
        celery_client(settings).send_task(PROMOTE_TASK, args=[name])
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"the task broker is unavailable: {e}") from e


def count_stored_rewrites(url: str, adapter: str | None, prompt_version: str) -> int:
    with session_scope(url) as s:
        return count_rewrites(s, adapter, prompt_version)


def explain(settings: Settings, query: str, timeout_s: float) -> dict[str, Any]:
    """The active policy's rewrite of `query` with per-segment attributions, computed by a
    worker (attribution lives in the trainer)."""
    try:
        result = celery_client(settings).send_task(EXPLAIN_TASK, args=[query])
        return result.get(timeout=timeout_s)
    except TimeoutError as e:
        raise Unavailable(f"no worker answered within {timeout_s:.0f}s") from e
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "no labels" in msg:
            raise NotFound(msg) from e
        raise Unavailable(f"explain failed: {msg}") from e


def upsert_catalog(url: str, products: list[ProductRecord]) -> int:
    with session_scope(url) as s:
        return upsert_products(s, products)


@dataclass
class IndexRebuilds:
    """One background index rebuild at a time; the new version is swapped in atomically."""

    settings: Settings
    retrievers: RetrieverHolder
    state: dict[str, Any] = field(default_factory=lambda: {"status": "idle"})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, kind: str) -> dict[str, Any]:
        if not self._lock.acquire(blocking=False):
            raise Conflict("an index rebuild is already running")
        self.state = {"status": "building", "kind": kind, "started_at": time.time()}
        threading.Thread(target=self._run, args=(kind,), daemon=True).start()
        return dict(self.state)

    def _run(self, kind: str) -> None:
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
            self.state = {
                "status": "done",
                "version": manifest.version,
                "count": manifest.count,
                "finished_at": time.time(),
            }
        except Exception as e:  # noqa: BLE001
            log.exception("index rebuild failed")
            self.state = {"status": "failed", "error": str(e), "finished_at": time.time()}
        finally:
            self._lock.release()
