"""Retrieval on Milvus: the same index version, searched by a distributed engine.

One index version maps to one collection (``collection_name``), written once and never changed:
    row        INT64 primary key, the version's row number (both arms and facets share it)
    product_id VARCHAR, for people reading the collection
    terms      VARCHAR, the row's analysed text (service/retrieval/lexical.py) → BM25 function
    sparse     SPARSE_FLOAT_VECTOR, BM25 (k1 = 1.5, b = 0.75, as the local arm)
    dense      FLOAT_VECTOR, the version's embeddings; FLAT or HNSW (M and efConstruction as
               FAISS) by the manifest's kind, inner product
    brand      VARCHAR, case-folded ("" = none)
    price      FLOAT (-1 = none; a price filter admits only rows with a price, as locally)
    attrs      JSON {field: case-folded value} of the version's facet fields

Decisions:
* The version folder stays the source of truth and CURRENT stays the switch: a process opening a
  version whose collection is missing publishes it (``publish``) — inserted under a private
  temporary name and renamed, like the version folder itself, so a collection that exists is
  complete and two processes racing to publish one version both end up on one collection.
  Serving follows CURRENT as today (service/state.py), so a swap is still one reference swap.
* Both arms score the service's own analysed terms (stemmed, stopwords removed): the engine's
  analyzers differ between Milvus builds (milvus-lite has no stemmer), so the text it indexes
  and the queries it gets are already analysed and its tokenizer only splits on spaces.
* Filters and hides become one boolean expression, given to *each* sub-request of a hybrid
  search (a top-level filter of ``hybrid_search`` is silently ignored by some Milvus builds),
  so the engine ranks admitted rows only; a filter on a field the version lacks admits nothing
  and never reaches the engine. Pins are checked against the version's facet columns, as the
  local backend does.
* Hybrid fusion is the engine's RRF with k = rrf_k. RRF in Milvus has no arm weights; integer
  weights (the default 1 : 2) are given exactly by repeating an arm's sub-request, since RRF sums
  1/(k + rank) over sub-requests. Score fusion, or weights that are not whole multiples of each
  other, fuse the two engine rankings in the service (service/retrieval/fusion.py).
* Facets, synonyms and rules stay in the service: facet counts read the ranking's candidate
  rows in the version's facet columns (Milvus Lite silently ignores group-by and aggregation).
* Embeddings (``embeddings``) and the local BM25 arm (``lexical``) stay readable from the
  version folder, lazily, for the trainer's pooled rewards; serving never loads them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from service.domain import FusionMethod, RetrievalMode
from service.errors import Unavailable
from service.retrieval.embedder import Embedder
from service.retrieval.facets import BRAND, FACETS_DIRNAME, FacetTable, Filters
from service.retrieval.fusion import Arm, FusionConfig, fuse
from service.retrieval.index import (
    Manifest,
    ModeUnavailableError,
    Ranking,
    Retriever,
    read_manifest,
)
from service.retrieval.lexical import LEXICAL_DIRNAME, LexicalIndex, analyze, read_terms

COLLECTION_PREFIX = "ospo_"
INSERT_BATCH = 2000
TERMS_MAX_CHARS = 16_000  # VARCHAR limit below; analysed search texts are far shorter
NO_PRICE = -1.0
BM25_PARAMS = {"bm25_k1": 1.5, "bm25_b": 0.75}
HNSW_EF_CONSTRUCTION = 200  # as make_faiss_index


class PublishError(RuntimeError):
    """A version cannot be published to Milvus (built before its analysed terms were kept)."""


class EngineUnavailable(Unavailable, RuntimeError):
    """Milvus did not answer: a search gets 503; a version that cannot be opened is not served
    (service/state.py keeps the serving one and logs this)."""


def collection_name(version: str) -> str:
    """The collection of an index version (Milvus names: letters, digits, underscores)."""
    return COLLECTION_PREFIX + re.sub(r"[^0-9A-Za-z_]", "_", version)


def connect(uri: str, token: str | None = None):  # type: ignore[no-untyped-def]
    """A pymilvus client of ``uri`` (it connects at once: EngineUnavailable if nothing answers)."""
    from pymilvus import MilvusClient

    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as e:  # noqa: BLE001 - pymilvus raises its own and gRPC's errors
        raise EngineUnavailable(f"Milvus at {uri} does not answer: {e}") from e


# ---------------------------------------------------------------- filters as an expression


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def filter_expression(
    filters: Filters | None, table: FacetTable | None, row_of: dict[str, int]
) -> str | None:
    """The Milvus boolean expression of ``filters`` ("" when they restrict nothing), or None
    when they admit no row at all (a field the version lacks), which needs no engine call.
    Values compare case-folded, OR-ed within a field and AND-ed across fields, as
    ``FacetTable.mask``."""
    if filters is None or not filters.restricts():
        return ""
    if table is None:
        raise ModeUnavailableError("this index version has no filter columns")
    parts: list[str] = []
    for name, wanted in ((BRAND, filters.brand), *filters.attributes):
        if name not in table.codes:
            return None
        if not wanted:
            continue
        values = sorted({v.casefold() for v in wanted})
        if name == BRAND:
            parts.append(f"brand in [{', '.join(_literal(v) for v in values)}]")
        else:
            path = f"attrs[{_literal(name)}]"
            parts.append("(" + " or ".join(f"{path} == {_literal(v)}" for v in values) + ")")
    if filters.price_min is not None:
        parts.append(f"price >= {float(filters.price_min)!r}")
    if filters.price_max is not None:
        parts.append(f"price >= 0 and price <= {float(filters.price_max)!r}")
    hidden = sorted(row_of[p] for p in filters.exclude if p in row_of)
    if hidden:
        parts.append(f"row not in [{', '.join(map(str, hidden))}]")
    return " and ".join(parts)


# ---------------------------------------------------------------- publishing a version


def _rows(path: Path, manifest: Manifest, start: int, stop: int, vectors, terms, table, ids):  # type: ignore[no-untyped-def]
    fields = [f for f in (table.order if table else []) if f != BRAND]
    for i in range(start, stop):
        brand = ""
        attrs: dict[str, str] = {}
        price = NO_PRICE
        if table is not None:
            code = int(table.codes[BRAND][i])
            brand = table.values[BRAND][code].casefold() if code >= 0 else ""
            for f in fields:
                c = int(table.codes[f][i])
                if c >= 0:
                    attrs[f] = table.values[f][c].casefold()
            if not np.isnan(table.price[i]):
                price = float(table.price[i])
        yield {
            "row": i,
            "product_id": ids[i],
            "terms": terms[i][:TERMS_MAX_CHARS],
            "dense": np.asarray(vectors[i], dtype=np.float32).tolist(),
            "brand": brand,
            "price": price,
            "attrs": attrs,
        }


def _schema(client, dim: int):  # type: ignore[no-untyped-def]
    from pymilvus import DataType, Function, FunctionType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("product_id", DataType.VARCHAR, max_length=1024)
    schema.add_field(
        "terms",
        DataType.VARCHAR,
        max_length=TERMS_MAX_CHARS * 4,  # bytes, and a character may take four
        enable_analyzer=True,
        analyzer_params={"tokenizer": "standard"},  # terms are already analysed
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("brand", DataType.VARCHAR, max_length=1024)
    schema.add_field("price", DataType.FLOAT)
    schema.add_field("attrs", DataType.JSON)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["terms"],
            output_field_names=["sparse"],
        )
    )
    return schema


def _index_params(client, manifest: Manifest):  # type: ignore[no-untyped-def]
    params = client.prepare_index_params()
    if manifest.kind == "hnsw":
        params.add_index(
            "dense",
            index_type="HNSW",
            metric_type="IP",
            params={"M": manifest.hnsw_m or 32, "efConstruction": HNSW_EF_CONSTRUCTION},
        )
    else:
        params.add_index("dense", index_type="FLAT", metric_type="IP")
    params.add_index(
        "sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params=BM25_PARAMS
    )
    return params


def publish(client, path: Path) -> str:  # type: ignore[no-untyped-def]
    """The collection of the version folder ``path``, created and filled if it is missing
    (under a temporary name, then renamed: see the module docstring). Returns its name."""
    manifest = read_manifest(path)
    name = collection_name(manifest.version)
    if client.has_collection(name):
        return name
    terms = read_terms(path / LEXICAL_DIRNAME) if manifest.lexical else None
    if terms is None:
        raise PublishError(
            f"index {manifest.version} keeps no analysed terms (built before the milvus "
            "backend); rebuild it with `ospo index build`"
        )
    ids: list[str] = json.loads((path / "ids.json").read_text())
    table = FacetTable.load(path / FACETS_DIRNAME) if manifest.facets else None
    vectors = np.load(path / "embeddings.npy", mmap_mode="r")
    tmp = f"{name}__tmp_{uuid.uuid4().hex[:8]}"
    client.create_collection(
        tmp,
        schema=_schema(client, manifest.dim),
        index_params=_index_params(client, manifest),
        consistency_level="Strong",
    )
    try:
        for start in range(0, manifest.count, INSERT_BATCH):
            stop = min(start + INSERT_BATCH, manifest.count)
            client.insert(tmp, list(_rows(path, manifest, start, stop, vectors, terms, table, ids)))
        client.flush(tmp)
        client.rename_collection(tmp, name)
    except Exception:
        client.drop_collection(tmp)
        if client.has_collection(name):  # another process published it first
            return name
        raise
    return name


def drop_unused(client, keep: Sequence[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Drop this project's collections whose version is not in ``keep``; their names."""
    wanted = {collection_name(v) for v in keep}
    dropped = [
        c
        for c in client.list_collections()
        if c.startswith(COLLECTION_PREFIX) and c not in wanted and "__tmp_" not in c
    ]
    for c in dropped:
        client.drop_collection(c)
    return dropped


