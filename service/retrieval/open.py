"""The one way every process opens a retriever from settings (serving, worker, CLI, benches)."""

from __future__ import annotations

from pathlib import Path

from service.retrieval.embedder import get_embedder
from service.retrieval.fusion import FusionConfig
from service.retrieval.index import IndexNotFoundError, Retriever, current_version
from service.settings import Settings


def open_retriever(
    settings: Settings, version: str | None = None, root: Path | None = None
) -> Retriever:
    """Index ``version`` (default: CURRENT) under ``root`` (default: settings.index_dir), with
    the configured embedder, default mode and fusion, searched where
    ``settings.retrieval_backend`` says (milvus: the version's collection, published on first
    open; service/retrieval/milvus.py).

    Raises ``IndexNotFoundError`` when no index has been built.
    """
    root = settings.index_dir if root is None else Path(root)
    embedder = get_embedder(settings.embedder, settings.embed_batch_size)
    kwargs = {"mode": settings.retrieval_mode, "fusion": FusionConfig.from_settings(settings)}
    if settings.retrieval_backend == "milvus":
        from service.retrieval.milvus import MilvusRetriever, connect

        version = version or current_version(root)
        if version is None:
            raise IndexNotFoundError(f"no index under {root}; run `ospo index build`")
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else None
        client = connect(settings.milvus_uri, token)
        return MilvusRetriever(root / version, embedder, client, settings.hnsw_ef_search, **kwargs)
    if version is None:
        return Retriever.load_current(root, embedder, settings.hnsw_ef_search, **kwargs)
    return Retriever(root / version, embedder, settings.hnsw_ef_search, **kwargs)
