"""Adapters on disk (`<data_dir>/adapters/<name>/`) with a checksum and a row in the database.

Files are copied into place under a temporary name and renamed, so a half-written adapter is
never visible under its final name; the row is written only after the files are complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from service.db.engine import session_scope
from service.db.models import Adapter
from service.domain import AdapterStatus
from service.errors import Conflict, InvalidInput, NotFound
from service.repositories.adapters import add_adapter, get_adapter

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REQUIRED_FILES = ("adapter_config.json",)


def checksum_dir(path: Path) -> str:
    """sha256 over the relative names and bytes of every file, in name order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "CHECKSUM"):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def validate_adapter_dir(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise InvalidInput(f"adapter folder {path} does not exist")
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    weights = list(path.glob("adapter_model.*"))
    if missing or not weights:
        raise InvalidInput(
            f"{path} is not a PEFT LoRA adapter (needs adapter_config.json and "
            "adapter_model.safetensors)"
        )
    return json.loads((path / "adapter_config.json").read_text())


def register_adapter(
    database_url: str,
    adapters_dir: Path,
    name: str,
    source: Path,
    base_model: str,
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Adapter:
    """Copy a trained adapter into the registry and record it as a candidate."""
    if not NAME.match(name):
        raise InvalidInput(f"adapter name {name!r} must match {NAME.pattern}")
    validate_adapter_dir(source)
    with session_scope(database_url) as session:
        if get_adapter(session, name) is not None:
            raise Conflict(f"an adapter named {name!r} already exists")
    final = adapters_dir / name
    if final.resolve() == source.resolve():
        digest = checksum_dir(final)
        (final / "CHECKSUM").write_text(digest + "\n")
    else:
        if final.exists():
            raise Conflict(f"{final} already exists on disk")
        # Copied and checksummed under a temporary name, renamed into place only when whole:
        # a full disk or a crash mid-copy leaves no folder that looks like an adapter.
        tmp = adapters_dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        adapters_dir.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(source, tmp)
            digest = checksum_dir(tmp)
            (tmp / "CHECKSUM").write_text(digest + "\n")
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    row = Adapter(
        name=name,
        path=str(final.resolve()),
        checksum=digest,
        base_model=base_model,
        parent=parent,
        status=AdapterStatus.candidate,
        metrics=metrics or {},
    )
    with session_scope(database_url) as session:
        add_adapter(session, row)
    return row


def verify_files(row: Adapter) -> Path:
    path = Path(row.path)
    if not path.is_dir():
        raise NotFound(f"adapter {row.name}: folder {path} is missing")
    if checksum_dir(path) != row.checksum:
        raise Conflict(f"adapter {row.name}: files under {path} do not match the recorded checksum")
    return path
