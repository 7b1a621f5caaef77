"""Process-wide serving state: the current retriever (swappable without downtime)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from service.observability import INDEX_SIZE
from service.retrieval.embedder import Embedder, get_embedder
from service.retrieval.index import IndexNotFoundError, Retriever, current_version
from service.retrieval.open import open_retriever
from service.settings import Settings

log = logging.getLogger(__name__)


class RetrieverHolder:
    """Holds the serving retriever; a new index version replaces it with one reference swap.

    In-flight searches keep the object they started with, so a swap never fails a request.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._retriever: Retriever | None = None
        self._embedder: Embedder | None = None
        self.error: str | None = None

    @property
    def root(self) -> Path:
        return self._settings.index_dir

    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self._settings.embedder, self._settings.embed_batch_size)
        return self._embedder

    def get(self) -> Retriever | None:
        return self._retriever

    def refresh(self) -> bool:
        """Load the version named by CURRENT if it differs from the one serving. True if swapped."""
        version = current_version(self.root)
        current = self._retriever
        if version is None or (current is not None and current.version == version):
            if version is None:
                self.error = f"no index under {self.root}; run `ospo index build`"
            return False
        with self._lock:
            try:
                retriever = open_retriever(self._settings, version)
                # The first encode pays one-off costs (~1 s); pay them before taking traffic.
                retriever.search_many(["warm up"], 1)
            except (IndexNotFoundError, ValueError, RuntimeError, OSError) as e:
                self.error = f"index {version} failed to load: {e}"
                log.error(self.error)
                return False
            self._retriever = retriever
            self.error = None
            INDEX_SIZE.set(retriever.manifest.count)
            log.info("serving index %s (%d products)", version, retriever.manifest.count)
            return True
