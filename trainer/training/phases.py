"""The named phases of one training step, so whoever runs a step decides how to time it.

``train_step`` (trainer/training/step.py) wraps each part of a step in ``with phase(name):``, in
this order (``sample_rollouts`` in trainer/training/rollout.py the first three):

    generate       ``model.generate``: P·G sampled completions
    decode         completion texts, parsed rewrites, token character offsets
    old_logprobs   log-probs of the sampled tokens from the logits ``generate`` returned
    reward         one batched call of the reward function on the rollouts' search texts
    attribution    OSPO only: every coalition of every rewrite valued in one batched call
    advantages     GRPO or OSPO token advantages
    update         reference log-probs (when needed), clipped surrogate, optimiser step

``untimed`` (the default) does nothing. ``PhaseTimes`` adds up wall seconds per phase, which is
what the trainer logs. bench/gpu_step.py also synchronises the GPU and records peak memory.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

PHASES = ("generate", "decode", "old_logprobs", "reward", "attribution", "advantages", "update")

Phase = Callable[[str], AbstractContextManager[object]]


def untimed(name: str) -> AbstractContextManager[None]:
    """The default ``phase``: no bookkeeping at all."""
    return contextlib.nullcontext()


class PhaseTimes:
    """A ``phase`` that adds up the wall seconds spent in each phase (``seconds[name]``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
