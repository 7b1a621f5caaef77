"""Celery configuration shared by the API (which only enqueues tasks by name) and the workers.

Production and the tests on this machine use Redis; the embedded default needs no server:
kombu's SQLAlchemy transport on a SQLite file under `OSPO_DATA_DIR`.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from service.settings import Settings

TRAIN_TASK = "ospo.train_update"
EXPLAIN_TASK = "ospo.explain"
SCHEDULED_TASK = "ospo.maybe_train"
PROMOTE_TASK = "ospo.promote_adapter"
WARMUP_TASK = "ospo.warm_rewrites"
DECIDE_TASK = "ospo.decide_comparisons"
# Celery's default queue (`task_default_queue`): training and explanations.
DEFAULT_QUEUE = "celery"
# Promotions and warm-ups wait on the policy server, not the CPU: their own queue and worker
# (`ospo worker --queues serving`), so they never wait behind an hour of training.
SERVING_QUEUE = "serving"


def broker_url(settings: Settings) -> str:
    if settings.broker_url:
        return settings.broker_url
    if settings.redis_url:
        return settings.redis_url
    return f"sqla+sqlite:///{(settings.data_dir / 'broker.db').resolve()}"


def result_backend(settings: Settings) -> str:
    url = broker_url(settings)
    if url.startswith(("redis://", "rediss://")):
        return url
    return f"db+sqlite:///{(settings.data_dir / 'celery-results.db').resolve()}"


def celery_config(settings: Settings) -> dict[str, Any]:
    # The visibility timeout (redelivery of unacknowledged tasks) must exceed the task's hard
    # time limit, or a long training would be handed to a second worker while still running.
    visibility = int(settings.train_time_limit_s * 2 + 600)
    url = broker_url(settings)
    # Only Redis/SQS-style brokers redeliver by visibility timeout; kombu's SQLAlchemy
    # transport hands transport options to create_engine, which rejects unknown keys.
    transport_options = (
        {"visibility_timeout": visibility} if url.startswith(("redis://", "rediss://")) else {}
    )
    return {
        "broker_url": url,
        "result_backend": result_backend(settings),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": settings.train_time_limit_s,
        "task_soft_time_limit": max(60, settings.train_time_limit_s - 60),
        "broker_transport_options": transport_options,
        "task_routes": {
            PROMOTE_TASK: {"queue": SERVING_QUEUE},
            WARMUP_TASK: {"queue": SERVING_QUEUE},
        },
        "result_expires": 86_400,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
    }


_clients: dict[str, Celery] = {}


def celery_client(settings: Settings) -> Celery:
    """A Celery app used only to send tasks by name (the API never imports the trainer)."""
    key = broker_url(settings)
    if key not in _clients:
        app = Celery("ospo-client")
        app.conf.update(celery_config(settings))
        _clients[key] = app
    return _clients[key]
