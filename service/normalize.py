"""Query normalisation shared by search logging, labels, caches and training data."""

from __future__ import annotations

import re
import unicodedata

_SPACE = re.compile(r"\s+")


def normalize_query(query: str) -> str:
    """NFKC, lower-case, collapsed whitespace: the key under which a query's labels accumulate."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", query)).strip().lower()
