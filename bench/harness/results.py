"""Writing a benchmark's results: bench/results/NAME.json (+ NAME.png).

A results file says how it was made: ``created`` (UTC, seconds), ``command`` (the invocation,
as the docs quote it), ``machine`` (cores and platform; the machine is shared, so benchmarks
add the load average at their start and end). Standard library only (see the package doc).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def created() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def command(script: str, argv: Sequence[str] | None = None) -> str:
    """``python bench/NAME.py ARGS``: `argv` as given to the script's ``main``, else this
    process's own arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", f"bench/{Path(script).name}", *args])


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: how busy the shared machine was."""
    return [round(x, 2) for x in os.getloadavg()]


def machine(**extra: Any) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), **extra}


def header(script: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The keys every results file opens with."""
    return {"created": created(), "command": command(script, argv), "machine": machine()}


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is missing), plus Python's."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def write_json(path: Path, data: Any, indent: int | None = 2) -> Path:
    """`data` as JSON at `path` (parents made). Written to a temporary name and renamed, so a
    benchmark that rewrites its file after every step never leaves a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (no display), imported when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
