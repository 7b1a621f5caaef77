"""`SafeText`: a string the whole stack can store and search.

JSON may carry characters no downstream part accepts: PostgreSQL refuses NUL in text, UTF-8
cannot encode an unpaired surrogate (`"\\ud800"` is valid JSON), and other C0 controls are
never part of a shopper's words or an id. Such a request is refused at the door (422, naming
the field) instead of failing later in a background write.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _safe(value: str) -> str:
    bad = _UNSAFE.search(value)
    if bad:
        raise ValueError(
            f"character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed "
            "(control characters other than tab and newlines, and unpaired surrogates)"
        )
    return value


# Put after a field's StringConstraints (`Annotated[str, StringConstraints(...), SAFE_CHARS]`):
# constraints nested inside an after-validator would see the string before it is stripped.
SAFE_CHARS = AfterValidator(_safe)
SafeText = Annotated[str, SAFE_CHARS]
