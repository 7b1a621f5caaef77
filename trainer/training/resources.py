"""Finding what training and evaluation run on: the policy model, the index, product texts.

Defaults come from ``service.settings`` (the same folders serving uses). Benchmarks that must
not depend on a configured deployment can build a private index straight from catalogue files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.retrieval.embedder import get_embedder
from service.retrieval.index import (
    IndexNotFoundError,
    Retriever,
    current_version,
    text_hash,
    write_index,
)
from service.retrieval.open import open_retriever
from service.settings import Settings


class ResourceError(RuntimeError):
    """A model, index or catalogue the command needs is missing."""


def policy_model_path(settings: Settings, model: str | Path | None = None) -> Path:
    """``resolve_policy_model`` with its failure as a ``ResourceError`` (a command's message)."""
    from service.policy.models import PolicyModelError, resolve_policy_model

    try:
        return resolve_policy_model(settings, model)
    except PolicyModelError as e:
        raise ResourceError(str(e)) from e


def load_retriever(settings: Settings, index_dir: Path | None = None) -> Retriever:
    """The serving index (``CURRENT`` under ``index_dir``, default settings.index_dir)."""
    try:
        return open_retriever(settings, root=index_dir)
    except IndexNotFoundError as e:
        raise ResourceError(f"{e} (or pass --index-dir)") from e


def catalog_texts(path: Path, fmt: str) -> dict[str, tuple[str, str]]:
    """{product id: (title, search_text)} from a catalogue file or folder."""
    from service.catalog.formats import parse_catalog

    out: dict[str, tuple[str, str]] = {}
    for product, _ in parse_catalog(fmt, Path(path)):  # type: ignore[arg-type]
        if product is not None:
            out[product.id] = (product.title, product.search_text)
    return out


def db_search_texts(database_url: str) -> dict[str, str]:
    """{product id: search_text} of every product in the database."""
    from service.db.engine import session_scope
    from service.repositories.products import iter_search_texts

    with session_scope(database_url) as session:
        return {pid: text for pid, _, text in iter_search_texts(session)}


def build_catalog_index(
    root: Path, catalogs: Sequence[tuple[Path, str]], settings: Settings
) -> tuple[Retriever, dict[str, str]]:
    """An index of the given catalogues under ``root`` (reused if already built there).

    Returns the retriever and {product id: search_text} (for BM25). Products are in id order,
    like ``ospo index build``.
    """
    texts: dict[str, tuple[str, str]] = {}
    for path, fmt in catalogs:
        texts.update(catalog_texts(path, fmt))
    ids = sorted(texts)
    embedder = get_embedder(settings.embedder, settings.embed_batch_size)
    search_texts = [texts[pid][1] for pid in ids]
    if current_version(root) is not None:
        retriever = open_retriever(settings, root=root)
        if retriever.ids == ids and retriever.lexical is not None:
            return retriever, dict(zip(ids, search_texts, strict=True))
    write_index(
        root,
        ids,
        [texts[pid][0] for pid in ids],
        embedder.encode(search_texts, progress=True),
        embedder.name,
        "flat",
        lexical_texts=search_texts,
        text_hashes=[text_hash(t) for t in search_texts],
    )
    return open_retriever(settings, root=root), dict(zip(ids, search_texts, strict=True))
