"""Options the trainer's commands share: the grade set, and a config dataclass's fields as typer
options (``with_config_options``; trainer/training/config_options.py reads the fields)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from service.domain import GradeSet
from trainer.training.config_options import config_from_overrides, config_options

BAD_INPUT = 2  # the exit code of bad options, a config that does not validate among them
# The grade set of every command that scores rankings (train, eval, simulate): one option.
GradesOpt = Annotated[
    GradeSet,
    typer.Option(
        help="completed: human grades with the assessed grades that complete the judged pool "
        "(service/grades.py); human: human grades only (the pool-biased yardstick)."
    ),
]


def with_config_options(cls: type, config_param: str = "config") -> Callable[[Callable], Callable]:
    """Decorate a typer command taking ``config: cls`` (trainer/training/config_options.py's
    docstring)."""
    options = config_options(cls)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn)
        resolved = typing.get_type_hints(fn, include_extras=True)  # string annotations too
        own = [
            p.replace(annotation=resolved.get(name, p.annotation))
            for name, p in sig.parameters.items()
            if name != config_param
        ]
        clash = {p.name for p in own} & {o.name for o in options}
        if clash:
            raise TypeError(f"{fn.__name__} parameters shadow config fields: {sorted(clash)}")
        generated = [
            inspect.Parameter(
                o.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=o.default,
                annotation=Annotated[
                    o.type | None if o.optional else o.type, typer.Option(help=o.help)
                ],
            )
            for o in options
        ]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            values = {o.name: kwargs.pop(o.name) for o in options}
            try:
                config = config_from_overrides(cls, values)
            except (ValueError, TypeError) as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(BAD_INPUT) from e
            return fn(**kwargs, **{config_param: config})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + generated
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
