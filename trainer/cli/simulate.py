"""`ospo simulate` (simulated shoppers against a running API) and `ospo propensity` (the
examination propensities and interaction labels the logs give), added to the service's typer
app via the `ospo.cli` entry point.

Exit codes: 0 success; 1 the API answered no search; 2 bad input; 3 the API is not reachable.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.domain import GradeSet, RetrievalMode
from trainer.cli.options import BAD_INPUT, GradesOpt

console = Console(stderr=True)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_LABELS = PROJECT_ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
UNREACHABLE = 3


class SplitChoice(StrEnum):
    all = "all"
    train = "train"
    val = "val"


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _floats(value: str | None) -> tuple[float, ...] | None:
    if not value:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError as e:
        raise _fail(f"--propensities must be comma-separated numbers, got {value!r}") from e


def simulate_command(
    url: Annotated[str, typer.Option(help="Base URL of the API.")] = "http://127.0.0.1:8000",
    labels: Annotated[
        Path, typer.Option(help="Judged queries (hidden from the API): a label file.")
    ] = DEMO_LABELS,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="chorus|esci|wands|jsonl (default: sniffed)."),
    ] = None,
    split: Annotated[
        SplitChoice,
        typer.Option(
            help="Queries of trainer/training/data.py's split to shop with: all, train or val."
        ),
    ] = SplitChoice.all,
    val_fraction: Annotated[
        float, typer.Option(help="Validation share of the split (as OSPO_TRAIN_VAL_FRACTION).")
    ] = 0.3,
    split_seed: Annotated[
        int, typer.Option(help="Seed of the split (0: the online update's).")
    ] = 0,
    grades: GradesOpt = GradeSet.completed,
    sessions: Annotated[
        int | None, typer.Option(min=0, help="Stop after this many sessions.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop starting sessions after this many seconds.")
    ] = None,
    rate: Annotated[float, typer.Option(min=0, help="Searches per second (0: no limit).")] = 5.0,
    seed: Annotated[int, typer.Option(help="Seed of the shoppers' random draws.")] = 0,
    k: Annotated[int, typer.Option(min=1, max=100, help="Results asked per search.")] = 10,
    mode: Annotated[
        RetrievalMode | None, typer.Option(help="Retrieval mode (default: the API's).")
    ] = None,
    eta: Annotated[float, typer.Option(min=0, help="Examination p(r) = (1/r)^eta.")] = 1.0,
    propensities: Annotated[
        str | None,
        typer.Option(help="Explicit p(1),p(2),... instead of eta (ranks past it unseen)."),
    ] = None,
    epsilon: Annotated[
        float, typer.Option(min=0, max=1, help="Click probability of a seen irrelevant result.")
    ] = 0.05,
    cart: Annotated[
        float, typer.Option(min=0, max=1, help="P(add to cart | click) = cart x gain.")
    ] = 0.5,
    purchase: Annotated[
        float, typer.Option(min=0, max=1, help="P(purchase | cart) = purchase x gain.")
    ] = 0.5,
    unjudged_gain: Annotated[
        float, typer.Option(min=0, max=1, help="Hidden gain of results the labels do not judge.")
    ] = 0.0,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1000, help="Events per POST /v1/events.")
    ] = 100,
    flush_s: Annotated[
        float, typer.Option(min=0, help="Send buffered events at least this often (seconds).")
    ] = 2.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="HTTP timeout (seconds).")] = 30.0,
    out: Annotated[Path | None, typer.Option(help="Also write the summary here (JSON).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Simulated shoppers: search judged queries, click, cart and buy by a position-based click
    model driven by the hidden judgments (trainer/simulation/shoppers.py), and post the events."""
    import httpx
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from service.catalog.formats import FormatError
    from trainer.simulation.shoppers import ClickModel, Simulator, load_query_set

    try:
        model = ClickModel(
            eta=eta, propensities=_floats(propensities), epsilon=epsilon, cart=cart,
            purchase=purchase, unjudged_gain=unjudged_gain,
        )  # fmt: skip
        queries = load_query_set(labels, fmt, split.value, val_fraction, split_seed, grades)
    except (FormatError, ValueError, OSError) as e:
        raise _fail(str(e)) from e
    with httpx.Client(base_url=url, timeout=timeout) as client:
        try:
            client.get("/healthz").raise_for_status()
        except httpx.HTTPError as e:
            raise _fail(f"the API at {url} does not answer: {e}", UNREACHABLE) from e
        sim = Simulator(
            client, queries, model, k=k, mode=mode.value if mode else None,
            rate=rate or None, seed=seed, batch_size=batch_size, flush_s=flush_s,
        )  # fmt: skip
        console.print(
            f"{len(queries)} judged queries ({split.value}) from {labels}; "
            f"p(r) = {', '.join(f'{p:.2f}' for p in sim.summary.propensity_curve[:5])} …"
        )
        total = sessions if sessions is not None else duration
        with Progress(
            TextColumn("[bold]simulate"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), TimeElapsedColumn(),
            console=console, disable=quiet, transient=False,
        ) as bar:  # fmt: skip
            task = bar.add_task("", total=total)
            start = bar.get_time()

            def tick(s: Any) -> None:
                done = s.sessions if sessions is not None else bar.get_time() - start
                bar.update(
                    task, completed=done,
                    description=f"{s.clicks} clicks, {s.purchases} purchases, {s.errors} errors",
                )  # fmt: skip

            summary = sim.run(sessions, duration, on_session=tick)
    report = summary.as_dict()
    _print_summary(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1))
        console.print(f"summary written to {out}")
    if summary.sessions and not summary.searches:
        raise typer.Exit(1)


