"""Where training runs: the one resolver of ``TrainConfig.device`` / ``TrainConfig.dtype``.

Every process that trains or scores a policy (the online update, ``ospo train``, ``ospo eval``,
the warm start, explain, the benchmarks) asks ``resolve_placement`` and nothing else, so a GPU
worker and a CPU laptop differ only in what this returns:

    device  auto → cuda when torch sees a GPU, else cpu;  cpu;  cuda (an error without a GPU)
    dtype   auto → bfloat16 on a GPU that supports it (float16 is never chosen: it needs loss
            scaling, which the trainer does not do), float32 otherwise; or named explicitly

On a CPU-only machine ``auto`` is exactly ``cpu``/``float32``, the path the project always ran
(tests/test_device.py holds it to the numbers it gave before devices existed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

DeviceName = Literal["auto", "cpu", "cuda"]
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class Placement:
    """A resolved device and the dtype of the policy's frozen base weights on it."""

    device: torch.device
    dtype: torch.dtype

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def resolve_placement(
    device: DeviceName | str = "auto", dtype: DTypeName | str = "auto"
) -> Placement:
    """The device and dtype that ``device``/``dtype`` (TrainConfig's fields) name here.

    Raises ValueError for ``cuda`` on a machine where torch sees no GPU, and for a dtype the
    resolved device cannot train in (bfloat16 on a GPU without it).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    has_gpu = torch.cuda.is_available()
    if device == "cuda" and not has_gpu:
        raise ValueError("device 'cuda' asked for, but torch sees no GPU (a CPU build of torch?)")
    chosen = torch.device("cuda" if device == "cuda" or (device == "auto" and has_gpu) else "cpu")
    bf16 = chosen.type == "cuda" and torch.cuda.is_bf16_supported()
    if dtype == "auto":
        return Placement(chosen, torch.bfloat16 if bf16 else torch.float32)
    if dtype == "bfloat16" and chosen.type == "cuda" and not bf16:
        raise ValueError(f"this GPU ({torch.cuda.get_device_name(chosen)}) has no bfloat16")
    return Placement(chosen, getattr(torch, dtype))


__all__ = ["DTypeName", "DeviceName", "Placement", "resolve_placement"]
