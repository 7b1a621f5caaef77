"""One online update, as the Celery task runs it: labels → OSPO → gate → promote (or not).

The order of events is what keeps serving safe:
1. take the run's database lease (a redelivered or concurrent task cannot train twice);
2. train into `<data_dir>/runs/<run_id>/` — never servable: only registered adapters are;
3. score candidate, active policy and raw query (greedy rewrites, hybrid retrieval) on
   held-out labelled queries;
4. register the candidate (files copied, checksum, row); it passes the offline gate only when
   its paired bootstrap lower bound over the better of active and raw is above
   `OSPO_GATE_MARGIN` (trainer/online/gate.py);
4b. with `OSPO_INTERLEAVE_SHARE` > 0, a candidate that passed is loaded and its head-query
   rewrites stored, and an interleaved comparison with what serves starts on live traffic
   (service/services/comparisons.py): the run waits in `comparing`, and beat promotes or
   rejects it when the comparison decides. With 0 it is promoted at once: load, canary, warm
   the rewrite store, flip (service/services/promotion.py); a failed promotion leaves the
   previous policy serving;
5. record everything on the run: config, per-step metrics, gate numbers, outcome.
A worker killed mid-training stops renewing the lease; the next task or beat marks the run
failed, and nothing it half-wrote was ever registered.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from service.adapters.registry import register_adapter
from service.db.engine import session_scope
from service.domain import AdapterStatus, RunStatus
from service.policy.models import resolve_policy_model
from service.repositories.adapters import active_adapter, set_status
from service.repositories.labels import count_labelled_queries
from service.repositories.runs import (
    acquire_lease,
    expire_stale_runs,
    finish_run,
    get_run,
    last_finished_run,
    renew_lease,
)
from service.retrieval.index import Retriever
from service.retrieval.open import open_retriever
from service.services.comparisons import start_comparison
from service.services.promotion import prepare_candidate, promote
from service.settings import Settings
from trainer.online.interaction_labels import SOURCE as INTERACTIONS
from trainer.online.interaction_labels import EventWeights, refresh_interaction_labels
from trainer.training.data import load_db_examples, restrict_to_index, split_examples

log = logging.getLogger(__name__)

# POST /admin/train body field -> TrainConfig field
OVERRIDES = {
    "steps": "steps",
    "group_size": "group_size",
    "seed": "seed",
    "warm_start_samples": "rs_samples",
}


def refresh_labels(settings: Settings) -> int:
    weights = EventWeights(
        settings.label_weight_click, settings.label_weight_add_to_cart,
        settings.label_weight_purchase,
    )  # fmt: skip
    with session_scope(settings.resolved_database_url) as s:
        return refresh_interaction_labels(
            s, weights, settings.label_min_support, settings.label_estimator
        )


def labelled_query_count(session: Session) -> int:
    """Queries with interaction labels: the online signal the schedule waits for. Dataset
    judgments are ingested by hand, and an operator trains on them with POST /admin/train."""
    return count_labelled_queries(session, INTERACTIONS)


def last_labelled_count(session: Session) -> int:
    run = last_finished_run(session)
    return int((run.metrics or {}).get("labelled_queries", 0)) if run else 0


class LeaseKeeper:
    """Renews the run's lease in the background; `lost` is set if renewal ever fails."""

    def __init__(self, url: str, run_id: str, owner: str, ttl: timedelta) -> None:
        self.url, self.run_id, self.owner, self.ttl = url, run_id, owner, ttl
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl.total_seconds() / 4):
            try:
                with session_scope(self.url) as s:
                    if not renew_lease(s, self.run_id, self.owner, self.ttl):
                        self.lost.set()
                        return
            except Exception as e:  # noqa: BLE001 - a DB blip: try again next tick
                log.warning("lease renewal failed: %s", e)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _gate(
    settings: Settings,
    model_path: Path,
    retriever: Retriever,
    val: list,
    candidate: Path,
    active: Path | None,
    config: Any,
) -> dict[str, Any]:
    """Per-query greedy NDCG@10 of candidate, active policy and raw query → ``gate_decision``.

    The active policy is the active adapter; with none, it is the raw query (the policy is not
    called), or the base model when ``serve_base_policy`` is on.
    """
    import dataclasses

    from trainer.online.gate import gate_decision
    from trainer.training.policy import load_policy
    from trainer.training.reward import RewardModel
    from trainer.training.train import greedy_pairs, reward_entry, training_prompt

    prompt = training_prompt(config, retriever, [ex.query for ex in val])
    reward = RewardModel(
        retriever, {ex.key: ex.targets for ex in val}, k=10,
        **reward_entry(config, prompt, val),
    )  # fmt: skip
    policies = {"candidate": candidate}
    if active is not None or settings.serve_base_policy:
        policies["active"] = active
    pairs: dict[str, list[tuple[str, str]]] = {"raw": [(ex.query, ex.key) for ex in val]}
    for label, path in policies.items():
        cfg = dataclasses.replace(config, warm_start=str(path) if path else None)
        tokenizer, model = load_policy(model_path, cfg)
        pairs[label] = greedy_pairs(model, tokenizer, val, cfg, prompt)
        del model
    scores = {label: reward.score(p) for label, p in pairs.items()}
    gate = gate_decision(
        scores["candidate"], scores["raw"], scores.get("active"), margin=settings.gate_margin,
        judged={label: reward.judged(p) for label, p in pairs.items()},
    )  # fmt: skip
    gate["grades"] = str(settings.train_grades)
    gate["active_policy"] = (
        str(active) if active is not None else ("base" if "active" in scores else "raw")
    )
    gate["retrieval_mode"] = str(reward.retrieval)
    gate["expansion_entry"] = str(reward.entry)
    return gate


