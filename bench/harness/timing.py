"""Timing: percentile summaries, a wall + CPU stopwatch, best of N.

Standard library only (see the package doc): the GPU benchmarks time with it too.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from types import TracebackType


def pct(samples: Sequence[float], q: float, ndigits: int | None = None) -> float | None:
    """The `q`-th percentile (linear interpolation, numpy's default); None without samples."""
    if not samples:
        return None
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    value = float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
    return value if ndigits is None else round(value, ndigits)


def percentiles(
    samples: Sequence[float],
    qs: Sequence[float] = (50, 99),
    *,
    scale: float = 1.0,
    ndigits: int | None = None,
    suffix: str = "_ms",
    mean: bool = False,
    maximum: bool = False,
) -> dict[str, float | None]:
    """``{"p50_ms": …, "p99_ms": …}`` of `samples` × `scale` (1000 turns seconds into ms),
    optionally with the mean and the maximum; None values when there are no samples."""
    xs = [x * scale for x in samples]
    out = {f"p{q:g}{suffix}": pct(xs, q, ndigits) for q in qs}
    if mean:
        out[f"mean{suffix}"] = _round(statistics.fmean(xs), ndigits) if xs else None
    if maximum:
        out[f"max{suffix}"] = _round(max(xs), ndigits) if xs else None
    return out


def _round(x: float, ndigits: int | None) -> float:
    return float(x) if ndigits is None else round(float(x), ndigits)


class Stopwatch:
    """Wall and CPU (this process) seconds of a block::

    with Stopwatch() as t:
        work()
    t.wall_s, t.cpu_s
    """

    wall_s: float
    cpu_s: float

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def best_of(
    fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None
) -> float:
    """The fastest of `repeats` runs of `fn`, in seconds (the least disturbed by other load).
    `sync` runs before and after each one (``torch.cuda.synchronize`` for GPU work)."""
    best = math.inf
    for _ in range(repeats):
        if sync is not None:
            sync()
        started = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        best = min(best, time.perf_counter() - started)
    return best
