"""`ospo train` and `ospo eval`, added to the service's typer app via the `ospo.cli` entry point.

Exit codes: 0 success; 2 bad input (unknown option value, unreadable or empty data, nothing to
evaluate); 3 a resource is missing (no index, no policy model, no catalogue texts).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from service.domain import ExpansionEntry, GradeSet, PromptVersion, RetrievalMode
from service.policy.prompt import DEFAULT_PROMPT
from service.retrieval.metrics import MIN_JUDGED
from trainer.cli.options import BAD_INPUT, GradesOpt, with_config_options
from trainer.training.config import TrainConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

console = Console(stderr=True)

MISSING_RESOURCE = 3

DataOpt = Annotated[
    str, typer.Option("--data", help="'db' (relevance labels in the database) or a label file.")
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--format", help="Label file format: chorus|esci|wands|jsonl (default: sniffed)."),
]
SourcesOpt = Annotated[
    str | None, typer.Option(help="With --data db: comma-separated label sources, e.g. chorus.")
]
ValFractionOpt = Annotated[float, typer.Option(help="Share of queries held out for validation.")]
SplitSeedOpt = Annotated[int, typer.Option(help="Seed of the train/validation query split.")]
ModelOpt = Annotated[
    Path | None, typer.Option(help="Base model folder (default: the prepared SmolLM2).")
]
IndexOpt = Annotated[
    Path | None, typer.Option(help="Index root with CURRENT (default: settings index_dir).")
]


def _fail(message: str, code: int = BAD_INPUT) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _split_csv(value: str | None) -> list[str] | None:
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    return items or None


def _load_data(
    data: str, fmt: str | None, sources: str | None, grades: GradeSet, retriever: Any
) -> list[Any]:
    """Examples restricted to products in the index; typer.Exit(2) when there are none."""
    from service.catalog.formats import FormatError
    from service.settings import get_settings
    from trainer.training.data import load_examples, restrict_to_index

    try:
        examples = load_examples(
            data,
            database_url=get_settings().resolved_database_url,
            fmt=fmt,
            sources=_split_csv(sources),
            grades=grades,
        )
    except (FormatError, ValueError, OSError) as e:
        raise _fail(str(e)) from e
    kept = restrict_to_index(examples, retriever.row_of)
    if not kept:
        raise _fail(
            f"no usable queries in {data!r}: {len(examples)} queries, none with a relevant "
            f"product in index {retriever.version}"
        )
    if len(kept) < len(examples):
        console.print(
            f"{len(examples) - len(kept)} queries without indexed relevant products dropped"
        )
    return kept


def _resources(model: Path | None, index_dir: Path | None, need_model: bool) -> tuple[Any, Any]:
    from service.settings import get_settings
    from trainer.training.resources import ResourceError, load_retriever, policy_model_path

    settings = get_settings()
    try:
        retriever = load_retriever(settings, index_dir)
        model_path = policy_model_path(settings, model) if need_model else None
    except ResourceError as e:
        raise _fail(str(e), MISSING_RESOURCE) from e
    return retriever, model_path


@with_config_options(TrainConfig)
def train_command(
    data: DataOpt = "db",
    fmt: FormatOpt = None,
    sources: SourcesOpt = None,
    grades: GradesOpt = GradeSet.completed,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: data_dir/runs/...).")
    ] = None,
    val_fraction: ValFractionOpt = 0.3,
    split_seed: SplitSeedOpt = 0,
    model: ModelOpt = None,
    index_dir: IndexOpt = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
    *,
    config: TrainConfig,
) -> None:
    """Train a LoRA adapter of the rewrite policy: rejection-sampling warm start, then OSPO or
    GRPO steps. Every training option below is a field of TrainConfig
    (trainer/training/config.py)."""
    from service.settings import get_settings
    from trainer.training.data import split_examples
    from trainer.training.evaluate import resolve_adapter
    from trainer.training.train import train

    algo = config.algo
    if config.warm_start:
        try:
            config = dataclasses.replace(
                config, warm_start=str(resolve_adapter(Path(config.warm_start)))
            )
        except FileNotFoundError as e:
            raise _fail(str(e)) from e
    if not 0.0 <= val_fraction < 1.0:
        raise _fail("--val-fraction must be in [0, 1)")
    retriever, model_path = _resources(model, index_dir, need_model=True)
    examples = _load_data(data, fmt, sources, grades, retriever)
    train_ex, val_ex = split_examples(examples, val_fraction, split_seed)
    if not train_ex:
        raise _fail("the split left no training queries; lower --val-fraction")
    run_dir = out or get_settings().data_dir / "runs" / f"{algo}-{time.strftime('%Y%m%dT%H%M%S')}"
    (Path(run_dir)).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "split.json").write_text(
        json.dumps({"data": data, "val_fraction": val_fraction, "split_seed": split_seed,
                    "train": [e.key for e in train_ex], "val": [e.key for e in val_ex]}, indent=1)
    )  # fmt: skip
    console.print(
        f"{algo.upper()}: {len(train_ex)} training / {len(val_ex)} validation queries, "
        f"index {retriever.version}, model {model_path}"
    )
    console.print(_plan(config, len(train_ex), model_path))
    result = train(
        config, retriever, train_ex, model_path, Path(run_dir), progress=not quiet,
        val_examples=val_ex,
    )  # fmt: skip
    last = next((m for m in reversed(result.metrics) if "reward_mean" in m), {})
    console.print(
        f"done in {result.seconds:.0f} s; last reward {last.get('reward_mean', float('nan')):.3f}; "
        f"adapter: {result.adapter_dir}"
    )


def _plan(config: TrainConfig, train_queries: int, model_path: Path) -> str:
    """The run's plan and ETA (trainer/training/plan.py), printed before anything heavy loads."""
    from trainer.training.plan import describe, train_plan
    from trainer.training.served_rollouts import rollout_server_url, serves_model

    running = config.rollouts == "vllm" and serves_model(rollout_server_url(config), model_path)
    return describe(train_plan(config, train_queries, server_running=running), config)


