"""Command-line flags built from a pydantic settings model, so a setting and its flag cannot drift: the
flag's name, type, choices, help and shown default all come from the field. Flags default to None (unset),
so the settings' own sources (environment, defaults) apply to whatever is not given."""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def add_settings_flags(
    parser: argparse.ArgumentParser, settings: type[BaseModel], names: Sequence[str], *, env_prefix: str
) -> None:
    for name in names:
        field = settings.model_fields[name]
        kind = _plain_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        default = "" if field.default in (None, PydanticUndefined) else f"; default {field.default}"
        help_text = f"{field.description or name}{default} [{env_prefix}{name.upper()}]"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(kind) is Literal:
            parser.add_argument(flag, choices=get_args(kind), default=None, help=help_text)
        else:
            converter = kind if kind in (int, float) else str
            parser.add_argument(flag, type=converter, default=None, help=help_text)


def settings_overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags that were given, as settings keyword arguments."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _plain_type(annotation: Any) -> Any:
    """``X | None`` -> X; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
