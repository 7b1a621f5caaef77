"""`ospo replay FILE`: ingest historical logs; optionally train from them or score an adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from service.catalog.formats import FormatError
from service.settings import get_settings

console = Console(stderr=True)


def replay_command(
    path: Path,
    format: Annotated[
        str, typer.Option("--format", "-f", help="log (our JSONL) or chorus|esci|wands labels")
    ] = "log",
    train: Annotated[bool, typer.Option("--train", help="run an update from the logs")] = False,
    evaluate: Annotated[
        str | None, typer.Option("--evaluate", help="score ADAPTER (dir, name, base or raw)")
    ] = None,
    min_support: Annotated[int | None, typer.Option(help="override OSPO_LABEL_MIN_SUPPORT")] = None,
) -> None:
    """Replay logged searches and events (idempotent), refresh interaction labels."""
    from trainer.online.replay import labels_as_log, read_log, replay

    settings = get_settings()
    if min_support is not None:
        settings = settings.model_copy(update={"label_min_support": min_support})
    url = settings.resolved_database_url
    if not path.exists():
        console.print(f"[red]error:[/red] {path}: no such file")
        raise typer.Exit(2)
    if format not in ("log", "chorus", "esci", "wands"):
        console.print(f"[red]error:[/red] unknown format {format!r}")
        raise typer.Exit(2)
    try:
        source = read_log(path) if format == "log" else labels_as_log(format, path)
        summary = replay(url, source)
    except FormatError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    from trainer.online.update import refresh_labels

    labelled = refresh_labels(settings)
    report: dict = {**summary.as_dict(), "interaction_labels": labelled}
    if evaluate:
        report["evaluation"] = _evaluate(settings, evaluate, summary.queries)
    if train:
        report["training"] = _train(settings)
    print(json.dumps(report, indent=2, default=str))


def _evaluate(settings, policy: str, queries: set[str]) -> dict:  # type: ignore[no-untyped-def]
    """NDCG@10 (with a bootstrap interval) of a policy on the replayed queries, against the
    engagement mined from the logs (interaction labels)."""
    from service.db.engine import session_scope
    from service.repositories.adapters import get_adapter
    from service.repositories.labels import targets_by_query
    from trainer.training.data import examples_from_targets, restrict_to_index
    from trainer.training.evaluate import evaluate_policies
    from trainer.training.resources import load_retriever, policy_model_path

    url = settings.resolved_database_url
    with session_scope(url) as s:
        targets = {q: t for q, t in targets_by_query(s, ["interactions"]).items() if q in queries}
        row = get_adapter(s, policy)
        resolved = row.path if row is not None else policy
    retriever = load_retriever(settings)
    examples = restrict_to_index(examples_from_targets(targets), retriever.row_of)
    if not examples:
        console.print("[red]error:[/red] no replayed query has engagement labels to score against")
        raise typer.Exit(2)
    need_model = resolved != "raw"
    model = policy_model_path(settings) if need_model else None
    return evaluate_policies(
        ["raw", resolved] if resolved != "raw" else ["raw"],
        examples,
        retriever,
        model,
        pooled=False,
    )


def _train(settings) -> dict:  # type: ignore[no-untyped-def]
    """Run one update (the Celery task's code) in this process."""
    from service.db.engine import session_scope
    from service.repositories.runs import create_run
    from trainer.online.update import run_update

    with session_scope(settings.resolved_database_url) as s:
        run_id = create_run(s, "ospo", {"trigger": "replay"}).id
    outcome = run_update(settings, run_id, "replay-cli")
    return {"run_id": run_id, **{k: v for k, v in outcome.items() if k != "steps"}}


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)
