"""`ospo worker` and `ospo beat`: the trainer's long-running processes."""

from __future__ import annotations

import typer

from service.settings import get_settings


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        concurrency: int = typer.Option(1, help="Trainings are CPU-bound: one at a time."),
        queues: str = typer.Option(
            "celery",
            help="Queues to consume: `celery` (training, explanations) or `serving` "
            "(promotion warm-ups, which wait on the policy server), or both, comma-separated.",
        ),
        loglevel: str = "INFO",
    ) -> None:
        """Run a Celery worker (training updates, explanations; or promotions)."""
        from trainer.online.celery_app import app as celery

        get_settings().data_dir.mkdir(parents=True, exist_ok=True)
        celery.worker_main(
            [
                "worker",
                f"--concurrency={concurrency}",
                f"--loglevel={loglevel}",
                f"--queues={queues}",
                "--pool=prefork",
                "--without-gossip",
                "--without-mingle",
            ]
        )

    @app.command("beat")
    def beat(loglevel: str = "INFO") -> None:
        """Run Celery beat: checks every OSPO_TRAIN_EVERY_S whether an update is due."""
        from trainer.online.celery_app import app as celery

        get_settings().data_dir.mkdir(parents=True, exist_ok=True)
        celery.start(["beat", f"--loglevel={loglevel}"])
