"""The state of one GPU benchmark run (bench/gpu_step.py, bench/gpu_check.py).

The script's ``main`` sets ``ARGS`` (its parsed options: ``out``, ``budget_s``, ``tiny``, the
TrainConfig as ``config``), ``DEVICE`` and ``DTYPE``; the modules the run uses read them from
here. Also the run's clock and time budget, the results writer (harness.results.write_json,
rewritten after every configuration so a run cut short keeps what finished), the step's
``Phases`` hook and the device helpers every timed section uses. Imports torch, numpy,
transformers, peft and the trainer's phase timer only: this runs on the lent GPU machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import platform
import time
import traceback
from collections.abc import Iterator
from typing import Any

import numpy as np
import peft
import torch
import transformers
from harness.results import write_json

from trainer.training.phases import PhaseTimes

OOM_ERRORS: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    torch.cuda.OutOfMemoryError,
)
GIB = 1024**3

ARGS = argparse.Namespace()  # the script's options, set by its main
DEVICE = torch.device("cpu")
DTYPE = torch.float32
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def over_budget() -> bool:
    return elapsed() > ARGS.budget_s


def write(state: dict[str, Any]) -> None:
    state["elapsed_s"] = r(elapsed(), 1)
    write_json(ARGS.out, state)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 3)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Phases(PhaseTimes):
    """The step's ``phase`` hook: seconds synchronised with the GPU, each phase's peak GPU memory
    and what the retrieval engine counted while it ran (``RetrievalEngine.stats``)."""

    def __init__(self, device: torch.device, engine: Any) -> None:
        super().__init__()
        self.device, self.engine = device, engine
        self.peak: dict[str, float | None] = {}
        self.engine_stats: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        sync(self.device)
        reset_peak(self.device)
        self.engine.stats.clear()
        with super().__call__(name):
            yield
            sync(self.device)
        self.peak[name] = peak_gib(self.device)
        self.engine_stats[name] = dict(self.engine.stats)


def versions() -> dict[str, str | None]:
    """What a GPU result depends on besides the card."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "numpy": np.__version__,
    }


def error_record(exc: BaseException) -> dict[str, str]:
    kind = "oom" if isinstance(exc, OOM_ERRORS) else "error"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": kind, "error": f"{type(exc).__name__}: {exc}"[:500], "traceback": tb[-3000:]}


def r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)
