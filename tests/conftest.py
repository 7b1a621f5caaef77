"""Shared fixtures: databases (SQLite always, the real PostgreSQL when it answers), a small index.

Nothing is mocked: the database tests run once per backend, against real servers; where
PostgreSQL is absent those cases are skipped with the reason printed in the summary (`-ra`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Exploration swaps a random adjacent pair in 5% of searches; tests that compare rankings
# need them as ranked (the exploration tests turn it on themselves).
os.environ.setdefault("OSPO_EXPLORE_SHARE", "0")
# Likewise a candidate that passes the offline gate is promoted at once unless a test asks for
# the interleaved comparison (tests/test_interleaving.py).
os.environ.setdefault("OSPO_INTERLEAVE_SHARE", "0")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_URL = os.environ.get("OSPO_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OSPO_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

pytest_plugins = ["tests.vllm_fixture"] if (ROOT / "tests" / "vllm_fixture.py").exists() else []


def _pg_error() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            PG_URL.replace("postgresql://", "postgresql://", 1), connect_timeout=3
        ):
            return None
    except Exception as e:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_URL}: {type(e).__name__}"


def redis_error() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as e:  # noqa: BLE001
        return f"Redis not reachable at {REDIS_URL}: {type(e).__name__}"


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    err = _pg_error()
    if err:
        pytest.skip(err)
    return PG_URL


def _fresh_pg_schema(base: str) -> tuple[str, str]:
    """A private schema per use, so runs never collide with each other or with real data."""
    import psycopg

    schema = f"ospo_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{base}?options=-csearch_path%3D{schema}", schema


def _drop_pg_schema(base: str, schema: str) -> None:
    import psycopg

    from service.db.engine import get_engine

    get_engine.cache_clear()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables yet, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ospo.db'}"
        return
    base = request.getfixturevalue("pg_base_url")
    url, schema = _fresh_pg_schema(base)
    try:
        yield url
    finally:
        _drop_pg_schema(base, schema)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite database, for tests whose subject does not depend on the backend."""
    from service.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'ospo.db'}"
    upgrade(url)
    return url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A migrated, empty database on each backend."""
    from service.db.migrate import upgrade

    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture(scope="session")
def esci_records():
    from service.catalog.formats import parse_esci_products

    return list(parse_esci_products(DATA / "esci" / "sample_2c_full_data.csv"))


@pytest.fixture(scope="session")
def small_index_root(tmp_path_factory: pytest.TempPathFactory, esci_records) -> Path:
    """An index of the 392 ESCI sample products (real text, real embedder), built once."""
    from service.retrieval.embedder import get_embedder
    from service.retrieval.facets import FacetTable
    from service.retrieval.index import write_index

    products = [p for p, _ in esci_records if p is not None]
    emb = get_embedder()
    root = tmp_path_factory.mktemp("indexes")
    write_index(
        root,
        [p.id for p in products],
        [p.title for p in products],
        emb.encode([p.search_text for p in products]),
        emb.name,
        "flat",
        lexical_texts=[p.search_text for p in products],
        facets=FacetTable.build([p.brand for p in products], [p.attributes for p in products]),
    )
    return root


def write_title_index(root: Path, titles: dict[str, str]) -> Path:
    """A flat index of {product id: title} under `root` (real embedder), for small unit tests."""
    from service.retrieval.embedder import get_embedder
    from service.retrieval.index import write_index

    embedder = get_embedder()
    ids = list(titles)
    vectors = embedder.encode([titles[i] for i in ids])
    texts = [titles[i] for i in ids]
    write_index(root, ids, texts, vectors, embedder.name, "flat", lexical_texts=texts)
    return root


def make_api_client(db_url: str, index_root: Path, tmp_path: Path, **overrides):  # type: ignore[no-untyped-def]
    """An in-process API (no policy) over a copy of `index_root` and the database `db_url`;
    admin key `s3cret`; `overrides` are more settings. Use it as a context manager; the client
    carries the database URL as `client.db_url`."""
    import shutil

    from fastapi.testclient import TestClient

    from service.api.app import create_app
    from service.settings import Settings

    data_dir = tmp_path / "var"
    shutil.copytree(index_root, data_dir / "indexes")
    settings = Settings(
        data_dir=data_dir,
        database_url=db_url,
        admin_api_key="s3cret",
        policy_backend="none",
        **overrides,
    )
    client = TestClient(create_app(settings))
    client.db_url = db_url  # type: ignore[attr-defined]
    return client


@pytest.fixture
def api_client(db_url: str, small_index_root: Path, tmp_path: Path):
    with make_api_client(db_url, small_index_root, tmp_path) as c:
        yield c


def _milvus_answers(uri: str) -> bool:
    from pymilvus import MilvusClient

    try:
        MilvusClient(uri=uri, timeout=2).list_collections()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `milvus-lite server` on a free loopback port for the whole session (the milvus
    retrieval backend's engine), stopped at the end; skipped with the reason printed when it
    cannot start."""
    import shutil
    import sys
    import time

    from service.policy.server import free_port
    from tests.processes import Child

    exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    if not Path(exe).exists():
        pytest.skip("milvus-lite is not installed (`pip install milvus-lite`, a dev extra)")
    data = tmp_path_factory.mktemp("milvus")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    child = Child(
        [exe, "server", "--data-dir", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)],
        {},
        data / "server.log",
    )
    try:
        deadline = time.monotonic() + 60
        while not _milvus_answers(uri):
            if not child.alive() or time.monotonic() > deadline:
                pytest.skip(f"milvus-lite server did not start on {uri}:\n{child.tail(20)}")
            time.sleep(0.3)
        yield uri
    finally:
        child.stop(10)
