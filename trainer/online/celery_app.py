"""The Celery application of the workers: `ospo worker` and `ospo beat` run it.

Broker and limits come from `service.queue.celery_config` (Redis in production and in the tests,
a SQLite-backed broker on the embedded default). Tasks are acknowledged late, so a worker that
dies mid-task has it redelivered; the database lease on the training run, not the broker, decides
whether a redelivered task may train.
"""

from __future__ import annotations

import os

from celery import Celery

from service.queue import DECIDE_TASK, SCHEDULED_TASK, WARMUP_TASK, celery_config
from service.settings import get_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("ospo", include=["trainer.online.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.beat_schedule = {
        "maybe-train": {"task": SCHEDULED_TASK, "schedule": float(settings.train_every_s)},
        "refresh-rewrites": {"task": WARMUP_TASK, "schedule": float(settings.rewrite_refresh_s)},
        "decide-comparisons": {
            "task": DECIDE_TASK,
            "schedule": float(settings.interleave_check_s),
        },
    }
    app.conf.beat_schedule_filename = str(settings.data_dir / "celerybeat-schedule")
    return app


app = make_celery()
