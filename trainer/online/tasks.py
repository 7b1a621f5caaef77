"""Celery tasks, registered under the names the API sends (`service.queue`)."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.exc import OperationalError

from service.db.engine import session_scope
from service.queue import (
    DECIDE_TASK,
    EXPLAIN_TASK,
    PROMOTE_TASK,
    SCHEDULED_TASK,
    SERVING_QUEUE,
    TRAIN_TASK,
    WARMUP_TASK,
)
from service.repositories.runs import create_run, expire_stale_runs, live_run
from service.settings import get_settings
from service.workers import Heartbeat
from trainer.online.celery_app import app

log = logging.getLogger(__name__)


@app.task(
    name=TRAIN_TASK,
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError, ConnectionError),
    retry_backoff=5,
    retry_backoff_max=300,
    max_retries=5,
)
def train_update(self: Task, run_id: str) -> dict[str, Any]:
    """Train a candidate from the logs, gate it, promote it or not. See trainer.online.update."""
    from trainer.online.update import run_update

    owner = f"{self.request.hostname}:{self.request.id}"
    return run_update(get_settings(), run_id, owner)


@app.task(name=SCHEDULED_TASK)
def maybe_train() -> dict[str, Any]:
    """Beat: refresh interaction labels; start an update when enough new labelled queries came."""
    from trainer.online.update import labelled_query_count, last_labelled_count, refresh_labels

    settings = get_settings()
    url = settings.resolved_database_url
    refresh_labels(settings)
    with session_scope(url) as s:
        expired = expire_stale_runs(s)
        if live_run(s) is not None:
            return {"started": False, "reason": "a run is live", "expired": expired}
        now = labelled_query_count(s)
        new = now - last_labelled_count(s)
        if new < settings.train_min_new_queries:
            return {"started": False, "reason": f"{new} new labelled queries", "expired": expired}
        run = create_run(s, "ospo", {"trigger": "schedule", "new_labelled_queries": new})
        run_id = run.id
    train_update.delay(run_id)
    return {"started": True, "run_id": run_id}


@app.task(name=EXPLAIN_TASK)
def explain(query: str) -> dict[str, Any]:
    from trainer.online.explain import explain_query

    return explain_query(get_settings(), query)


@app.task(name=PROMOTE_TASK)
def promote_adapter(name: str) -> dict[str, Any]:
    """Load, canary and warm `name`, then make it the active adapter (see
    service.services.promotion)."""
    from service.services.promotion import promote

    return promote(get_settings(), name)


@app.task(name=WARMUP_TASK)
def warm_rewrites() -> dict[str, Any]:
    """Store the active adapter's missing rewrites: head queries and the queries missed since
    the previous warm-up (start-up warm-up; beat's refresh every OSPO_REWRITE_REFRESH_S)."""
    from service.services.promotion import warm_active

    return warm_active(get_settings())


@app.task(name=DECIDE_TASK)
def decide_comparisons() -> list[dict[str, Any]]:
    """Beat: decide the running interleaved comparison from the search log (promote the
    candidate, reject it, or leave it running). See service.services.comparisons."""
    from service.services.comparisons import decide_running

    return decide_running(get_settings())


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def _beat_while_running(sender: Any = None, **_: Any) -> None:
    """Tell the API which queues a live worker consumes (service/workers.py): a request that
    would wait on a queue nobody consumes answers 503 at once."""
    global _heartbeat
    queues = [q.name for q in sender.app.amqp.queues.consume_from.values()] if sender else []
    name = f"{getattr(sender, 'hostname', None) or socket.gethostname()}:{os.getpid()}"
    _heartbeat = Heartbeat(get_settings().resolved_database_url, name, queues)
    _heartbeat.start()


@worker_shutdown.connect
def _stop_beating(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()


@worker_ready.connect
def _warm_on_start(sender: Any = None, **_: Any) -> None:
    """A worker serving the promotion queue warms the active adapter when it starts."""
    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if SERVING_QUEUE in queues and get_settings().policy_backend == "vllm":
        warm_rewrites.delay()