def eval_command(
    policy: Annotated[
        list[str], typer.Option("--policy", help="raw | base | ADAPTER_DIR (repeatable).")
    ] = ["raw"],  # noqa: B006 - typer needs a list default
    data: DataOpt = "db",
    fmt: FormatOpt = None,
    sources: SourcesOpt = None,
    grades: GradesOpt = GradeSet.completed,
    split: Annotated[str, typer.Option(help="all|train|val queries of the split.")] = "val",
    val_fraction: ValFractionOpt = 0.3,
    split_seed: SplitSeedOpt = 0,
    limit: Annotated[int | None, typer.Option(help="Evaluate the first N queries only.")] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Greedy completion length (default: as serving).")
    ] = DEFAULT_PROMPT.max_tokens,
    mode: Annotated[
        list[RetrievalMode] | None,
        typer.Option(
            "--mode", help="Retrieval modes to score (default: every mode the index has)."
        ),
    ] = None,
    pooled: Annotated[bool, typer.Option(help="Also score inside the judged pool.")] = False,
    prompt_version: Annotated[
        PromptVersion | None,
        typer.Option(
            help="Prompt the policies answer (default: the deployment's, OSPO_POLICY_PROMPT)."
        ),
    ] = None,
    entry: Annotated[
        ExpansionEntry | None,
        typer.Option(
            help="How additions enter retrieval (default: the deployment's, OSPO_EXPANSION_ENTRY)."
        ),
    ] = None,
    model: ModelOpt = None,
    index_dir: IndexOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
) -> None:
    """Score policies' greedy rewrites: NDCG@10 with judged@10, recall@10/50, MRR, 95% CIs."""
    from service.rewriting.grounding import serving_prompt
    from service.settings import get_settings
    from trainer.training.data import split_examples
    from trainer.training.evaluate import evaluate_policies, resolve_adapter

    if split not in ("all", "train", "val"):
        raise _fail("--split must be all, train or val")
    for p in policy:
        if p not in ("raw", "base"):
            try:
                resolve_adapter(Path(p))
            except FileNotFoundError as e:
                raise _fail(str(e)) from e
    need_model = any(p != "raw" for p in policy)
    retriever, model_path = _resources(model, index_dir, need_model)
    examples = _load_data(data, fmt, sources, grades, retriever)
    if split != "all":
        train_ex, val_ex = split_examples(examples, val_fraction, split_seed)
        examples = train_ex if split == "train" else val_ex
    examples = examples[:limit] if limit else examples
    if not examples:
        raise _fail(f"no queries in split {split!r}")

    if mode and retriever.lexical is None and any(m != RetrievalMode.dense for m in mode):
        raise _fail(f"index {retriever.version} has no lexical arm; rebuild it", MISSING_RESOURCE)
    settings = get_settings().model_copy(
        update={
            k: v for k, v in (("policy_prompt", prompt_version), ("expansion_entry", entry)) if v
        }
    )
    report = evaluate_policies(
        policy, examples, retriever, model_path, modes=mode, pooled=pooled,
        max_new_tokens=max_new_tokens, entry=settings.expansion_entry,
        prompt=serving_prompt(settings, retriever),
    )  # fmt: skip
    report["grades"] = str(grades)
    _print_report(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        console.print(f"report written to {json_out}")


def _print_report(report: dict[str, Any]) -> None:
    table = Table(
        title=f"{report['n_queries']} queries, index {report['index_version']}, "
        f"{report.get('grades', GradeSet.completed)} grades"
    )
    cols = ("policy", "retriever", "NDCG@10", "judged@10", "recall@10", "recall@50", "MRR")
    for col in (*cols, "parsed"):
        table.add_column(col)
    unreliable = []
    for name, summary in report["policies"].items():
        for retriever in summary:
            if not isinstance(summary[retriever], dict):
                continue
            m = summary[retriever]
            cells = [
                f"{m[k]['mean']:.3f} [{m[k]['lo']:.3f}, {m[k]['hi']:.3f}]"
                for k in ("ndcg@10", "judged@10", "recall@10", "recall@50", "mrr")
            ]
            if not m.get("reliable", True):
                cells[1] = f"[red]{cells[1]} ![/red]"
                unreliable.append(f"{name}/{retriever}")
            table.add_row(name, retriever, *cells, f"{summary['parse_rate']:.2f}")
    Console().print(table)
    if unreliable:
        console.print(
            f"[yellow]unreliable:[/yellow] judged@10 below {MIN_JUDGED} for "
            f"{', '.join(unreliable)}: their NDCG counts many ungraded products as irrelevant"
        )


def register(app: typer.Typer) -> None:
    """Entry point of the `ospo.cli` group: add `train` and `eval` to the `ospo` app."""
    app.command("train")(train_command)
    app.command("eval")(eval_command)
