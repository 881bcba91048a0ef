"""Command-line options declared once, as dataclass fields: the field's default and help text
become the flag (``--batch-size``), and the parsed flags build the dataclass back."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any, TypeVar

from services.common.settings import option

T = TypeVar("T")

__all__ = ["add_options", "choice", "from_options", "option"]

_TYPES = {"int": int, "float": float, "str": str}


def choice(default: str, choices: Sequence[str], help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    """A string option limited to ``choices`` (the flag refuses anything else)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices)})


def add_options(parser: argparse.ArgumentParser | Any, cls: type) -> None:
    """One flag per field that has help text; a bool field defaulting to True becomes --no-<name>."""
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help")
        if help_text is None:
            continue
        flag = field.name.replace("_", "-")
        if field.type in ("bool", bool):
            negate = field.default is True
            parser.add_argument(
                f"--no-{flag}" if negate else f"--{flag}",
                dest=field.name,
                action="store_false" if negate else "store_true",
                help=help_text,
            )
            continue
        kind = _TYPES.get(field.type, field.type) if isinstance(field.type, str) else field.type
        parser.add_argument(
            f"--{flag}",
            dest=field.name,
            type=kind,
            default=field.default,
            choices=field.metadata.get("choices"),
            help=f"{help_text} [{field.default!r}]",
        )


def from_options(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """The dataclass the parsed flags describe (fields without a flag keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})
