"""What the console tests' server is seeded with, the way the trainer and a storefront write it:
the registry (three adapters: candidate, retired, rejected, so none is active and explain
rewrites with the base model; two finished runs whose `metrics.steps` rows have the trainer's
metrics.jsonl shape and whose gate is `trainer.online.gate.gate_decision`'s real output) and
traffic (searches and events through the API)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx

from service.db.engine import session_scope
from service.db.models import Adapter, utcnow
from service.repositories.runs import create_run, finish_run, get_run
from service.repositories.searches import add_searches


def metrics_steps(n: int) -> list[dict]:
    """Rows shaped like trainer/training/train.py's metrics.jsonl: a warm-start row, a step-0
    validation row, then one row per step (val_ndcg every 5 steps)."""
    rows: list[dict] = [
        {"step": 0, "phase": "warm_start", "kept": 3},
        {"step": 0, "val_ndcg": 0.41},
    ]
    for step in range(1, n + 1):
        row = {
            "step": step,
            "reward_mean": 0.35 + 0.02 * step,
            "reward_std": 0.05,
            "ndcg": 0.33 + 0.018 * step,
            "loss": 0.1 / step,
            "parse_rate": 1.0,
        }
        if step % 5 == 0:
            row["val_ndcg"] = 0.41 + 0.01 * step
        rows.append(row)
    return rows


def seed_registry(url: str) -> dict[str, str]:
    from trainer.online.gate import gate_decision

    passed = gate_decision([0.62, 0.55, 0.71, 0.60], [0.50, 0.41, 0.58, 0.49], None)
    failed = gate_decision([0.50, 0.40, 0.57, 0.48], [0.50, 0.41, 0.58, 0.49], None)
    assert passed["passed"] and not failed["passed"]
    now = utcnow()
    with session_scope(url) as s:
        promoted = create_run(s, "ospo", {"overrides": {"steps": 12}})
        rejected = create_run(s, "grpo", {"overrides": {}})
        ids = {"promoted": promoted.id, "rejected": rejected.id}
        for name, status, parent, gate in [
            ("ospo-20250101-000000-aaaa", "retired", None, passed),
            ("ospo-20250102-000000-bbbb", "candidate", "ospo-20250101-000000-aaaa", passed),
            ("grpo-20250103-000000-cccc", "rejected", "ospo-20250101-000000-aaaa", failed),
        ]:
            s.add(Adapter(
                name=name, path=f"/nonexistent/{name}", checksum="0" * 64,
                base_model="smollm2-135m-instruct", parent=parent, status=status,
                metrics={"gate": gate, "canary": {"ok": True, "latency_ms": 120.0,
                                                  "rewrite": "ceramic coffee mug"}},
                activated_at=now - timedelta(days=1) if status == "retired" else None,
                retired_at=now if status == "retired" else None,
            ))  # fmt: skip
    with session_scope(url) as s:
        for run_id, status, adapter, gate in [
            (ids["promoted"], "promoted", "ospo-20250102-000000-bbbb", passed),
            (ids["rejected"], "rejected", "grpo-20250103-000000-cccc", failed),
        ]:
            finish_run(
                s, run_id, status, adapter=adapter,
                metrics={"steps": metrics_steps(12), "gate": gate, "adapter": adapter,
                         "labelled_queries": 39, "train_queries": 31},
            )  # fmt: skip
            run = get_run(s, run_id)
            assert run is not None
            run.started_at = run.finished_at - timedelta(minutes=3)
    return ids


def seed_traffic(base: str, url: str) -> None:
    """Searches and events through the API, and one search that showed nothing (written the
    way the search log writes rows, since no query of this catalogue returns nothing)."""
    with httpx.Client(base_url=base, timeout=60) as c:
        for query in ["6 dining chairs", "6 dining chairs", "plants", "plants", "computers"]:
            r = c.post("/v1/search", json={"query": query, "k": 5})
            assert r.status_code == 200, r.text
            answer = r.json()
            if query == "plants":
                events = [
                    {"event_id": str(uuid.uuid4()), "search_id": answer["search_id"],
                     "product_id": answer["results"][1]["product_id"], "type": kind}
                    for kind in ("click", "add_to_cart")
                ]  # fmt: skip
                assert c.post("/v1/events", json=events).status_code == 200
    with session_scope(url) as s:
        add_searches(s, [{
            "id": str(uuid.uuid4()), "query": "zzqx nothing", "normalized_query": "zzqx nothing",
            "rewrite": "zzqx nothing", "rewrite_source": "none", "adapter": None, "k": 5,
            "product_ids": [], "scores": [], "latency_ms": 3.0,
        }])  # fmt: skip
