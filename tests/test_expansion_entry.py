"""How a policy's additions enter retrieval in serving (OSPO_EXPANSION_ENTRY), through the API:
fused = the raw query's ranking and the expanded query's fused by reciprocal rank; lexical =
the dense arm keeps the raw query; concat = both arms search query + additions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.domain import ExpansionEntry
from service.retrieval.fusion import fuse_expansion
from service.retrieval.open import open_retriever
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
QUERY = "docking station"
K = 8


@pytest.fixture(scope="module")
def model_path() -> Path:
    from service.policy.models import PolicyModelError, prepare_policy_model

    try:
        return prepare_policy_model(ROOT / "var" / "models")
    except PolicyModelError as e:
        pytest.skip(str(e))


def _client(
    db_url: str, index_root: Path, tmp_path: Path, entry: ExpansionEntry, model: Path
) -> TestClient:
    """The API with the real base policy in process, waiting for its answer."""
    data_dir = tmp_path / entry.value
    shutil.copytree(index_root, data_dir / "indexes")
    settings = Settings(
        data_dir=data_dir, database_url=db_url, admin_api_key="s3cret", policy_backend="local",
        policy_model=str(model), serve_base_policy=True, rewrite_misses="background",
        rewrite_budget_ms=120_000, explore_share=0.0, expansion_entry=entry,
    )  # fmt: skip
    return TestClient(create_app(settings))


def _served(client: TestClient) -> tuple[str, list[str]]:
    body = client.post("/v1/search", json={"query": QUERY, "k": K}).json()
    assert body["rewrite_source"] == "policy"
    return body["rewrite"], [r["product_id"] for r in body["results"]]


@pytest.mark.parametrize("entry", list(ExpansionEntry))
def test_additions_enter_retrieval_as_configured(
    sqlite_url: str, small_index_root: Path, tmp_path: Path, entry: ExpansionEntry,
    model_path: Path,
) -> None:  # fmt: skip
    with _client(sqlite_url, small_index_root, tmp_path, entry, model_path) as client:
        text, served = _served(client)
    assert text.startswith(QUERY + " ") and len(text) > len(QUERY) + 1  # the base model adds
    retriever = open_retriever(Settings(), root=small_index_root)
    raw, expanded = retriever.rank([QUERY, text], K)
    if entry == ExpansionEntry.concat:
        want = expanded.rows
    elif entry == ExpansionEntry.lexical:
        want = retriever.rank([QUERY], K, lexical_texts=[text])[0].rows
    else:
        want = fuse_expansion(
            (raw.rows, raw.scores), (expanded.rows, expanded.scores), retriever.fusion, K
        )[0]
    assert served == [retriever.ids[r] for r in np.asarray(want).tolist()]
    # the raw and expanded rankings differ, so the entries are told apart
    assert raw.rows.tolist() != expanded.rows.tolist()