def run_update(settings: Settings, run_id: str, owner: str) -> dict[str, Any]:
    url = settings.resolved_database_url
    ttl = timedelta(seconds=settings.train_lease_ttl_s)
    with session_scope(url) as s:
        expire_stale_runs(s)
        run = get_run(s, run_id)
        if run is None:
            return {"skipped": f"unknown run {run_id}"}
        if run.status in (*RunStatus.finished(), RunStatus.comparing):
            return {"skipped": f"run already {run.status}"}
        algorithm, overrides = run.algorithm, dict((run.config or {}).get("overrides", {}))
    with session_scope(url) as s:
        acquired = acquire_lease(s, run_id, owner, ttl)
    if not acquired:
        with session_scope(url) as s:
            run = get_run(s, run_id)
            if run is not None and run.status == RunStatus.running:
                return {"skipped": "this run is being trained by another worker"}
            finish_run(s, run_id, RunStatus.failed, error="another training run holds the lease")
        return {"skipped": "another training run holds the lease"}

    workdir = settings.data_dir / "runs" / run_id
    started = time.perf_counter()
    try:
        with LeaseKeeper(url, run_id, owner, ttl) as lease:
            outcome = _train_gate_promote(settings, run_id, algorithm, overrides, workdir)
            if lease.lost.is_set():
                raise RuntimeError("lost the training lease mid-run")
        outcome["seconds"] = time.perf_counter() - started
        with session_scope(url) as s:
            finish_run(
                s, run_id, outcome.pop("status"), metrics=outcome, adapter=outcome.get("adapter")
            )
        return outcome
    except BaseException as e:
        with session_scope(url) as s:
            finish_run(
                s,
                run_id,
                RunStatus.failed,
                error=f"{type(e).__name__}: {e}"[:2000],
                metrics={"seconds": time.perf_counter() - started},
            )
        raise
    finally:
        # The working copy is never served; the registry holds its own copy.
        shutil.rmtree(workdir / "adapter", ignore_errors=True)


def _train_gate_promote(
    settings: Settings, run_id: str, algorithm: str, overrides: dict[str, Any], workdir: Path
) -> dict[str, Any]:
    from trainer.training.config import TrainConfig
    from trainer.training.config_options import config_from_overrides
    from trainer.training.train import train

    url = settings.resolved_database_url
    retriever = open_retriever(settings)
    examples = restrict_to_index(
        load_db_examples(url, settings.train_label_sources, settings.train_grades),
        retriever.row_of,
    )
    train_ex, val_ex = split_examples(examples, settings.train_val_fraction, seed=0)
    if len(train_ex) < 1 or len(val_ex) < 1:
        raise ValueError(f"not enough labelled queries to train and validate ({len(examples)})")
    val_ex = val_ex[: settings.train_max_val_queries]
    with session_scope(url) as s:
        act = active_adapter(s)
        active_name, active_path = (act.name, Path(act.path)) if act else (None, None)
        labelled = labelled_query_count(s)
    model_path = resolve_policy_model(settings)
    # TrainConfig's defaults are the online recipe; the deployment (OSPO_TRAIN_OVERRIDES) and
    # then the request may change fields (an unknown name is refused).
    config = config_from_overrides(
        TrainConfig,
        {
            "torch_threads": settings.train_torch_threads,
            # what serving will show the adapter, and how its additions will enter retrieval
            "prompt_version": settings.policy_prompt,
            "expansion_entry": settings.expansion_entry,
            **settings.train_overrides,
            "algo": algorithm,
            "warm_start": str(active_path) if active_path else None,
            **{field: int(overrides[key]) for key, field in OVERRIDES.items() if key in overrides},
        },
    )
    result = train(config, retriever, train_ex, model_path, workdir, progress=False)
    gate = _gate(settings, model_path, retriever, val_ex, result.adapter_dir, active_path, config)
    name = f"{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id[:8]}"
    register_adapter(
        url,
        settings.adapters_dir,
        name,
        result.adapter_dir,
        str(model_path),
        parent=active_name,
        metrics={"gate": gate, "run_id": run_id},
    )
    summary: dict[str, Any] = {
        "adapter": name,
        "parent": active_name,
        "labelled_queries": labelled,
        "train_queries": len(train_ex),
        "gate": gate,
        "steps": result.metrics,
        "train_seconds": result.seconds,
        "config": asdict(config),
        "plots": sorted(str(p) for p in workdir.glob("*.png")),
    }
    if not gate["passed"]:
        with session_scope(url) as s:
            set_status(s, name, AdapterStatus.rejected)
        return {**summary, "status": RunStatus.rejected}
    if settings.interleave_share > 0:
        summary["prepared"] = prepare_candidate(settings, name)
        summary["comparison_id"] = start_comparison(settings, run_id, name, active_name)
        return {**summary, "status": RunStatus.comparing}
    try:
        summary["promotion"] = promote(settings, name)
    except Exception as e:  # noqa: BLE001 - previous adapter keeps serving
        summary["promotion_error"] = str(e)
        raise RuntimeError(
            f"promotion of {name} failed; the previous adapter keeps serving: {e}"
        ) from e
    return {**summary, "status": RunStatus.promoted}
