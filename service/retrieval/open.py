"""The one way every process opens a retriever from settings (serving, worker, CLI, benches)."""

from __future__ import annotations

from pathlib import Path

from service.retrieval.embedder import get_embedder
from service.retrieval.fusion import FusionConfig
from service.retrieval.index import Retriever
from service.settings import Settings


def open_retriever(
    settings: Settings, version: str | None = None, root: Path | None = None
) -> Retriever:
    """Index ``version`` (default: CURRENT) under ``root`` (default: settings.index_dir), with
    the configured embedder, default mode and fusion.

    Raises ``IndexNotFoundError`` when no index has been built.
    """
    root = settings.index_dir if root is None else Path(root)
    embedder = get_embedder(settings.embedder, settings.embed_batch_size)
    kwargs = {"mode": settings.retrieval_mode, "fusion": FusionConfig.from_settings(settings)}
    if version is None:
        return Retriever.load_current(root, embedder, settings.hnsw_ef_search, **kwargs)
    return Retriever(root / version, embedder, settings.hnsw_ef_search, **kwargs)
