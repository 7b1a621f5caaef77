"""bench/gpu_check.py, the prepared GPU check, runs here on the CPU with ``--tiny``: the same
code a lent GPU machine runs (device path, parity, timed GRPO/OSPO steps), none of the serving
stack that machine lacks, and a results file that says what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.processes import run_script_without
from trainer.training.phases import PHASES

# What the lent GPU machine does not have (../shared/DESIGN.md §6), and what it need not load.
ABSENT = (
    "faiss", "vllm", "bm25s", "Stemmer", "matplotlib", "sqlalchemy", "typer", "fastapi", "celery",
    "service.retrieval.index", "service.settings", "service.db",
)  # fmt: skip


@pytest.mark.slow
def test_gpu_check_tiny_runs_the_device_path_and_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = run_script_without("bench/gpu_check.py", ["--tiny", "--out", str(out)], ABSENT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["finished"] and result["tiny"] and result["card"] == "cpu"
    assert result["placement"] == {"device": "cpu", "dtype": "torch.float32"}
    parity = result["parity"]
    # CPU against itself in float32: the same numbers; in bfloat16 within its tolerance
    assert parity["float32"]["grad_rel"] == 0.0 and parity["float32"]["loss_abs"] == 0.0
    assert (
        0.0
        < parity["bfloat16"]["grad_rel"]
        <= result["config"]["tolerance"]["bfloat16"]["grad_rel"]
    )
    assert parity["bfloat16"]["grad_cosine"] > 0.99 and parity["ok"] is True
    assert parity["cpu"]["active_rows"] > 0  # the update had something to compare
    for arch in ("smollm2-135m", "qwen2.5-1.5b"):
        for algo in ("grpo", "ospo"):
            step = result["steps"][arch][algo]
            assert step["status"] == "ok", step
            assert list(step["phase_s"]) == list(PHASES) and step["step_s"] > 0
            assert step["peak_memory_gib"] is None  # measured on a GPU only
        assert result["steps"][arch]["ospo"]["coalition_evals"] > 0
        assert result["steps"][arch]["grpo"]["coalition_evals"] == 0
    goals = result["goals"]
    assert goals["ospo_over_grpo_1.5b"] > 0 and goals["smollm2_200_steps_s"] > 0
    assert goals["parity_ok"] is True
