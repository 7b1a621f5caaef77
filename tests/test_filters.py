"""Filters and facets inside retrieval, merchandising rules, click positions and exploration,
through the public API on each database backend (real embedder, FAISS and BM25 arms)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from service.db.engine import session_scope
from service.db.models import Event, Search
from service.retrieval.embedder import get_embedder
from service.retrieval.facets import FacetTable, Filters
from service.retrieval.index import Retriever, write_index
from tests.conftest import make_api_client

KEY = {"Authorization": "Bearer s3cret"}
BRANDS = ["HP", "Canon", "Epson", "Brother"]
COLOURS = ["Black", "Cyan", "Magenta", "Yellow"]
KINDS = ["ink cartridge", "toner", "laser printer", "laptop", "usb cable"]


def _catalogue() -> list[dict]:
    """80 products: every brand × colour × kind (the kind sets the price band)."""
    out = []
    for n, (brand, colour, kind) in enumerate(itertools.product(BRANDS, COLOURS, KINDS)):
        price = 10.0 + 100 * KINDS.index(kind) + n % 7
        out.append(
            {
                "id": f"p{n:03d}",
                "title": f"{brand} {kind} {colour}",
                "brand": brand,
                "attributes": {"attr_t_product_colour": colour, "price": price},
            }
        )
    return out


@pytest.fixture(scope="module")
def shop_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    products = _catalogue()
    embedder = get_embedder()
    root = tmp_path_factory.mktemp("shop")
    texts = [p["title"] for p in products]
    write_index(
        root,
        [p["id"] for p in products],
        texts,
        embedder.encode(texts),
        embedder.name,
        "flat",
        lexical_texts=texts,
        facets=FacetTable.build(
            [p["brand"] for p in products], [p["attributes"] for p in products]
        ),
    )
    return root


@pytest.fixture
def shop(db_url: str, shop_index: Path, tmp_path: Path):
    with make_api_client(db_url, shop_index, tmp_path, rules_refresh_s=0.2) as client:
        yield client


def _search(client, **body) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_filtered_search_returns_k_matching_results_with_facets(shop, mode: str) -> None:
    # Canon and Black: 5 products (one per kind); a laptop query ranks them far apart.
    body = {"query": "laptop", "k": 5, "mode": mode}
    unfiltered = _search(shop, **body)
    filt = {"brand": ["canon"], "attributes": {"product_colour": ["black"]}}
    got = _search(shop, **body, filters=filt)
    assert len(got["results"]) == 5  # all five admitted products, none cut after ranking
    assert {r["brand"] for r in got["results"]} == {"Canon"}
    assert [r["title"] for r in got["results"]][0] == "Canon laptop Black"
    assert any(r["brand"] != "Canon" for r in unfiltered["results"])
    assert got["facets"]["brand"] == [{"value": "Canon", "count": 5}]
    assert got["facets"]["product_colour"] == [{"value": "Black", "count": 5}]
    prices = [r["price"] for r in got["results"]]
    assert got["facet_stats"]["price"]["min"] == min(prices)
    assert got["facet_stats"]["price"]["max"] == max(prices)
    # k larger than what matches: exactly the matches.
    assert len(_search(shop, **{**body, "k": 20}, filters=filt)["results"]) == 5


def test_price_range_and_facet_counts_over_candidates(shop) -> None:
    got = _search(shop, query="printer", k=10, filters={"price": {"min": 200, "max": 300}})
    assert len(got["results"]) == 10
    assert all(200 <= r["price"] <= 300 for r in got["results"])
    # Only laser printers (price band 210..216) are in range: 16 of them, 4 per brand.
    assert got["facets"]["brand"] == [{"value": b, "count": 4} for b in sorted(BRANDS)]
    assert sum(c["count"] for c in got["facets"]["product_colour"]) == 16
    only_brand = _search(shop, query="printer", k=3, facets=["brand"])
    assert set(only_brand["facets"]) == {"brand"} and only_brand["facet_stats"] == {}
    none = _search(shop, query="printer", k=3, facets=[])
    assert none["facets"] == {} and none["facet_stats"] == {}


def test_dense_filtering_is_exact_over_the_admitted_rows(shop_index: Path) -> None:
    retriever = Retriever.load_current(shop_index, get_embedder())
    filters = Filters(brand=("Epson", "HP"), price_max=150.0)
    mask = retriever.mask(filters)
    assert mask is not None and mask.sum() == 16  # 2 brands × 4 colours × 2 cheap kinds
    q = retriever.embedder.encode(["black ink"])[0]
    exact = np.flatnonzero(mask)[np.argsort(-(np.asarray(retriever.embeddings)[mask] @ q))][:10]
    ranking = retriever.rank(["black ink"], 10, "dense", filters=[filters])[0]
    assert ranking.rows.tolist() == exact.tolist()


def test_hnsw_filtered_search_keeps_k(tmp_path: Path) -> None:
    """Through the FAISS selector (more admitted rows than the exact threshold) and the exact
    path alike, an HNSW index returns min(k, admitted) admitted rows."""
    embedder = get_embedder()
    titles = [f"{b} {k} model {n}" for n, (b, k) in enumerate(itertools.product(BRANDS, KINDS))]
    titles = [f"{t} v{i}" for i in range(230) for t in titles][:4600]
    brands = [t.split()[0] for t in titles]
    write_index(
        tmp_path,
        [f"h{i}" for i in range(len(titles))],
        titles,
        embedder.encode(titles),
        embedder.name,
        "hnsw",
        hnsw_m=8,
        lexical_texts=titles,
        facets=FacetTable.build(brands, [{} for _ in titles]),
    )
    retriever = Retriever.load_current(tmp_path, embedder, ef_search=16)
    for wanted in (("HP", "Canon", "Epson"), ("Brother",)):  # 3450 admitted, then 1150
        filters = Filters(brand=wanted)
        for text in ("laptop", "usb cable"):
            rows = retriever.rank([text], 50, "dense", filters=[filters])[0].rows
            assert len(rows) == 50
            assert {brands[r] for r in rows} <= set(wanted)
    excluded = Filters(brand=("HP", "Canon", "Epson", "Brother"), exclude=frozenset({"h0"}))
    mask = retriever.mask(excluded)
    assert mask is not None and mask.sum() == len(titles) - 1 and not mask[0]
    rows = retriever.rank(["HP ink cartridge model 0 v0"], 100, "dense", filters=[excluded])[0]
    assert len(rows.rows) == 100 and 0 not in rows.rows.tolist()


def test_bad_filters_are_refused_and_unknown_fields_reported(shop) -> None:
    # A field the catalogue lacks admits nothing (no product carries it), and the answer says so.
    got = _search(shop, query="ink", filters={"attributes": {"flavour": ["x"]}})
    assert got["results"] == [] and "flavour" in got["warnings"][0]
    assert "product_colour" in got["warnings"][0]
    got = _search(shop, query="ink", facets=["flavour", "brand"])
    assert got["facets"]["flavour"] == [] and got["facets"]["brand"] and got["warnings"]
    assert _search(shop, query="ink", filters={"price": {"min": 9, "max": 1}})["results"] == []
    for bad in (
        {"colour": ["x"]},  # unknown top-level filter key
        {"price": {"max": True}},  # a boolean is not a price
        {"price": {"min": -1}},
        {"brand": []},
        {"brand": ["x" * 300]},
    ):
        r = shop.post("/v1/search", json={"query": "ink", "filters": bad})
        assert r.status_code == 422, (bad, r.text)


def test_rule_repeats_are_collapsed(shop) -> None:
    pin = shop.post(
        "/admin/rules",
        headers=KEY,
        json={"kind": "pin", "query": "x", "product_ids": ["a", "b", "a"]},
    )
    assert pin.status_code == 201 and pin.json()["product_ids"] == ["a", "b"]
    syn = shop.post(
        "/admin/rules", headers=KEY, json={"kind": "synonym", "terms": ["TV", "tv", "telly"]}
    )
    assert syn.status_code == 201 and syn.json()["terms"] == ["TV", "telly"]


def test_several_routes_on_one_path_allow_all_their_methods(shop) -> None:
    r = shop.request("PATCH", "/admin/rules", headers=KEY)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    r = shop.request("PATCH", "/admin/rules/1", headers=KEY)
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, PUT"


def test_rules_pin_hide_and_synonyms_fire_and_are_reported(shop) -> None:
    base = _search(shop, query="Canon toner", k=5, mode="hybrid")
    organic = [r["product_id"] for r in base["results"]]
    assert base["rules"] == []
    pin = shop.post(
        "/admin/rules",
        headers=KEY,
        json={"kind": "pin", "query": "  CANON   toner ", "product_ids": ["p079", "p000"]},
    )
    assert pin.status_code == 201, pin.text
    assert pin.json()["query"] == "canon toner"
    hide = shop.post(
        "/admin/rules",
        headers=KEY,
        json={"kind": "hide", "query": "canon toner", "product_ids": [organic[0]]},
    ).json()
    got = _search(shop, query="Canon toner", k=5, mode="hybrid")
    ids = [r["product_id"] for r in got["results"]]
    assert ids[:2] == ["p079", "p000"] and [r["pinned"] for r in got["results"]][:3] == [
        True,
        True,
        False,
    ]
    assert organic[0] not in ids and len(ids) == 5
    assert {(f["id"], f["kind"]) for f in got["rules"]} == {
        (pin.json()["id"], "pin"),
        (hide["id"], "hide"),
    }
    # A pinned product the shopper's filter excludes is not forced in.
    filtered = _search(shop, query="Canon toner", k=5, filters={"brand": ["Canon"]})
    assert "p079" not in [r["product_id"] for r in filtered["results"]]  # a Brother product
    with session_scope(shop.db_url) as session:
        logged = session.get(Search, got["search_id"])
        assert logged is not None and logged.product_ids == ids
        assert sorted(logged.rules) == sorted([pin.json()["id"], hide["id"]])

    # Synonyms reach the lexical arm: "notebook" matches nothing lexically until it is a laptop.
    assert _search(shop, query="notebook", k=5, mode="lexical")["results"] == []
    syn = shop.post(
        "/admin/rules", headers=KEY, json={"kind": "synonym", "terms": ["Notebook", "laptop"]}
    )
    assert syn.status_code == 201
    got = _search(shop, query="notebook", k=5, mode="lexical")
    assert len(got["results"]) == 5 and all("laptop" in r["title"] for r in got["results"])
    assert got["rules"] == [{"id": syn.json()["id"], "kind": "synonym"}]

    # Edit, list, disable, delete.
    rules = shop.get("/admin/rules", headers=KEY).json()
    assert [r["kind"] for r in rules] == ["pin", "hide", "synonym"]
    upd = shop.put(
        f"/admin/rules/{syn.json()['id']}",
        headers=KEY,
        json={"kind": "synonym", "terms": ["notebook", "laptop"], "enabled": False},
    )
    assert upd.status_code == 200 and upd.json()["enabled"] is False
    assert _search(shop, query="notebook", k=5, mode="lexical")["results"] == []
    assert shop.delete(f"/admin/rules/{pin.json()['id']}", headers=KEY).status_code == 204
    assert shop.delete(f"/admin/rules/{pin.json()['id']}", headers=KEY).status_code == 404
    assert [r["product_id"] for r in _search(shop, query="Canon toner", k=5)["results"]][
        0
    ] != "p079"


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "synonym", "terms": ["laptop"]},
        {"kind": "synonym", "terms": ["a", "b"], "query": "x"},
        {"kind": "pin", "query": "x"},
        {"kind": "hide", "product_ids": ["p1"]},
        {"kind": "pin", "query": "x", "product_ids": []},
        {"kind": "hide", "query": "x", "product_ids": ["p1"], "terms": ["a", "b"]},
        {"kind": "boost", "query": "x", "product_ids": ["p1"]},
    ],
)
def test_malformed_rules_are_refused(shop, body: dict) -> None:
    r = shop.post("/admin/rules", headers=KEY, json=body)
    assert r.status_code == 422, r.text
    assert shop.get("/admin/rules", headers=KEY).json() == []


def test_rules_reach_another_process_within_the_refresh(
    db_url: str, shop_index: Path, tmp_path: Path
) -> None:
    with (
        make_api_client(db_url, shop_index, tmp_path / "a", rules_refresh_s=0.2) as a,
        make_api_client(db_url, shop_index, tmp_path / "b", rules_refresh_s=0.2) as b,
    ):
        a.post(
            "/admin/rules",
            headers=KEY,
            json={"kind": "pin", "query": "ink", "product_ids": ["p042"]},
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _search(b, query="ink", k=3)["results"][0]["product_id"] == "p042":
                break
            time.sleep(0.1)
        else:
            pytest.fail("the pin made through A never reached B")


def test_events_store_the_position_shown(shop) -> None:
    got = _search(shop, query="HP ink", k=5)
    third = got["results"][2]["product_id"]
    r = shop.post(
        "/v1/events",
        json=[
            {"event_id": "e1", "search_id": got["search_id"], "product_id": third, "type": "click"},
            {
                "event_id": "e2",
                "search_id": got["search_id"],
                "product_id": "nope",
                "type": "click",
            },
        ],
    )
    assert r.status_code == 200, r.text
    with session_scope(shop.db_url) as session:
        positions = dict(session.execute(select(Event.event_id, Event.position)).all())
    assert positions == {"e1": 3, "e2": None}


def test_exploration_swaps_one_adjacent_pair_and_logs_it(
    db_url: str, shop_index: Path, tmp_path: Path
) -> None:
    with make_api_client(db_url, shop_index, tmp_path / "plain") as plain:
        ranked = [r["product_id"] for r in _search(plain, query="Epson toner", k=6)["results"]]
    with make_api_client(
        db_url, shop_index, tmp_path / "x", explore_share=1.0, explore_positions=4
    ) as x:
        ids = [_search(x, query="Epson toner", k=6)["search_id"] for _ in range(40)]
    with session_scope(db_url) as session:
        rows = session.scalars(select(Search).where(Search.id.in_(ids))).all()
    assert len(rows) == 40
    assert {r.explore_pair for r in rows} == {1, 2, 3}  # pairs within the top 4
    swapped = [r for r in rows if r.explore_swapped]
    assert 0 < len(swapped) < 40
    for r in rows:
        k = r.explore_pair
        expected = list(ranked)
        if r.explore_swapped:
            expected[k - 1], expected[k] = expected[k], expected[k - 1]
        assert r.product_ids == expected
