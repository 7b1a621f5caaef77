"""How cost grows with the catalogue → bench/results/scale.json + scale.png.

Synthetic catalogues recombined from the 19,406 Open Icecat products at 20k, 100k, 300k and 1M
products, each indexed as the service indexes (``write_index``: FAISS, BM25, facet columns) on
flat and HNSW, then opened by a fresh process as an API process opens it (``open_retriever``):

* build: seconds of the facet columns, of the rest of ``write_index`` (FAISS flat, BM25, files),
  and of the HNSW graph (built once more for the HNSW version, whose other files are the flat
  version's); the embedding time is N / 800 texts/s, MiniLM on this machine's 2 cores alone
  (DESIGN.md §3; the rate measured during the run, niced on a loaded machine, is kept beside it);
* memory: RSS of one API process holding the version (the embedder alone measured apart), then
  two such processes side by side: what the second adds (its private pages) and what the two
  share (file pages mapped by both: the BM25 matrices, embeddings.npy), from smaps_rollup; also
  the flat index read with ``faiss.IO_FLAG_MMAP_IFC`` (shared codes), measured as an option;
* disk: bytes per file of the version folder;
* latency of the retrieval stage (query embedding, both arms, fusion: `SearchBatcher`, as the
  API calls it) over the 116 Chorus queries, p50/p99 at concurrency 1 and 8 (8 clients in a
  loop), for a plain hybrid search, with a brand filter (the most common brand; its share of
  the rows is reported) and with facet counting (default facets and price stats over the
  candidates).

Synthetic products: product j < 19,406 is an Icecat product as is; above, base product a
(cycled) takes the brand of a donor b (also in its title), b's colour where both have one, its
price × U(0.8, 1.25) and a model code with a variant suffix. Embeddings are *recombined*, not
computed: normalise(0.8·e_a + 0.2·e_b) of the real MiniLM embeddings of a and b (embedding 1M
texts on this shared 2-core machine would take hours). ``recombination`` in the JSON checks that
this does not change search cost: cosine of recombined vs real embeddings of 500 synthetic
texts, and dense flat/HNSW time and HNSW recall on 19,406 recombined vs the 19,406 real vectors.

    nice -n 15 .venv/bin/python bench/scale.py run [--sizes 20000 100000 300000 1000000]
    .venv/bin/python bench/scale.py plot      # the PNG from the JSON
Results are written after every size, so a run cut short keeps what finished.

This file drives the run and draws the figure; scale_catalog.py makes the catalogues and their
versions, scale_probe.py measures a version's memory and latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import faiss  # noqa: E402
from harness.results import RESULTS, log, machine, pyplot, save_figure, write_json  # noqa: E402
from scale_catalog import (  # noqa: E402
    TMP,
    build_flat,
    build_hnsw,
    demo_vectors,
    embed_throughput,
    icecat_products,
    search_cost_check,
)
from scale_probe import hold, measure_memory, probe, probe_all  # noqa: E402

OUT = RESULTS
SIZES = (20_000, 100_000, 300_000, 1_000_000)
REFERENCE_EMBED_RATE = 800.0  # MiniLM texts/s on this machine's 2 cores alone (DESIGN.md §3)


def child(*args: str) -> dict[str, Any]:
    """Run ``scale.py *args`` in a fresh process; its last stdout line is a JSON object."""
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def recombination_check() -> None:
    """Re-measure the recombination check alone and store it in scale.json."""
    path = OUT / "scale.json"
    result = json.loads(path.read_text())
    products = icecat_products()
    result.setdefault("recombination", {})["search_cost"] = search_cost_check(
        products, demo_vectors(products)
    )
    save(result)


# ---------------------------------------------------------------- orchestration


def save(result: dict[str, Any]) -> None:
    write_json(OUT / "scale.json", result)


def run(sizes: list[int], repeats: int) -> None:
    """Phase 1: every size flat (cheap to build); phase 2: every size HNSW (the graph is the
    slow part), so a run cut short still has the whole flat curve."""
    path = OUT / "scale.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    result.setdefault("sizes", {})
    result["machine"] = machine(
        load_avg_at_start=os.getloadavg(),
        faiss=faiss.__version__,
        note="2 cores shared with other jobs; latencies are comparable within one run",
    )
    products = icecat_products()
    vectors = demo_vectors(products)
    if "recombination" not in result:
        result["recombination"] = {
            **embed_throughput(products, vectors),
            "search_cost": search_cost_check(products, vectors),
        }
        save(result)
    if "embedder_only_memory" not in result:
        only = TMP / "embedder-only"
        only.mkdir(parents=True, exist_ok=True)
        result["embedder_only_memory"] = measure_memory(only, [])
        save(result)
    rate = result["recombination"]["texts_per_s"]
    for n in sizes:
        work = TMP / f"n{n}"
        shutil.rmtree(work, ignore_errors=True)
        log(f"{n}: flat build")
        entry = child("build-flat", "--n", str(n), "--work", str(work))
        entry["embed_estimate_s"] = round(n / rate, 1)
        entry["build_total_flat_s"] = round(
            entry["facets_s"] + entry["write_index_flat_s"] + entry["embed_estimate_s"], 1
        )
        result["sizes"][str(n)] = entry
        save(result)
        measure(entry, "flat", work / "flat" / "indexes", repeats, log, latency=False)
        save(result)
    finish(list(SIZES), repeats)


def finish(sizes: list[int], repeats: int) -> None:
    """After the flat phase of ``run``: latency of every flat version interleaved in one
    process; then HNSW per size (graph, memory, latency) and the HNSW versions interleaved."""
    path = OUT / "scale.json"
    result = json.loads(path.read_text())

    def interleaved(kind: str) -> None:
        have = [n for n in sizes if (TMP / f"n{n}" / kind / "indexes" / "CURRENT").exists()]
        log(f"{kind}: interleaved latency of {have}")
        roots = [str(TMP / f"n{n}" / kind / "indexes") for n in have]
        got = child("probe-all", "--repeats", str(repeats), "--roots", *roots)
        for n in have:
            result["sizes"][str(n)][kind]["latency_interleaved"] = got[str(n)]
        save(result)

    interleaved("flat")
    for n in sizes:
        work = TMP / f"n{n}"
        entry = result["sizes"][str(n)]
        if "hnsw" in entry or not (work / "flat").exists():
            continue
        log(f"{n}: hnsw graph")
        entry.update(child("build-hnsw", "--work", str(work)))
        save(result)
        measure(entry, "hnsw", work / "hnsw" / "indexes", repeats, log, latency=False)
        save(result)
        if n >= 300_000:  # the graph takes longest from here: keep what finished
            interleaved("hnsw")
    plot(result)


def measure(
    entry: dict[str, Any], kind: str, root: Path, repeats: int, log, latency: bool = True
) -> None:  # type: ignore[no-untyped-def]
    log(f"{entry['products']} {kind}: memory")
    entry[kind] = {"memory": measure_memory(root, [])}
    try:  # faiss may refuse to map an index kind's codes
        entry[kind]["memory_mmap_codes"] = measure_memory(root, ["--mmap-flat"])
    except (RuntimeError, subprocess.SubprocessError) as e:
        entry[kind]["memory_mmap_codes"] = {"error": str(e)[:300]}
    if latency:
        log(f"{entry['products']} {kind}: latency")
        entry[kind].update(child("probe", "--root", str(root), "--repeats", str(repeats)))


def finalize(result: dict[str, Any]) -> None:
    """Build totals with embedding at the reference rate: the rate measured during a run on
    this shared machine (at nice 15, load ~10) says more about the other jobs than about
    MiniLM, so totals use MiniLM's rate on this machine's 2 cores alone (DESIGN.md §3)."""
    measured = result.get("recombination", {}).get("texts_per_s")
    result["embedding"] = {
        "reference_texts_per_s": REFERENCE_EMBED_RATE,
        "measured_here_texts_per_s": measured,
        "note": "totals use the reference rate; the measured one ran niced on a loaded machine",
    }
    for entry in result["sizes"].values():
        for kind in ("flat", "hnsw"):
            m = entry.get(kind, {})
            if "memory_mmap_codes" in m:  # measured as: a private copy, and mapped
                m["memory_read_private"] = m["memory"]
                m["memory"] = m.pop("memory_mmap_codes")
            if "latency" in m:  # a run of its own; the interleaved one is comparable
                m["latency_separate_run"] = m.pop("latency")
        n = entry["products"]
        entry["embed_estimate_s"] = round(n / REFERENCE_EMBED_RATE, 1)
        entry["build_total_flat_s"] = round(
            entry["facets_s"] + entry["write_index_flat_s"] + entry["embed_estimate_s"], 1
        )
        if "hnsw_graph_s" in entry:
            entry["build_total_hnsw_s"] = round(
                entry["build_total_flat_s"] + entry["hnsw_graph_s"], 1
            )


def plot(result: dict[str, Any] | None = None) -> None:
    plt = pyplot()
    result = result or json.loads((OUT / "scale.json").read_text())
    finalize(result)
    save(result)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for kind, style in (("flat", "-"), ("hnsw", "--")):
        sizes = sorted(
            int(n) for n, e in result["sizes"].items() if "latency_interleaved" in e.get(kind, {})
        )
        for key, colour in (
            ("plain@c1", "C0"),
            ("plain@c8", "C1"),
            ("brand_filter@c1", "C2"),
            ("facets@c1", "C3"),
        ):
            ys = [
                result["sizes"][str(n)][kind]["latency_interleaved"][key]["p50_ms"] for n in sizes
            ]
            axes[0].plot(sizes, ys, style, color=colour, marker="o", label=f"{kind} {key}")
        mem = [result["sizes"][str(n)][kind] for n in sizes]
        rss = [m["memory"]["one_process"]["rss_mib"] for m in mem]
        add = [m["memory"]["second_process_adds_mib"] for m in mem]
        before = [m["memory_read_private"]["second_process_adds_mib"] for m in mem]
        axes[1].plot(sizes, rss, style, color="C0", marker="o", label=f"{kind}: one process RSS")
        axes[1].plot(sizes, add, style, color="C1", marker="o", label=f"{kind}: a second adds")
        axes[1].plot(
            sizes, before, style, color="C2", marker="o", label=f"{kind}: a second adds (copied)"
        )
    for kind, style in (("flat", "-"), ("hnsw", "--")):
        key = f"build_total_{kind}_s"
        sizes = sorted(int(n) for n, e in result["sizes"].items() if key in e)
        minutes = [result["sizes"][str(n)][key] / 60 for n in sizes]
        axes[2].plot(sizes, minutes, style, marker="o", label=f"{kind} (embedding estimated)")
    for ax, title, unit in (
        (axes[0], "retrieval p50", "ms"),
        (axes[1], "API process memory", "MiB"),
        (axes[2], "index build", "minutes"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("products")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, OUT / "scale.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    r.add_argument("--repeats", type=int, default=2, help="rounds of the 116 queries")
    h = sub.add_parser("hold")
    h.add_argument("--root", type=Path, required=True)
    h.add_argument("--mmap-flat", action="store_true")
    sub.add_parser("plot")
    sub.add_parser("embed-demo")
    sub.add_parser("recombination")
    pa = sub.add_parser("probe-all")
    pa.add_argument("--roots", type=Path, nargs="+", required=True)
    pa.add_argument("--repeats", type=int, default=2)
    f = sub.add_parser("finish")
    f.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    f.add_argument("--repeats", type=int, default=2)
    b = sub.add_parser("build-flat")
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--work", type=Path, required=True)
    g = sub.add_parser("build-hnsw")
    g.add_argument("--work", type=Path, required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--root", type=Path, required=True)
    pr.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.sizes, args.repeats)
    elif args.cmd == "hold":
        hold(args.root, args.mmap_flat)
    elif args.cmd == "build-flat":
        print(json.dumps(build_flat(args.n, args.work)))
    elif args.cmd == "build-hnsw":
        print(json.dumps(build_hnsw(args.work)))
    elif args.cmd == "probe-all":
        print(json.dumps(probe_all(args.roots, args.repeats)))
    elif args.cmd == "finish":
        finish(args.sizes, args.repeats)
    elif args.cmd == "recombination":
        recombination_check()
    elif args.cmd == "probe":
        print(json.dumps(probe(args.root, args.repeats)))
    elif args.cmd == "embed-demo":
        demo_vectors(icecat_products())
    else:
        plot()


if __name__ == "__main__":
    main()
