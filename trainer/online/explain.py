"""`GET /admin/explain`: the active policy's rewrite of a labelled query, segment by segment.

Runs on a worker (attribution lives in the trainer): greedy rewrite with the active adapter,
its reward (NDCG@10 against the query's labels over the serving index, hybrid retrieval), and
each added phrase's exact Shapley value (sampled Owen for long rewrites) of v(S) = R(query ⊕ S)
− R(query) — the same credit OSPO trains with: negative for a phrase that hurt.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np

from service.db.engine import session_scope
from service.errors import NoLabels
from service.normalize import normalize_query
from service.policy.models import resolve_policy_model
from service.repositories.adapters import active_adapter
from service.repositories.labels import targets_by_query
from service.retrieval.open import open_retriever
from service.settings import Settings
from trainer.method.attribution import attribute

_models: dict[tuple[str, str | None], tuple[Any, Any]] = {}
_lock = threading.Lock()


def _policy(model_path: Path, adapter: str | None) -> tuple[Any, Any]:
    from trainer.training.config import TrainConfig
    from trainer.training.policy import load_policy

    key = (str(model_path), adapter)
    with _lock:
        if key not in _models:
            _models.clear()  # one model in memory per worker process
            cfg = dataclasses.replace(TrainConfig(), warm_start=adapter)
            _models[key] = load_policy(model_path, cfg)
        return _models[key]


def explain_query(settings: Settings, query: str) -> dict[str, Any]:
    from service.rewriting.grounding import serving_prompt
    from trainer.training.reward import RewardModel
    from trainer.training.rollout import greedy_rollouts
    from trainer.training.step import coalition_values

    url = settings.resolved_database_url
    key = normalize_query(query)
    with session_scope(url) as s:
        targets = targets_by_query(s).get(key)
        act = active_adapter(s)
        adapter_name, adapter_path = (act.name, act.path) if act else (None, None)
    if not targets:
        raise NoLabels(f"no labels for query {query!r}: explain needs judged products")
    model_path = resolve_policy_model(settings)
    retriever = open_retriever(settings)
    tokenizer, model = _policy(model_path, adapter_path)
    prompt = serving_prompt(settings, retriever)
    [rollout] = greedy_rollouts(
        model, tokenizer, [query], max_new_tokens=prompt.max_tokens, prompt=prompt
    )
    reward = RewardModel(retriever, {key: targets}, k=10)
    text = rollout.search_text
    values = coalition_values(reward, {key: query}, prompt)
    att = attribute(
        rollout.rewrite or "",
        lambda texts: values([(t, key) for t in texts]),
        rng=np.random.default_rng(0),
    )
    return {
        "query": query,
        "adapter": adapter_name,
        "rewrite": text,
        "expansion": rollout.rewrite,
        "parsed": rollout.rewrite is not None,
        "reward_ndcg@10": float(reward.score([(text, key)])[0]),
        "raw_query_ndcg@10": float(reward.score([(query, key)])[0]),
        "estimator": att.estimator,
        "coalitions_evaluated": att.n_evaluations,
        "segments": [
            {"text": seg.text, "start": seg.start, "end": seg.end, "attribution": float(phi)}
            for seg, phi in zip(att.segments, att.phi, strict=True)
        ],
        # Σφ = R(query ⊕ additions) − R(query) for exact estimators
        "efficiency_gap": float(att.full_value - float(np.sum(att.phi))),
    }
