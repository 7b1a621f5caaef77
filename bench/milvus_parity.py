"""Does the milvus backend rank as the local one? → bench/results/milvus_parity.json

On the demo catalogue's serving index (`ospo bootstrap` builds it under var/indexes, or
``--index DIR``) and the Chorus queries (data/chorus_icecat, human grades, gains 3 → 1.0,
2 → 0.5, 1 → 0.1), each query searched raw (no rewrite) in hybrid mode — and in dense and
lexical mode for the overlap alone — by the local backend (FAISS + bm25s, weighted RRF in the
service) and by the milvus backend (one collection on a `milvus-lite server` this script starts
on a loopback port, or ``--milvus-uri``):

* overlap@20: |top-20 local ∩ top-20 milvus| / 20 per query (mean, min, share of queries at 1;
  two empty lists agree), and the share of queries whose results scored above the 20th one's
  score are the same set (BM25 gives many equal scores; ties at the cut fall either way);
* NDCG@10 of each backend over the queries with a positive grade, 95% bootstrap intervals, and
  the paired difference (milvus − local) with its interval: parity is an interval holding 0;
* a brand filter (the catalogue's most common brand) on every query: each hit's brand checked;
* the time to publish the version (insert + BM25 + index build in the engine) and per-query
  latency of each backend, reported, not judged: milvus-lite is a pure-Python test server,
  not the production engine.

    .venv/bin/python bench/milvus_parity.py [--index var/indexes] [--milvus-uri http://...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from harness.results import RESULTS, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from service.catalog.formats import parse_chorus_labels  # noqa: E402
from service.normalize import normalize_query  # noqa: E402
from service.policy.server import free_port  # noqa: E402
from service.processes import GroupChild  # noqa: E402
from service.retrieval.facets import BRAND, Filters  # noqa: E402
from service.retrieval.metrics import bootstrap_ci, ndcg_at_k  # noqa: E402
from service.retrieval.open import open_retriever  # noqa: E402
from service.settings import Settings  # noqa: E402

CHORUS = ROOT / "data" / "chorus_icecat" / "Broad_Query_Set_rated.csv"
OUT = RESULTS / "milvus_parity.json"
TMP = RESULTS / "tmp" / "milvus_parity"
TOP = 20
BATCH = 16


@contextmanager
def milvus_lite_server(data_dir: Path):  # type: ignore[no-untyped-def]
    """A `milvus-lite server` on a free loopback port (its URI), stopped on exit."""
    from pymilvus import MilvusClient

    exe = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    shutil.rmtree(data_dir / "db", ignore_errors=True)  # publish from scratch: it is measured
    data_dir.mkdir(parents=True, exist_ok=True)
    child = GroupChild(
        [exe, "server", "--data-dir", str(data_dir / "db"), "--host", "127.0.0.1"]
        + ["--port", str(port)],
        dict(os.environ),
        data_dir / "server.log",
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                MilvusClient(uri=uri, timeout=2).list_collections()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-lite did not start:\n{child.tail(20)}") from None
                time.sleep(0.5)
        yield uri
    finally:
        child.stop(10)


def private_copy(settings: Settings, root: Path) -> Path:
    """The serving version copied under TMP (this bench never touches var/); rebuilt from the
    catalogue when it keeps no analysed terms (built before the milvus backend): every
    embedding is reused by text hash, nothing is embedded again."""
    from service.retrieval.build import build_index_from_db
    from service.retrieval.embedder import get_embedder
    from service.retrieval.index import current_version, set_current
    from service.retrieval.lexical import TERMS_FILE

    version = current_version(root)
    if version is None:
        raise SystemExit(f"no index under {root}: run `ospo bootstrap`")
    copy = TMP / "indexes"
    if current_version(copy) is None or not (copy / version).exists():
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root / version, copy / version)
        set_current(copy, version)
    if not (copy / current_version(copy) / "lexical" / TERMS_FILE).exists():
        build_index_from_db(
            settings.resolved_database_url, copy, get_embedder(settings.embedder), kind="flat"
        )
    return copy


def load_targets() -> dict[str, dict[str, float]]:
    targets: dict[str, dict[str, float]] = defaultdict(dict)
    for lab in parse_chorus_labels(CHORUS):
        targets[normalize_query(lab.query)][lab.product_id] = lab.gain
    return dict(sorted(targets.items()))


def ranked_ids(retriever, queries: list[str], mode: str, k: int, filters=None):  # type: ignore[no-untyped-def]
    """Top-k product ids per query, their scores, and the seconds each batch took per query."""
    out: list[list[str]] = []
    scores: list[list[float]] = []
    per_query: list[float] = []
    for start in range(0, len(queries), BATCH):
        batch = queries[start : start + BATCH]
        t0 = time.perf_counter()
        rankings = retriever.rank(
            batch, k, mode, filters=[filters] * len(batch) if filters else None
        )
        per_query += [(time.perf_counter() - t0) / len(batch)] * len(batch)
        out += [[retriever.ids[r] for r in rk.rows.tolist()] for rk in rankings]
        scores += [rk.scores.tolist() for rk in rankings]
    return out, scores, per_query


def above_cut(ids: list[str], scores: list[float]) -> set[str]:
    """The ids scored strictly above the last one shown: the part of a top-k that ties at the
    cut cannot reorder (ties are broken by row locally, by the engine's order in Milvus)."""
    if len(ids) < TOP:
        return set(ids)
    return {i for i, s in zip(ids, scores, strict=True) if s > scores[-1] + 1e-6}


def ci(values) -> dict[str, float]:  # type: ignore[no-untyped-def]
    mean, lo, hi = bootstrap_ci(values)
    return {"mean": round(mean, 4), "lo": round(lo, 4), "hi": round(hi, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=None, help="index root (default: var/indexes)")
    ap.add_argument("--milvus-uri", default=None, help="an existing Milvus (default: start one)")
    args = ap.parse_args()
    base = Settings()
    root = private_copy(base, args.index or base.index_dir)
    local = open_retriever(base, root=root)
    if local.facets is None or local.lexical is None:
        raise SystemExit(f"{root}: the index lacks facet columns or a lexical arm; rebuild it")
    targets = load_targets()
    queries = list(targets)
    graded = [q for q in queries if any(g > 0 for g in targets[q].values())]

    with milvus_lite_server(TMP) if args.milvus_uri is None else _given(args.milvus_uri) as uri:
        settings = base.model_copy(update={"retrieval_backend": "milvus", "milvus_uri": uri})
        t0 = time.perf_counter()
        milvus = open_retriever(settings, version=local.version, root=root)
        publish_s = time.perf_counter() - t0
        result: dict = {
            "index_version": local.version,
            "products": local.manifest.count,
            "kind": local.manifest.kind,
            "queries": len(queries),
            "graded_queries": len(graded),
            "fusion": {
                "method": str(local.fusion.method),
                "rrf_k": local.fusion.rrf_k,
                "dense_weight": local.fusion.dense_weight,
                "lexical_weight": local.fusion.lexical_weight,
                "depth": local.fusion.depth,
            },
            "publish_seconds": round(publish_s, 1),
            "engine": "milvus-lite 3.2.2 server (pure Python; a test engine, not production)",
            "modes": {},
        }
        for mode in ("hybrid", "dense", "lexical"):
            want, s_local, t_local = ranked_ids(local, queries, mode, TOP)
            got, s_milvus, t_milvus = ranked_ids(milvus, queries, mode, TOP)
            # Both empty (no term known to the lexical arm) is agreement.
            overlap = [
                len(set(w) & set(g)) / max(len(w), len(g)) if (w or g) else 1.0
                for w, g in zip(want, got, strict=True)
            ]
            untied = [
                above_cut(w, sw) == above_cut(g, sg)
                for w, sw, g, sg in zip(want, s_local, got, s_milvus, strict=True)
            ]
            entry = {
                "overlap_at_20": {
                    "mean": round(float(np.mean(overlap)), 4),
                    "min": round(float(np.min(overlap)), 4),
                    "share_identical_sets": round(float(np.mean(np.isclose(overlap, 1.0))), 4),
                    "share_identical_order": round(
                        float(np.mean([w == g for w, g in zip(want, got, strict=True)])), 4
                    ),
                    "share_same_above_tied_cut": round(float(np.mean(untied)), 4),
                },
                "latency_ms_per_query": {
                    "local_p50": round(float(np.median(t_local)) * 1000, 2),
                    "milvus_p50": round(float(np.median(t_milvus)) * 1000, 2),
                },
            }
            index = {q: i for i, q in enumerate(queries)}
            n_local = [ndcg_at_k(want[index[q]], targets[q], 10) for q in graded]
            n_milvus = [ndcg_at_k(got[index[q]], targets[q], 10) for q in graded]
            diff = ci(np.subtract(n_milvus, n_local))
            entry["ndcg_at_10"] = {
                "local": ci(n_local),
                "milvus": ci(n_milvus),
                "paired_difference": diff,
                "within_paired_interval": diff["lo"] <= 0.0 <= diff["hi"],
            }
            result["modes"][mode] = entry
            print(mode, json.dumps(entry), flush=True)

        counts = np.bincount(local.facets.codes[BRAND][local.facets.codes[BRAND] >= 0])
        brand = local.facets.values[BRAND][int(counts.argmax())]
        got, _, _ = ranked_ids(milvus, queries, "hybrid", TOP, Filters(brand=(brand,)))
        brands = {local.facets.brand_of(local.row_of[pid]) for ids in got for pid in ids}
        result["brand_filter"] = {
            "brand": brand,
            "hits": sum(len(ids) for ids in got),
            "every_hit_admitted": brands <= {brand},
        }
        result["passes"] = {
            "overlap_at_20_ge_0_85": result["modes"]["hybrid"]["overlap_at_20"]["mean"] >= 0.85,
            "ndcg_within_paired_interval": result["modes"]["hybrid"]["ndcg_at_10"][
                "within_paired_interval"
            ],
            "brand_filter_on_every_hit": result["brand_filter"]["every_hit_admitted"],
        }
    write_json(OUT, result)
    print(json.dumps(result["passes"]), "→", OUT)


@contextmanager
def _given(uri: str):  # type: ignore[no-untyped-def]
    yield uri


if __name__ == "__main__":
    main()
