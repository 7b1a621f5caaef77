"""The milvus retrieval backend against a real `milvus-lite server` process (tests/conftest.py).

The search, filter and rule API tests of tests/test_filters.py and tests/test_api.py run here a
second time with OSPO_RETRIEVAL_BACKEND=milvus (on SQLite only: the database is not what
differs). Every filtered hit is checked against the filter, since some Milvus builds drop
filters of hybrid searches silently; rankings are compared with the local backend's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.domain import FusionMethod
from service.retrieval.embedder import get_embedder
from service.retrieval.facets import FacetTable, Filters
from service.retrieval.fusion import FusionConfig
from service.retrieval.index import Retriever, write_index
from service.retrieval.milvus import (
    MilvusRetriever,
    PublishError,
    collection_name,
    connect,
    filter_expression,
)
from tests import test_filters
from tests.conftest import make_api_client

# The API tests that run on both backends: imported, they run here with this module's fixtures.
from tests.test_api import (  # noqa: F401
    client,
    test_retrieval_mode_per_request,
    test_search_rejects_bad_input,
)
from tests.test_filters import (  # noqa: F401
    BRANDS,
    test_bad_filters_are_refused_and_unknown_fields_reported,
    test_events_store_the_position_shown,
    test_filtered_search_returns_k_matching_results_with_facets,
    test_price_range_and_facet_counts_over_candidates,
    test_rules_pin_hide_and_synonyms_fire_and_are_reported,
)

shop_index = test_filters.shop_index  # the same module fixture, built for this module too
QUERIES = ["laptop", "black ink", "Canon toner", "usb cable", "printer", "zzz unknown"]


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def shop(db_url: str, shop_index: Path, tmp_path: Path, milvus_uri: str):
    with make_api_client(
        db_url,
        shop_index,
        tmp_path,
        rules_refresh_s=0.2,
        retrieval_backend="milvus",
        milvus_uri=milvus_uri,
    ) as c:
        yield c


@pytest.fixture
def api_client(db_url: str, small_index_root: Path, tmp_path: Path, milvus_uri: str):
    with make_api_client(
        db_url, small_index_root, tmp_path, retrieval_backend="milvus", milvus_uri=milvus_uri
    ) as c:
        yield c


@pytest.fixture(scope="module")
def engine(milvus_uri: str):  # type: ignore[no-untyped-def]
    return connect(milvus_uri)


@pytest.fixture(scope="module")
def both(shop_index: Path, engine) -> tuple[Retriever, MilvusRetriever]:  # type: ignore[no-untyped-def]
    local = Retriever.load_current(shop_index, get_embedder())
    return local, MilvusRetriever(local.path, get_embedder(), engine)


def test_filter_expression_mirrors_the_local_mask(shop_index: Path) -> None:
    table = FacetTable.load(
        shop_index / Retriever.load_current(shop_index, get_embedder()).version / "facets"
    )
    row_of = {"p000": 0, "p007": 7}
    assert filter_expression(None, table, row_of) == ""
    assert filter_expression(Filters(), table, row_of) == ""
    expr = filter_expression(
        Filters(
            brand=("Canon", 'H"P'),
            price_min=10,
            price_max=99.5,
            attributes=(("product_colour", ("Black", "cyan")),),
            exclude=frozenset({"p007", "nope"}),
        ),
        table,
        row_of,
    )
    assert expr == (
        'brand in ["canon", "h\\"p"] and (attrs["product_colour"] == "black" or '
        'attrs["product_colour"] == "cyan") and price >= 10.0 and price >= 0 and '
        "price <= 99.5 and row not in [7]"
    )
    # A field the version lacks admits nothing, and needs no engine call.
    assert filter_expression(Filters(attributes=(("flavour", ("x",)),)), table, row_of) is None


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_rankings_match_the_local_backend(both, mode: str) -> None:  # type: ignore[no-untyped-def]
    local, milvus = both
    want = local.rank(QUERIES, 10, mode, candidates=True)
    got = milvus.rank(QUERIES, 10, mode, candidates=True)
    for q, w, g in zip(QUERIES, want, got, strict=True):
        # Same rows, same order, up to ties (equal fused scores may be ordered either way).
        assert sorted(g.rows.tolist()) == sorted(w.rows.tolist()), q
        assert set(g.candidates.tolist()) == set(w.candidates.tolist()), q
        if mode != "hybrid":  # the same scores too (BM25 on the local scale)
            np.testing.assert_allclose(g.scores, w.scores, rtol=1e-4, atol=1e-5)
    if mode == "lexical":  # no known term: no match, as locally
        assert got[-1].rows.size == 0


@pytest.mark.parametrize(
    "filters",
    [
        Filters(brand=("canon", "EPSON")),
        Filters(price_min=200, price_max=320),
        Filters(attributes=(("product_colour", ("Cyan",)),), exclude=frozenset({"p001"})),
        Filters(brand=("HP",), attributes=(("product_colour", ("Black", "Yellow")),)),
    ],
)
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_every_filtered_hit_is_admitted(both, filters: Filters, mode: str) -> None:  # type: ignore[no-untyped-def]
    local, milvus = both
    mask = local.mask(filters)
    assert mask is not None and 0 < mask.sum() < mask.size
    got = milvus.rank(QUERIES, 20, mode, filters=[filters] * len(QUERIES), candidates=True)
    want = local.rank(QUERIES, 20, mode, filters=[filters] * len(QUERIES), candidates=True)
    for g, w in zip(got, want, strict=True):
        assert all(mask[r] for r in g.candidates.tolist())  # every hit, not only the top k
        assert sorted(g.rows.tolist()) == sorted(w.rows.tolist())
    if mode != "lexical":  # the dense arm ranks every admitted row: k of them come back
        assert all(len(g.rows) == min(20, int(mask.sum())) for g in got)


def test_unknown_field_and_mixed_filters_in_one_batch(both) -> None:  # type: ignore[no-untyped-def]
    local, milvus = both
    filters = [Filters(brand=("Brother",)), None, Filters(attributes=(("flavour", ("x",)),))]
    got = milvus.rank(["toner"] * 3, 5, "hybrid", filters=filters)
    assert {local.facets.brand_of(r) for r in got[0].rows} == {"Brother"}
    assert len(got[1].rows) == 5 and len({local.facets.brand_of(r) for r in got[1].rows}) > 1
    assert got[2].rows.size == 0


def test_weights_and_score_fusion_match_local(shop_index: Path, engine) -> None:  # type: ignore[no-untyped-def]
    for fusion in (
        FusionConfig(lexical_weight=1.0),
        FusionConfig(lexical_weight=3.0),
        FusionConfig(method=FusionMethod.score),  # fused in the service from engine arms
        FusionConfig(lexical_weight=1.5),  # not a whole ratio: fused in the service too
    ):
        local = Retriever.load_current(shop_index, get_embedder(), fusion=fusion)
        milvus = MilvusRetriever(local.path, get_embedder(), engine, fusion=fusion)
        for w, g in zip(local.rank(QUERIES, 8), milvus.rank(QUERIES, 8), strict=True):
            assert sorted(g.rows.tolist()) == sorted(w.rows.tolist()), fusion
            np.testing.assert_allclose(np.sort(g.scores), np.sort(w.scores), rtol=1e-4)


def test_a_version_is_published_once_and_only_whole(tmp_path: Path, engine) -> None:  # type: ignore[no-untyped-def]
    emb = get_embedder()
    titles = ["red kettle", "blue kettle", "steel toaster"]
    write_index(
        tmp_path,
        ["a", "b", "c"],
        titles,
        emb.encode(titles),
        emb.name,
        "hnsw",
        hnsw_m=8,
        lexical_texts=titles,
        facets=FacetTable.build(["Acme", None, "Bolt"], [{}, {}, {}]),
    )
    local = Retriever.load_current(tmp_path, emb)
    first = MilvusRetriever(local.path, emb, engine)
    second = MilvusRetriever(local.path, emb, engine)  # another process: reuses the collection
    assert first.collection == second.collection == collection_name(local.version)
    names = engine.list_collections()
    assert first.collection in names and not any("__tmp_" in n for n in names)
    assert engine.get_collection_stats(first.collection)["row_count"] == 3
    hits = second.rank(["kettle"], 3, "lexical", filters=[Filters(brand=("acme",))])
    assert [local.ids[r] for r in hits[0].rows] == ["a"]
    # A version from before the analysed terms were kept cannot be published; it says why.
    (local.path / "lexical" / "terms.txt.gz").unlink()
    engine.drop_collection(first.collection)
    with pytest.raises(PublishError, match="rebuild"):
        MilvusRetriever(local.path, emb, engine)


def test_brand_filter_through_the_api_on_every_hit(shop) -> None:  # type: ignore[no-untyped-def]
    for query in ("printer", "black ink", "cable"):
        r = shop.post(
            "/v1/search",
            json={"query": query, "k": 20, "filters": {"brand": ["Epson", "hp"]}},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["results"]) == 20
        assert {x["brand"] for x in body["results"]} <= {"Epson", "HP"}
        assert {f["value"] for f in body["facets"]["brand"]} == {"Epson", "HP"}
        assert "engine_ms" in body["timings"]
    assert set(BRANDS) >= {"Epson", "HP"}


def test_an_engine_that_does_not_answer_is_unavailable(shop_index: Path, tmp_path: Path) -> None:
    from service.errors import Unavailable
    from service.policy.server import free_port
    from service.retrieval.milvus import EngineUnavailable
    from service.retrieval.open import open_retriever
    from service.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        retrieval_backend="milvus",
        milvus_uri=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    with pytest.raises(EngineUnavailable) as raised:
        open_retriever(settings, root=shop_index)
    # 503 to a shopper; a RuntimeError to the holder, which keeps serving the version it has.
    assert isinstance(raised.value, Unavailable) and isinstance(raised.value, RuntimeError)
