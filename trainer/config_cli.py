"""Command-line options generated from a config dataclass, so options are never re-listed.

``with_config_options(TrainConfig)`` turns a typer command ``fn(..., config: TrainConfig)``
into one that has an ``--option`` per dataclass field (help from the field's metadata,
default from the field) and receives the assembled, validated config. Literal fields become
strings checked by the dataclass itself, tuples comma-separated strings; a config that does not
validate exits with code 2 and the dataclass's message.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

BAD_INPUT = 2


def _is_optional(tp: Any) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    return False, tp


def _cli_type(tp: Any) -> tuple[Any, str]:
    """(type typer understands, extra help) for a dataclass field type."""
    optional, inner = _is_optional(tp)
    extra = ""
    if typing.get_origin(inner) is typing.Literal:
        extra = " [" + "|".join(map(str, typing.get_args(inner))) + "]"
        inner = str
    elif typing.get_origin(inner) is tuple:
        extra = " (comma-separated)"
        inner = str
    return (inner | None if optional else inner), extra


def _cli_default(field: dataclasses.Field[Any]) -> Any:
    default = field.default
    if isinstance(default, tuple):
        return ",".join(default)
    return default


def _from_cli(field: dataclasses.Field[Any], hint: Any, value: Any) -> Any:
    _, inner = _is_optional(hint)
    if typing.get_origin(inner) is tuple and isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


def with_config_options(cls: type, config_param: str = "config") -> Callable[[Callable], Callable]:
    """Decorate a typer command taking ``config: cls`` (see module docstring)."""
    hints = typing.get_type_hints(cls, include_extras=False)
    config_fields = [f for f in dataclasses.fields(cls) if f.init]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        resolved = typing.get_type_hints(fn, include_extras=True)  # string annotations too
        own = [
            p.replace(annotation=resolved.get(name, p.annotation))
            for name, p in sig.parameters.items()
            if name != config_param
        ]
        clash = {p.name for p in own} & {f.name for f in config_fields}
        if clash:
            raise TypeError(f"{fn.__name__} parameters shadow config fields: {sorted(clash)}")
        generated = []
        for f in config_fields:
            tp, extra = _cli_type(hints[f.name])
            help_text = f.metadata.get("help", "") + extra
            generated.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=_cli_default(f),
                    annotation=Annotated[tp, typer.Option(help=help_text)],
                )
            )

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {
                f.name: _from_cli(f, hints[f.name], kwargs.pop(f.name)) for f in config_fields
            }
            try:
                config = cls(**values)
            except (ValueError, TypeError) as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(BAD_INPUT) from e
            return fn(**kwargs, **{config_param: config})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
