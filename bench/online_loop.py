"""Learning from shoppers, end to end: `ospo up` + `ospo simulate`, served NDCG@10 over time
→ bench/results/online_loop.json + online_loop.png.

    .venv/bin/python bench/online_loop.py --minutes 40

What runs, unattended, within ``--minutes`` of wall time (start to stop):

1. A fresh ``OSPO_DATA_DIR``, a private PostgreSQL schema and a Redis database of its own
   (``--embedded``: the embedded SQLite database and broker instead). The data folder is seeded
   with a copy of the serving index of ``var/indexes`` when there is one, so that bootstrap's
   index build reuses its vectors instead of embedding 19,798 products again (3–8 min here);
   everything else is what `make up` does on a first start.
2. `ospo up` (policy server, API, worker, promoter, beat under the supervisor) with the
   settings of ``stack_env``: updates train and gate on interaction labels only (the Chorus
   judgments stay in the database, unused by training), beat checks for new labels every
   minute, a small training recipe, exploration swaps on, interleaved comparison on.
3. ``ospo simulate --split all`` as the shoppers (seeded, paced): they search Chorus queries
   and click, cart and buy by the position-based model driven by the hidden judgments.
4. This script watches ``/admin/runs`` and ``/admin/comparisons``, and measures the served
   NDCG@10 on the Chorus validation judgments through HTTP (bench/http_quality.py's
   ``served_ndcg``) at the start, every ``--eval-every`` minutes, when a comparison starts,
   when it is decided (after a promotion: once the new adapter serves), and at the end.
5. At the end: label quality (Spearman of the debiased and of the plain interaction labels with
   the hidden judgments, trainer/online/interaction_labels.py as `ospo propensity` reports it), the
   propensity curve recovered vs the simulator's; then the stack is stopped (SIGTERM to the
   supervisor's process group) and the report and plot are written.

Documented decisions
--------------------
* The shoppers search every Chorus query (``--split all``), not only the training side. An
  update splits its labelled queries with the same hashed split as the evaluation (fraction
  0.3, seed 0, trainer/training/data.py); with interaction labels only and shoppers on the
  training side, its validation side is empty and every update fails ("not enough labelled queries
  to train and validate"). With every query shopped, an update trains on the training side and
  gates on the shoppers' labels of the validation side: training never sees a validation query, and
  the validation *judgments* never leave the simulator and this script.
* Evaluation searches cannot pollute the training signal: they send no events, so they create
  no interaction labels, credit no side of a comparison and feed no propensity estimate (all
  three are computed from events). They are logged like any search (user id ``bench-eval``);
  the validation queries are shopped anyway, so this changes no warm-up's head queries.
* What is measured is the active policy's ranking: an evaluation search the API happened to
  interleave (a comparison running) or show with an exploration swap is read back from the
  search log by its id and repeated (at most ``MAX_REPEATS`` times; the count is reported).
* Offline gate margin ``--gate-margin`` (default -0.02, a non-inferiority check): the gate
  scores rankings against interaction labels, which only ever label what the serving ranking
  showed, so a candidate that ranks anything new can only lose on them offline. The offline
  gate here refuses a candidate that is clearly worse, and the interleaved comparison on live
  traffic (99% interval, the default) decides promotion. ``--gate-margin 0`` is the default
  product setting.
* The shoppers examine rank r with p(r) = (1/r)^0.7 (``--eta``), unlike the estimator's prior
  (1/r)^1 that fills ranks without exploration data, so a recovered curve that matches the
  simulator's came from the randomised swaps, not from the prior.
* Paired deltas: per validation query, NDCG@10 after minus before, percentile bootstrap of the
  mean (service.retrieval.metrics.bootstrap_ci), as the offline gate does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from harness.results import loadavg, write_json
from harness.stack import OSPO, postgres_schema
from http_quality import CHORUS, judged_queries, served_ndcg
from online_loop_plot import plot
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from service.db.engine import get_engine, session_scope
from service.db.models import Search
from service.policy.server import free_port
from service.processes import GroupChild
from service.retrieval.metrics import MIN_JUDGED, bootstrap_ci, judged_at_k
from trainer.training.data import Example, load_file_examples

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_URL = os.environ.get("OSPO_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("OSPO_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
EVAL_USER = "bench-eval"
MAX_REPEATS = 12
POLL_S = 5.0
LIVE = ("queued", "running", "comparing")
REPORTED = ("OSPO_TRAIN", "OSPO_EXPLORE", "OSPO_INTERLEAVE", "OSPO_GATE")
# The recipe of each online update (TrainConfig, trainer/training/config.py): the rejection-sampling
# warm start does most of the learning on this CPU (docs/evaluation.md, quality), taught to answer
# NONE where no sample beat the raw query so that the candidate leaves such queries alone; then two
# small OSPO steps. About a quarter of the default recipe's rollouts.
RECIPE = {
    "rs_samples": 2,
    "rs_none": True,
    "rs_epochs": 2,
    "steps": 2,
    "group_size": 4,
    "prompts_per_step": 2,
}

console = Console()


# ---------------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------------


def seed_index(data_dir: Path) -> str | None:
    """Copy the serving version of var/indexes (vectors reused by bootstrap's build)."""
    src = ROOT / "var" / "indexes"
    current = src / "CURRENT"
    if not current.is_file():
        return None
    version = current.read_text().strip()
    if not (src / version / "text_hashes.json").is_file():
        return None
    dst = data_dir / "indexes"
    shutil.copytree(src / version, dst / version)
    (dst / "CURRENT").write_text(version)
    return version


def stack_env(args: argparse.Namespace, data_dir: Path, db_url: str | None) -> dict[str, str]:
    vllm_port = free_port()
    env = {
        "OSPO_DATA_DIR": str(data_dir),
        "OSPO_ADMIN_API_KEY": secrets.token_urlsafe(32),
        "OSPO_POLICY_MODEL": str(ROOT / "var" / "models" / "smollm2-135m-instruct"),
        "OSPO_VLLM_PORT": str(vllm_port),
        "OSPO_VLLM_URL": f"http://127.0.0.1:{vllm_port}",
        # learn from shoppers only; the Chorus judgments are the hidden truth
        "OSPO_TRAIN_LABEL_SOURCES": json.dumps(["interactions"]),
        "OSPO_TRAIN_EVERY_S": str(args.train_every),
        "OSPO_TRAIN_MIN_NEW_QUERIES": str(args.min_new_queries),
        "OSPO_TRAIN_OVERRIDES": json.dumps(json.loads(args.recipe)),
        "OSPO_GATE_MARGIN": str(args.gate_margin),
        "OSPO_EXPLORE_SHARE": str(args.explore_share),
        "OSPO_EXPLORE_POSITIONS": "5",
        "OSPO_INTERLEAVE_SHARE": str(args.interleave_share),
        "OSPO_INTERLEAVE_MIN_SEARCHES": str(args.interleave_min),
        "OSPO_INTERLEAVE_MAX_SEARCHES": str(args.interleave_max),
        "OSPO_INTERLEAVE_MAX_HOURS": str(args.interleave_hours),
        "OSPO_INTERLEAVE_CHECK_S": "15",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    if db_url is not None:
        env |= {"OSPO_DATABASE_URL": db_url, "OSPO_REDIS_URL": REDIS_URL}
    return env


def wait_for(what: str, probe, timeout: float, child: GroupChild) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not child.alive():
            raise RuntimeError(f"the stack exited while waiting for {what}:\n{child.tail()}")
        try:
            if probe():
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{what} not ready within {timeout:.0f} s:\n{child.tail()}")


# ---------------------------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------------------------


def logged_search(db_url: str, search_id: str, timeout: float = 15.0) -> Search:
    """The search log's row (written by a background writer: wait for it)."""
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(db_url) as s:
            row = s.get(Search, search_id)
            if row is not None:
                s.expunge(row)
                return row
        if time.monotonic() > deadline:
            raise TimeoutError(f"search {search_id} not in the log after {timeout} s")
        time.sleep(0.2)


def evaluate(
    http: httpx.Client, examples: list[Example], db_url: str, reason: str, t: float
) -> dict[str, Any]:
    """Served NDCG@10 (and judged@10) of every validation query, as the active policy ranks it."""
    scores: list[float] = []
    judged: list[float] = []
    adapters: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    repeated = 0
    for ex in examples:
        for _ in range(MAX_REPEATS):
            ndcg, answer = served_ndcg(http, ex, user_id=EVAL_USER)
            row = logged_search(db_url, answer["search_id"])
            if row.comparison_id is None and not row.explore_swapped:
                break
            repeated += 1
        scores.append(ndcg)
        judged.append(judged_at_k([h["product_id"] for h in answer["results"]], ex.targets, 10))
        adapters[str(answer["adapter"])] += 1
        sources[answer["rewrite_source"]] += 1
    mean, lo, hi = bootstrap_ci(scores)
    return {
        "t_min": round(t / 60, 2),
        "reason": reason,
        "ndcg@10": mean,
        "ci95": [lo, hi],
        "judged@10": float(np.mean(judged)),
        "reliable": bool(np.mean(judged) >= MIN_JUDGED),
        "adapters": dict(adapters),
        "rewrite_sources": dict(sources),
        "repeated_searches": repeated,
        "per_query": scores,
    }


def paired(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    d = np.subtract(after["per_query"], before["per_query"]).tolist()
    mean, lo, hi = bootstrap_ci(d)
    return {
        "mean": mean,
        "lo": lo,
        "hi": hi,
        "before_t_min": before["t_min"],
        "after_t_min": after["t_min"],
    }


def counts(db_url: str) -> dict[str, int]:
    from sqlalchemy import text

    out = {}
    with session_scope(db_url) as s:
        for name, sql in (
            ("searches", "SELECT count(*) FROM searches"),
            ("eval_searches", f"SELECT count(*) FROM searches WHERE user_id = '{EVAL_USER}'"),
            ("interleaved", "SELECT count(*) FROM searches WHERE comparison_id IS NOT NULL"),
            ("explored", "SELECT count(*) FROM searches WHERE explore_pair IS NOT NULL"),
            ("events", "SELECT count(*) FROM events"),
            (
                "interaction_labels",
                "SELECT count(*) FROM relevance_labels WHERE source = 'interactions'",
            ),
            (
                "interaction_labelled_queries",
                "SELECT count(DISTINCT normalized_query) FROM "
                "relevance_labels WHERE source = 'interactions'",
            ),
        ):
            out[name] = int(s.execute(text(sql)).scalar_one())
    return out


def label_report(db_url: str) -> dict[str, Any]:
    """Debiased and plain interaction labels vs the hidden judgments; the propensity curve."""
    from service.settings import Settings
    from trainer.online.interaction_labels import EventWeights, label_quality, mine
    from trainer.online.propensity import PropensityConfig

    defaults = Settings.model_fields
    weights = EventWeights(
        defaults["label_weight_click"].default,
        defaults["label_weight_add_to_cart"].default,
        defaults["label_weight_purchase"].default,
    )
    support = defaults["label_min_support"].default
    with session_scope(db_url) as s:
        debiased = mine(s, weights, support, "debiased", PropensityConfig())
        plain = mine(s, weights, support, "plain", PropensityConfig())
        auto = mine(s, weights, support, "auto", PropensityConfig())
    hidden = {
        (ex.key, pid): g for ex in load_file_examples(CHORUS, None) for pid, g in ex.targets.items()
    }
    assert debiased.propensity is not None
    return {
        "auto_resolves_to": auto.estimator,
        "label_quality": {
            "plain": label_quality(plain.labels, hidden),
            "debiased": label_quality(debiased.labels, hidden),
        },
        "propensity": debiased.propensity.as_dict(),
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Watch:
    """Polls the admin API; measures when a comparison starts and when it is decided."""

    def __init__(
        self, http: httpx.Client, key: dict[str, str], examples: list[Example], db_url: str
    ) -> None:
        self.http, self.key, self.examples, self.db_url = http, key, examples, db_url
        self.t0 = time.monotonic()
        self.evaluations: list[dict[str, Any]] = []
        self.first_seen: dict[tuple[str, str], float] = {}  # (run id, status) → minutes
        self.runs: list[dict[str, Any]] = []
        self.comparisons: dict[str, dict[str, Any]] = {}
        self.before: dict[str, dict[str, Any]] = {}  # comparison id → evaluation
        self.after: dict[str, dict[str, Any]] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    def evaluate(self, reason: str) -> dict[str, Any]:
        ev = evaluate(self.http, self.examples, self.db_url, reason, self.now())
        self.evaluations.append(ev)
        return ev

    def poll(self, say: Callable[[str], object]) -> None:
        self.runs = self.http.get("/admin/runs", headers=self.key).json()
        for r in self.runs:
            seen = (r["run_id"], r["status"])
            if seen not in self.first_seen:
                self.first_seen[seen] = round(self.now() / 60, 2)
                say(f"run {r['run_id'][:8]} {r['status']}")
        for c in self.http.get("/admin/comparisons", headers=self.key).json():
            new = c["id"] not in self.comparisons
            self.comparisons[c["id"]] = c
            if new:
                ev = self.before[c["id"]] = self.evaluate(f"comparison of {c['candidate']} starts")
                say(f"comparison of {c['candidate']} starts; served {ev['ndcg@10']:.4f}")
            if c["status"] != "running" and c["id"] not in self.after:
                if c["status"] == "won":
                    self.wait_served(c["candidate"], 180)
                ev = self.after[c["id"]] = self.evaluate(f"comparison {c['status']}")
                tally = c["decision"].get("tally")
                say(f"comparison {c['status']} ({tally}); served {ev['ndcg@10']:.4f}")

    def wait_served(self, adapter: str, timeout: float) -> None:
        """Until searches name `adapter` (each API process re-reads the active adapter)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if served_ndcg(self.http, self.examples[0], user_id=EVAL_USER)[1]["adapter"] == adapter:
                return
            time.sleep(1)

    def updates(self) -> list[dict[str, Any]]:
        """Per update: trigger, offline gate, comparison, served NDCG@10 before and after."""
        by_run = {c["run_id"]: c for c in self.comparisons.values()}
        out = []
        for r in sorted(self.runs, key=lambda r: r["created_at"]):
            m = r["metrics"] or {}
            gate = m.get("gate") or {}
            entry: dict[str, Any] = {
                "run_id": r["run_id"],
                "status": r["status"],
                "error": r["error"],
                "adapter": r["adapter"],
                "trigger": r["config"],
                "labelled_queries": m.get("labelled_queries"),
                "train_queries": m.get("train_queries"),
                "train_seconds": m.get("train_seconds"),
                "update_seconds": m.get("seconds"),
                "statuses_seen_min": {
                    status: t for (rid, status), t in self.first_seen.items() if rid == r["run_id"]
                },
                "offline_gate": {key: gate.get(key) for key in GATE_KEYS} if gate else None,
                "comparison": None,
            }
            if (c := by_run.get(r["run_id"])) is not None:
                entry["comparison"] = {
                    key: c[key]
                    for key in ("id", "status", "candidate", "baseline", "share", "max_searches")
                    + ("tally", "decision", "created_at", "decided_at")
                }
                before, after = self.before.get(c["id"]), self.after.get(c["id"])
                entry["served_before"] = brief(before)
                entry["served_after"] = brief(after)
                entry["served_delta"] = paired(before, after)
            out.append(entry)
        return out


GATE_KEYS = ("validation_queries", "candidate", "raw", "active", "baseline", "delta_vs_baseline")
GATE_KEYS += ("margin", "passed", "active_policy")


def brief(ev: dict[str, Any] | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {k: ev[k] for k in ("t_min", "reason", "ndcg@10", "ci95", "adapters")}


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    budget = args.minutes * 60

    def now() -> float:
        return time.monotonic() - t0

    work = Path(tempfile.mkdtemp(prefix="ospo_online_loop_"))
    data_dir = work / "var"
    data_dir.mkdir()
    drop_schema = db_url = None
    if not args.embedded:
        import redis

        db_url, drop_schema = postgres_schema(PG_URL, "ospo_bench")
        redis.Redis.from_url(REDIS_URL).flushdb()  # this benchmark's own database number
    seeded = seed_index(data_dir)
    env = stack_env(args, data_dir, db_url)
    db_url = db_url or f"sqlite:///{(data_dir / 'ospo.db').resolve()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    key = {"Authorization": f"Bearer {env['OSPO_ADMIN_API_KEY']}"}
    console.print(
        f"work folder {work}; database {'PostgreSQL' if drop_schema else 'SQLite'}; "
        f"index seeded from {seeded or '(nothing: bootstrap embeds)'}"
    )
    report: dict[str, Any] = {
        "setup": {
            "minutes": args.minutes,
            "rate": args.rate,
            "shopper_eta": args.eta,
            "seed": args.seed,
            "eval_every_min": args.eval_every,
            "database": "postgresql+redis" if drop_schema else "sqlite (embedded broker)",
            "index_seeded_from": seeded,
            "settings": {k: v for k, v in env.items() if k.startswith(REPORTED)},
            "eval_queries": "Chorus validation split (fraction 0.3, seed 0), judged",
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
        },
        "timeline_min": {},
    }
    tl = report["timeline_min"]
    stack = GroupChild(
        [OSPO, "up", "--port", str(port)], {**os.environ, **env}, work / "up.log", cwd=ROOT
    )
    sim: GroupChild | None = None
    http = httpx.Client(base_url=base, timeout=120)
    watch = Watch(http, key, judged_queries("val"), db_url)
    watch.t0 = t0
    try:
        ready = wait_for(
            "the API (bootstrap, index build)",
            lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200,
            max(60.0, budget * 0.5),
            stack,
        )
        tl["api_ready"] = round(now() / 60, 2)
        vllm = env["OSPO_VLLM_URL"]
        wait_for(
            "vLLM", lambda: httpx.get(f"{vllm}/health", timeout=5).status_code == 200, 600, stack
        )
        tl["policy_ready"] = round(now() / 60, 2)
        console.print(f"stack ready after {now() / 60:.1f} min (API {ready:.0f} s)")
        start = watch.evaluate("start (raw query)")
        console.print(f"served NDCG@10 at the start: {start['ndcg@10']:.4f}")
        # the shoppers stop ~3 min before the budget: the final measurement and the stop
        shop_s = max(60.0, budget - now() - 180)
        sim_out = work / "simulate.json"
        argv = [OSPO, "simulate", "--url", base, "--split", "all", "--rate", str(args.rate)]
        argv += ["--duration", f"{shop_s:.0f}", "--seed", str(args.seed), "--eta", str(args.eta)]
        argv += ["--out", str(sim_out), "--quiet"]
        sim = GroupChild(argv, {**os.environ, **env}, work / "simulate.log", cwd=ROOT)
        tl["shopping_started"] = round(now() / 60, 2)
        last_eval = now()
        columns = (
            TextColumn("[bold]online loop"),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
        )
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("", total=budget)

            def say(line: str) -> None:
                bar.console.print(f"[{now() / 60:5.1f} min] {line}")

            while sim.alive():
                time.sleep(POLL_S)
                watch.poll(say)
                if now() - last_eval >= args.eval_every * 60:
                    watch.evaluate("periodic")
                    last_eval = now()
                n = counts(db_url)
                live = [r["status"] for r in watch.runs if r["status"] in LIVE]
                bar.update(
                    task,
                    completed=min(now(), budget),
                    description=(
                        f"{n['searches']} searches, {n['events']} events, "
                        f"{n['interaction_labelled_queries']} labelled queries; "
                        f"{len(watch.runs)} runs ({live[0] if live else 'idle'}); served "
                        f"{watch.evaluations[-1]['ndcg@10']:.3f}"
                    ),
                )
        tl["shopping_ended"] = round(now() / 60, 2)
        end = watch.evaluate("end")
        watch.poll(console.print)
        report["updates"] = updates = watch.updates()
        report["simulator"] = json.loads(sim_out.read_text()) if sim_out.is_file() else None
        report["traffic"] = counts(db_url)
        report["labels"] = label_report(db_url)
        report["served"] = {
            "queries": len(watch.examples),
            "start": brief(start),
            "end": brief(end),
            "delta_end_vs_start": paired(start, end),
        }
        comparison = [u["comparison"] or {} for u in updates]
        report["goal"] = {
            "after_ge_before": end["ndcg@10"] >= start["ndcg@10"],
            "promotions_decided_by_interleaving": sum(c.get("status") == "won" for c in comparison),
            "updates": len(updates),
            "rejected_offline": sum(
                u["status"] == "rejected" and u["comparison"] is None for u in updates
            ),
            "rejected_by_interleaving": sum(
                c.get("status") in ("lost", "expired") for c in comparison
            ),
            "failed": sum(u["status"] == "failed" for u in updates),
            "unfinished": sum(u["status"] in LIVE for u in updates),
        }
    finally:
        report["evaluations"] = watch.evaluations
        if sim is not None:
            sim.stop(30)
        http.close()
        code = stack.stop(120)
        tl["stopped"] = round(now() / 60, 2)
        report["stack_stop"] = {
            "supervisor_exit": code,
            "api_port_closed": closed(port),
            "vllm_port_closed": closed(int(env["OSPO_VLLM_PORT"])),
        }
        logs = RESULTS / "tmp" / "online_loop_logs"
        shutil.rmtree(logs, ignore_errors=True)
        shutil.copytree(data_dir / "logs", logs, dirs_exist_ok=True)
        for name in ("up.log", "simulate.log"):
            if (work / name).is_file():
                shutil.copy(work / name, logs / name)
        if not args.keep:
            if drop_schema is not None:
                get_engine.cache_clear()
                drop_schema()
            shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = now()
    report["load_average"] = loadavg()
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="wall time, start to stop")
    ap.add_argument("--rate", type=float, default=3.0, help="shopper searches per second")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eta", type=float, default=0.7, help="the shoppers' p(r) = (1/r)^eta")
    ap.add_argument("--eval-every", type=float, default=5.0, help="minutes between evaluations")
    ap.add_argument("--train-every", type=int, default=60, help="OSPO_TRAIN_EVERY_S")
    ap.add_argument("--min-new-queries", type=int, default=10, help="OSPO_TRAIN_MIN_NEW_QUERIES")
    ap.add_argument("--recipe", default=json.dumps(RECIPE), help="OSPO_TRAIN_OVERRIDES (JSON)")
    ap.add_argument("--gate-margin", type=float, default=-0.02, help="OSPO_GATE_MARGIN")
    ap.add_argument("--explore-share", type=float, default=0.2, help="OSPO_EXPLORE_SHARE")
    ap.add_argument("--interleave-share", type=float, default=0.5)
    ap.add_argument("--interleave-min", type=int, default=30, help="engaged searches first")
    ap.add_argument("--interleave-max", type=int, default=300, help="traffic budget")
    ap.add_argument("--interleave-hours", type=float, default=0.1, help="time budget (hours)")
    ap.add_argument("--embedded", action="store_true", help="SQLite + embedded broker")
    ap.add_argument("--keep", action="store_true", help="keep the work folder and PG schema")
    ap.add_argument("--out", type=Path, default=RESULTS / "online_loop.json")
    args = ap.parse_args()
    report = run(args)
    for e in report["evaluations"]:
        e["per_query"] = [round(x, 6) for x in e["per_query"]]
    write_json(args.out, json.loads(json.dumps(report, default=str)), indent=1)
    plot(report, args.out.with_suffix(".png"))
    console.print_json(data={k: report[k] for k in ("served", "goal", "stack_stop", "wall_s")})
    console.print(f"written {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
