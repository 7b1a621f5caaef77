"""PNG curves of a training run's ``metrics.jsonl`` (matplotlib, Agg backend, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# (title, [metric keys drawn on the same axes])
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward (NDCG@k of sampled rewrites)", ("reward_mean", "ndcg")),
    ("validation NDCG@k (greedy)", ("val_ndcg",)),
    ("loss", ("loss",)),
    ("KL to base / clip fraction", ("kl", "clip_frac")),
    ("parse rate", ("parse_rate",)),
    ("seconds per step", ("step_s", "generate_s", "update_s", "attribution_s")),
)


def plot_metrics(rows: Sequence[dict[str, float]], path: Path, title: str = "") -> Path:
    """Draw the panels that have data; ``reward_mean`` gets a ±std band. Returns ``path``."""
    panels = [(t, keys) for t, keys in PANELS if any(k in r for r in rows for k in keys)]
    cols = 2
    n_rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(11, 3.2 * n_rows), squeeze=False)
    for ax, (panel_title, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
            if key == "reward_mean":
                std = [r.get("reward_std", 0.0) for r in rows if key in r]
                lo = [y - s for y, s in zip(ys, std, strict=True)]
                hi = [y + s for y, s in zip(ys, std, strict=True)]
                ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
