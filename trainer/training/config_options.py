"""Command-line options generated from a config dataclass, so options are never re-listed.

Every field of the dataclass is one option ``--field-name``: its default is the field's, its help
the field's ``metadata["help"]``. Literal and enum fields are read as strings and checked by the
dataclass itself (``check_choices``; the accepted values are added to the help), tuples as
comma-separated strings, bools as ``--flag/--no-flag``. ``config_options`` reads the dataclass
that way once, for two front ends:

* typer: ``with_config_options(TrainConfig)`` (trainer/cli/options.py) turns a command
  ``fn(..., config: TrainConfig)`` into one that has the options and receives the assembled
  config (``ospo train``); a config that does not validate exits with code 2 and the
  dataclass's message.
* argparse: ``add_config_arguments(parser, TrainConfig, defaults)`` adds the options to a
  benchmark's parser, with the benchmark's own defaults where it has some, and
  ``config_from_args`` builds the config from them.

Both end in ``config_from_overrides(cls, values)``, the one way to build a config from field
values by name; it rejects unknown names like the dataclass rejects invalid values. This module
imports neither typer nor anything of the serving stack: the benchmarks that run where only
torch is installed build their configs with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One field of a config dataclass as a command line sees it."""

    name: str
    type: type  # str, int, float or bool; Literal and tuple fields are read as str
    optional: bool  # the field also takes None (a command line cannot give it)
    default: Any  # the field's default as typed on a command line (a tuple comma-joined)
    help: str


def _is_optional(tp: Any) -> tuple[bool, Any]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007
    return False, tp


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(_is_optional(tp)[1]) is tuple


def _on_command_line(value: Any) -> Any:
    return ",".join(value) if isinstance(value, tuple) else value


def choices(tp: Any) -> tuple[Any, ...] | None:
    """The values a Literal or enum field accepts (None included when optional), else None."""
    optional, inner = _is_optional(tp)
    if typing.get_origin(inner) is typing.Literal:
        allowed = typing.get_args(inner)
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        allowed = tuple(member.value for member in inner)
    else:
        return None
    return (*allowed, None) if optional else allowed


def check_choices(config: Any) -> None:
    """Validate every Literal/enum field of a dataclass instance against its type (the one
    list of choices is the annotation), turning enum fields' strings into members."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        allowed = choices(hints[f.name])
        value = getattr(config, f.name)
        if allowed is None:
            continue
        if value not in allowed:
            raise ValueError(f"{f.name} must be one of {allowed}, got {value!r}")
        inner = _is_optional(hints[f.name])[1]
        if value is not None and isinstance(inner, type) and issubclass(inner, enum.Enum):
            object.__setattr__(config, f.name, inner(value))


def config_options(cls: type) -> list[ConfigOption]:
    """The options of ``cls``, one per init field, in field order."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        optional, inner = _is_optional(hints[f.name])
        extra = ""
        allowed = choices(inner)
        if allowed is not None:
            extra = " [" + "|".join(map(str, allowed)) + "]"
            inner = str
        elif _is_tuple(inner):
            extra = " (comma-separated)"
            inner = str
        help_text = f.metadata.get("help", "") + extra
        options.append(
            ConfigOption(f.name, inner, optional, _on_command_line(f.default), help_text)
        )
    return options


def config_from_overrides(cls: type[C], values: Mapping[str, Any]) -> C:
    """``cls(**values)``, the other fields at their defaults; comma-separated strings given to
    tuple fields are split. Raises ValueError for a name that is not a field of ``cls`` (and
    whatever the dataclass raises for an invalid value)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"not fields of {cls.__name__}: {unknown}")
    parsed = {
        name: tuple(v.strip() for v in value.split(",") if v.strip())
        if _is_tuple(hints[name]) and isinstance(value, str)
        else value
        for name, value in values.items()
    }
    return cls(**parsed)


# ---------------------------------------------------------------------------------------------
# argparse
# ---------------------------------------------------------------------------------------------


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Mapping[str, Any] | None = None,
    *,
    exclude: Collection[str] = (),
) -> None:
    """Add an ``--option`` per field of ``cls`` to ``parser``, in a group of their own.

    defaults: the caller's own defaults for some fields, shown in the help; pass the same to
              ``config_from_args``.
    exclude:  fields the caller sets itself (a benchmark that runs both algorithms has no
              ``--algo``). The caller's own options must not use a field's name.
    An option that is not given stays out of the parsed namespace (``argparse.SUPPRESS``), so
    ``config_from_args`` can tell it from a default.
    """
    defaults = dict(defaults or {})
    options = config_options(cls)
    unknown = sorted((set(defaults) | set(exclude)) - {o.name for o in options})
    if unknown:
        raise ValueError(f"not fields of {cls.__name__}: {unknown}")
    group = parser.add_argument_group(f"{cls.__name__} (help from its fields)")
    for o in options:
        if o.name in exclude:
            continue
        shown = _on_command_line(defaults.get(o.name, o.default))
        kwargs: dict[str, Any] = {
            "dest": o.name,
            "default": argparse.SUPPRESS,
            "help": f"{o.help} (default: {shown})".replace("%", "%%"),
        }
        if o.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=o.type, metavar=o.type.__name__.upper())
        group.add_argument("--" + o.name.replace("_", "-"), **kwargs)


def config_from_args(
    cls: type[C], args: argparse.Namespace, defaults: Mapping[str, Any] | None = None
) -> C:
    """The config of ``add_config_arguments``' options: each field as given on the command line,
    else from ``defaults``, else the dataclass default."""
    given = {o.name: getattr(args, o.name) for o in config_options(cls) if hasattr(args, o.name)}
    return config_from_overrides(cls, {**(defaults or {}), **given})