# ---------------------------------------------------------------- the retriever


def _arm(hits, bm25: bool = False) -> Arm:  # type: ignore[no-untyped-def]
    """(rows, scores) of one query's hits, in the engine's order. BM25 scores are put on the
    local arm's scale: bm25s' Lucene variant leaves out the constant factor (k1 + 1) that
    Milvus keeps, and Milvus Lite reports them negated (smaller distance = better)."""
    rows = np.array([int(h["row"]) for h in hits], dtype=np.int64)
    scores = np.array([float(h["distance"]) for h in hits], dtype=np.float32)
    if bm25:
        scores = np.abs(scores) / (BM25_PARAMS["bm25_k1"] + 1)
    return rows, scores


class MilvusRetriever(Retriever):
    """An index version searched in its Milvus collection (see module docstring).

    Rows, titles and facet columns are read from the version folder (rendering and facet
    counts need them); the FAISS and BM25 arms are not loaded.
    """

    def __init__(
        self,
        path: Path,
        embedder: Embedder,
        client,  # type: ignore[no-untyped-def]  # a pymilvus MilvusClient
        ef_search: int = 128,
        *,
        mode: RetrievalMode = RetrievalMode.hybrid,
        fusion: FusionConfig = FusionConfig(),
    ) -> None:
        self.path = path
        self.manifest = read_manifest(path)
        if embedder.name != self.manifest.embedder or embedder.dim != self.manifest.dim:
            raise ValueError(
                f"index {self.manifest.version} was built with {self.manifest.embedder} "
                f"(dim {self.manifest.dim}), not {embedder.name} (dim {embedder.dim})"
            )
        self.embedder = embedder
        self.client = client
        try:
            self.collection = publish(client, path)
            client.load_collection(self.collection)
        except PublishError:
            raise
        except Exception as e:  # noqa: BLE001 - pymilvus raises its own and gRPC's errors
            raise EngineUnavailable(f"Milvus could not open index {self.version}: {e}") from e
        self.index = None  # no FAISS index in this process
        self.ids: list[str] = json.loads((path / "ids.json").read_text())
        self.titles: list[str] = json.loads((path / "titles.json").read_text())
        self.row_of = {pid: i for i, pid in enumerate(self.ids)}
        self._embeddings = None
        self.facets = FacetTable.load(path / FACETS_DIRNAME) if self.manifest.facets else None
        self.ef_search = ef_search
        self.mode = RetrievalMode(mode)
        self.fusion = fusion

    @cached_property
    def lexical(self) -> LexicalIndex | None:  # type: ignore[override]
        """The local BM25 arm, for the trainer's pooled rewards only (memory-mapped)."""
        if not self.manifest.lexical:
            return None
        return LexicalIndex.load(self.path / LEXICAL_DIRNAME)

    def resolve_mode(self, mode: RetrievalMode | str | None) -> RetrievalMode:
        chosen = RetrievalMode(mode) if mode is not None else self.mode
        if chosen != RetrievalMode.dense and not self.manifest.lexical:
            if mode is None:
                return RetrievalMode.dense
            raise ModeUnavailableError(
                f"index {self.version} has no lexical arm; rebuild it with `ospo index build`"
            )
        return chosen

    # ------------------------------------------------------------ engine requests

    def _dense_param(self, depth: int) -> dict[str, Any]:
        if self.manifest.kind == "hnsw":
            return {"metric_type": "IP", "params": {"ef": max(self.ef_search, depth)}}
        return {"metric_type": "IP", "params": {}}

    def _lexical_queries(self, texts: Sequence[str]) -> list[str]:
        # A query with no known term must still be a non-empty string for the engine; a space
        # analyses to nothing there, so it matches nothing, as locally.
        return [" ".join(t) or " " for t in analyze(texts, self.lexical_stem)]

    @cached_property
    def lexical_stem(self) -> bool:
        path = self.path / LEXICAL_DIRNAME / "analyzer.json"
        return bool(json.loads(path.read_text())["stem"]) if path.exists() else True

    def _search(self, field: str, data: list, depth: int, expr: str) -> list[Arm]:  # type: ignore[type-arg]
        param = self._dense_param(depth) if field == "dense" else {"metric_type": "BM25"}
        hits = self.client.search(
            self.collection,
            data=data,
            anns_field=field,
            limit=depth,
            filter=expr,
            search_params=param,
            output_fields=[],
        )
        return [_arm(h, bm25=field == "sparse") for h in hits]

    def _engine_weights(self) -> tuple[tuple[int, int], float] | None:
        """Sub-requests per arm giving the configured weights' ratio exactly under RRF, and the
        factor that brings the engine's scores to the configured scale (3 : 3 is sent as
        1 : 1, whose scores are a third of the local fusion's); None: fuse in the service."""
        if self.fusion.method != FusionMethod.rrf:
            return None
        d, lx = self.fusion.dense_weight, self.fusion.lexical_weight
        if d == 0 or lx == 0:
            return None
        small = min(d, lx)
        ratio = max(d, lx) / small
        if abs(ratio - round(ratio)) > 1e-9 or round(ratio) > 4:
            return None
        r = round(ratio)
        return ((1, r) if lx >= d else (r, 1)), small

    def _hybrid(
        self, vectors: np.ndarray, queries: list[str], depth: int, keep: int, expr: str
    ) -> list[Arm]:
        from pymilvus import AnnSearchRequest, RRFRanker

        engine = self._engine_weights()
        if engine is None:  # fuse the engine's two rankings here
            dense = self._search("dense", vectors.tolist(), depth, expr)
            lexical = self._search("sparse", queries, depth, expr)
            w = (self.fusion.dense_weight, self.fusion.lexical_weight)
            return [fuse(pair, w, self.fusion, keep) for pair in zip(dense, lexical, strict=True)]
        weights, scale = engine
        requests = [
            AnnSearchRequest(vectors.tolist(), "dense", self._dense_param(depth), depth, expr=expr)
        ] * weights[0] + [
            AnnSearchRequest(queries, "sparse", {"metric_type": "BM25"}, depth, expr=expr)
        ] * weights[1]
        hits = self.client.hybrid_search(
            self.collection,
            requests,
            RRFRanker(self.fusion.rrf_k),
            limit=keep,
            output_fields=[],
        )
        return [(rows, scores * scale) for rows, scores in (_arm(h) for h in hits)]

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, min(k, max(self.manifest.count, 1)))
        arms = self._search("dense", np.asarray(queries, np.float32).tolist(), k, "")
        scores = np.full((len(arms), k), -np.inf, dtype=np.float32)
        rows = np.full((len(arms), k), -1, dtype=np.int64)
        for b, (r, s) in enumerate(arms):
            rows[b, : r.size], scores[b, : r.size] = r, s
        return scores, rows

    def rank(
        self,
        texts: Sequence[str],
        k: int,
        mode: RetrievalMode | str | None = None,
        timings: dict[str, float] | None = None,
        *,
        lexical_texts: Sequence[str] | None = None,
        filters: Sequence[Filters | None] | None = None,
        candidates: bool = False,
    ) -> list[Ranking]:
        """As ``Retriever.rank``, each arm and the fusion run in the engine. Texts with the same
        filter share one engine request; ``timings`` gets dense_ms (embedding the queries),
        lexical_ms (analysing them) and engine_ms (the engine's search, fusion included)."""
        if not texts:
            return []
        chosen = self.resolve_mode(mode)
        wide = chosen == RetrievalMode.hybrid or candidates
        depth = min(max(k, self.fusion.depth) if wide else k, max(self.manifest.count, 1))
        keep = depth if candidates else k
        exprs = [
            filter_expression(f, self.facets, self.row_of)
            for f in (filters if filters is not None else [None] * len(texts))
        ]
        t0 = time.perf_counter()
        vectors = self.embedder.encode(texts) if chosen != RetrievalMode.lexical else None
        t1 = time.perf_counter()
        queries = (
            self._lexical_queries(lexical_texts or texts) if chosen != RetrievalMode.dense else None
        )
        t2 = time.perf_counter()
        empty: Arm = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        pool: list[Arm] = [empty] * len(texts)
        groups: dict[str, list[int]] = {}
        for i, expr in enumerate(exprs):
            if expr is not None:  # None admits nothing: no engine call
                groups.setdefault(expr, []).append(i)
        try:
            self._rank_groups(chosen, groups, vectors, queries, depth, keep, pool)
        except Exception as e:  # noqa: BLE001 - pymilvus raises its own and gRPC's errors
            raise EngineUnavailable(f"Milvus search failed: {e}") from e
        t3 = time.perf_counter()
        if timings is not None:
            if vectors is not None:
                timings["dense_ms"] = (t1 - t0) * 1000  # the query embedding
            if queries is not None:
                timings["lexical_ms"] = (t2 - t1) * 1000  # the query analysis
            timings["engine_ms"] = (t3 - t2) * 1000  # both arms and their fusion, in Milvus
        return [Ranking(r[:k], s[:k], r if candidates else None) for r, s in pool]

    def _rank_groups(  # type: ignore[no-untyped-def]
        self, chosen, groups, vectors, queries, depth: int, keep: int, pool: list[Arm]
    ) -> None:
        """Fill ``pool`` with each text's ranking: one engine request per filter group."""
        for expr, members in groups.items():
            if chosen == RetrievalMode.dense:
                assert vectors is not None
                arms = self._search("dense", vectors[members].tolist(), depth, expr)
            elif chosen == RetrievalMode.lexical:
                assert queries is not None
                arms = self._search("sparse", [queries[i] for i in members], depth, expr)
            else:
                assert vectors is not None and queries is not None
                arms = self._hybrid(
                    vectors[members], [queries[i] for i in members], depth, keep, expr
                )
            for i, arm in zip(members, arms, strict=True):
                pool[i] = arm
