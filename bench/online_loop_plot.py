"""The online loop's figure (bench/online_loop.py → bench/results/online_loop.png): served NDCG@10
and judged@10 over time with each update's decisions marked, and the examination curve the
propensity estimator recovered beside the simulator's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    evals = report["evaluations"]
    t = [e["t_min"] for e in evals]
    y = [e["ndcg@10"] for e in evals]
    err = np.array(
        [[e["ndcg@10"] - e["ci95"][0] for e in evals], [e["ci95"][1] - e["ndcg@10"] for e in evals]]
    )
    ax.errorbar(t, y, yerr=err, fmt="o-", color="tab:blue", capsize=3, label="served NDCG@10")
    if all("judged@10" in e for e in evals):  # runs before judged@10 was recorded lack it
        ax.plot(t, [e["judged@10"] for e in evals], "s:", color="tab:purple", label="judged@10")
    marks = {
        "comparing": ("tab:orange", "--", "comparison starts"),
        "promoted": ("tab:green", "-", "promoted (interleaving won)"),
        "rejected": ("tab:red", "-", "rejected"),
        "failed": ("black", ":", "update failed"),
    }
    used: set[str] = set()
    low = min(e["ci95"][0] for e in evals)
    for i, u in enumerate(report.get("updates", []), start=1):
        for status, at in u["statuses_seen_min"].items():
            if status not in marks:
                continue
            color, style, label = marks[status]
            if status == "rejected" and u["comparison"] is None:
                color, label = "tab:gray", "rejected by the offline gate"
            ax.axvline(at, color=color, ls=style, lw=1.2, label=None if label in used else label)
            used.add(label)
            ax.annotate(
                update_note(i, status, u),
                (at, low),
                rotation=90,
                fontsize=7,
                va="bottom",
                ha="right",
                color=color,
                bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
            )
    ax.set_xlabel("minutes since start")
    ax.set_ylabel(f"NDCG@10, {report['served']['queries']} Chorus validation queries")
    d = report["served"]["delta_end_vs_start"]
    ax.set_title(
        f"served NDCG@10 (95% CI); end − start {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    )
    high = max(max(e["ci95"][1], e.get("judged@10", 0.0)) for e in evals)
    ax.set_ylim(low - 0.01, high + 0.08)
    ax.legend(fontsize=8, loc="upper left", ncol=4)
    ranks = report["labels"]["propensity"]["ranks"]
    r = [x["rank"] for x in ranks]
    est = np.array([x["estimate"] for x in ranks])
    lo = np.array([x["lo"] if x["lo"] is not None else x["estimate"] for x in ranks])
    hi = np.array([x["hi"] if x["hi"] is not None else x["estimate"] for x in ranks])
    data = np.array([x["source"] != "prior" for x in ranks])
    sim_curve = (report.get("simulator") or {}).get("propensity_curve") or []
    bx.plot(range(1, len(sim_curve) + 1), sim_curve, "k--", label="simulator p(r)")
    r = np.array(r)
    bx.errorbar(
        r[data],
        est[data],
        yerr=[(est - lo)[data], (hi - est)[data]],
        fmt="o",
        color="tab:purple",
        capsize=3,
        label="recovered from swaps (95% CI)",
    )
    bx.plot(
        r[~data],
        est[~data],
        "o",
        mfc="none",
        color="tab:purple",
        label="prior-chained (no exploration there)",
    )
    q = report["labels"]["label_quality"]
    bx.set_title(
        f"examination propensity; Spearman vs judgments:\n"
        f"debiased {_rho(q['debiased'])}, plain {_rho(q['plain'])}",
        fontsize=10,
    )
    bx.set_xlabel("rank")
    bx.set_xlim(0.5, max(len(sim_curve), len(r)) + 0.5)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def update_note(i: int, status: str, u: dict[str, Any]) -> str:
    """What a marker says: the offline gate's delta, or the comparison's decision and tally."""
    gate = u["offline_gate"] or {}
    d = gate.get("delta_vs_baseline") or {}
    c = u["comparison"] or {}
    t = (c.get("decision") or {}).get("tally") or {}  # as decided (events may come later)
    if status == "comparing" or (status == "rejected" and not c):
        return f"update {i}: gate Δ {d.get('mean', 0):+.3f} (lo {d.get('lo', 0):+.3f})"
    return f"update {i}: {c.get('status')} {t.get('wins')}/{t.get('losses')}/{t.get('ties')}"


def _rho(q: dict[str, Any]) -> str:
    return "n/a" if q["spearman"] is None else f"{q['spearman']:.3f} ({q['pairs']} pairs)"