def _print_summary(report: dict[str, Any]) -> None:
    table = Table(title=f"simulation ({report['stopped_by'] or 'done'}, {report['wall_s']:.0f} s)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    mcp = report["mean_click_position"]
    for name, value in (
        ("searches", report["searches"]),
        ("clicks", report["clicks"]),
        ("add to cart", report["carts"]),
        ("purchases", report["purchases"]),
        ("CTR (searches with a click)", f"{report['ctr']:.3f}"),
        ("mean click position", "-" if mcp is None else f"{mcp:.2f}"),
        ("events stored / sent", f"{report['events_stored']} / {report['events_sent']}"),
        ("retries", report["retries"]),
        ("errors", report["errors"]),
    ):
        table.add_row(name, str(value))
    Console().print(table)


def propensity_command(
    min_pair_support: Annotated[
        int, typer.Option(min=1, help="Explored searches a pair needs to be estimated.")
    ] = 100,
    clip: Annotated[float, typer.Option(min=0.001, max=1, help="Propensity floor.")] = 0.05,
    prior_eta: Annotated[float, typer.Option(min=0, help="Prior p0(r) = (1/r)^eta0.")] = 1.0,
    judgments: Annotated[
        Path | None,
        typer.Option(
            help="A label file: also report how plain and debiased interaction "
            "labels correlate with it (Spearman)."
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="Format of --judgments (default: sniffed).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Examination propensity per rank estimated from the exploring searches in the database
    (trainer/online/propensity.py), with its interval and support."""
    from service.catalog.formats import FormatError
    from service.db.engine import session_scope
    from service.settings import get_settings
    from trainer.online.interaction_labels import EventWeights, label_quality, mine
    from trainer.online.propensity import PropensityConfig

    try:
        config = PropensityConfig(min_pair_support=min_pair_support, clip=clip,
                                  prior_eta=prior_eta)  # fmt: skip
    except ValueError as e:
        raise _fail(str(e)) from e
    settings = get_settings()
    weights = EventWeights(
        settings.label_weight_click, settings.label_weight_add_to_cart,
        settings.label_weight_purchase,
    )  # fmt: skip
    with session_scope(settings.resolved_database_url) as s:
        debiased = mine(s, weights, settings.label_min_support, "debiased", config)
        plain = mine(s, weights, settings.label_min_support, "plain", config)
    assert debiased.propensity is not None
    report: dict[str, Any] = debiased.propensity.as_dict()
    table = Table(title=f"examination propensity (supported: {report['supported']})")
    for col in ("rank", "p(r)", "95% interval", "source"):
        table.add_column(col)
    for row in report["ranks"]:
        interval = "-" if row["lo"] is None else f"[{row['lo']:.3f}, {row['hi']:.3f}]"
        table.add_row(str(row["rank"]), f"{row['propensity']:.3f}", interval, row["source"])
    Console().print(table)
    if judgments is not None:
        from trainer.training.data import load_file_examples

        try:
            examples = load_file_examples(judgments, fmt)
        except (FormatError, OSError) as e:
            raise _fail(str(e)) from e
        hidden = {(ex.key, pid): g for ex in examples for pid, g in ex.targets.items()}
        report["label_quality"] = {
            "plain": label_quality(plain.labels, hidden),
            "debiased": label_quality(debiased.labels, hidden),
        }
        console.print(f"label quality vs {judgments}: {report['label_quality']}")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        console.print(f"report written to {json_out}")


def register(app: typer.Typer) -> None:
    """Entry point of the `ospo.cli` group: add `simulate` and `propensity`."""
    app.command("simulate")(simulate_command)
    app.command("propensity")(propensity_command)
