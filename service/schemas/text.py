"""Strings the whole stack can store and search, refused at the door otherwise.

JSON may carry characters no downstream part accepts: PostgreSQL refuses NUL in text, UTF-8
cannot encode an unpaired surrogate (`"\\ud800"` is valid JSON), and other C0 controls are
never part of a shopper's words or an id. Such a request is refused (422, naming the field and
the character) instead of failing later in a background write. The rule is also published in
the OpenAPI schema as a `pattern`, so clients and schema-driven tests see it; a field that is
stripped and must not be empty says so in its pattern too.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

_UNSAFE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_ALLOWED = r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
# Not whitespace as Python's str.strip sees it (\x85 is; ECMA's \s does not include it).
_VISIBLE = r"[^\s\x00-\x1f\x7f\x85]"


def _safe(value: str) -> str:
    bad = _UNSAFE.search(value)
    if bad:
        raise ValueError(
            f"character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed "
            "(control characters other than tab and newlines, and unpaired surrogates)"
        )
    return value


class SafeChars:
    """Annotated marker: validate with `_safe` after the field's own constraints (so a stripped
    value is checked), and publish the rule as a JSON-schema pattern."""

    def __init__(self, non_blank: bool = False) -> None:
        self.pattern = f"^{_ALLOWED}*{_VISIBLE}{_ALLOWED}*$" if non_blank else f"^{_ALLOWED}*$"

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_safe, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), "pattern": self.pattern}


def text(max_length: int, *, required: bool = False, strip: bool = False) -> Any:
    """`str` of at most `max_length` characters, safe to store; `required`: at least one
    visible character (after stripping when `strip`)."""
    return Annotated[
        str,
        StringConstraints(
            strip_whitespace=strip, min_length=1 if required else None, max_length=max_length
        ),
        SafeChars(non_blank=required and strip),
    ]


SafeText = Annotated[str, SafeChars()]
