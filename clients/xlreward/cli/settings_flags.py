"""Command-line flags built from a pydantic settings model, so a setting and its flag cannot drift: the
flag's name, type, choices, help and shown default (through ``help_format``) all come from the field.
Flags default to None (unset), so the settings' own sources (environment, defaults) apply to whatever is not
given."""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from xlreward.cli.help_format import note_setting_default

SettingsT = TypeVar("SettingsT", bound=BaseModel)


def add_settings_flags(
    parser: argparse.ArgumentParser, settings: type[BaseModel], names: Sequence[str], *, env_prefix: str
) -> None:
    for name in names:
        field = settings.model_fields[name]
        kind = _plain_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description or name} [{env_prefix}{name.upper()}]"
        if kind is bool:
            action = parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif get_origin(kind) is Literal:
            action = parser.add_argument(flag, choices=get_args(kind), default=None, help=help_text)
        else:
            converter = kind if kind in (int, float) else str
            action = parser.add_argument(flag, type=converter, default=None, help=help_text)
        note_setting_default(action, declared_default(settings, name))


def note_setting_defaults(
    parser: argparse.ArgumentParser, settings: type[BaseModel], fields: Mapping[str, str]
) -> None:
    """For flags declared by hand over settings (``fields``: flag dest -> settings field): --help shows each
    setting's declared default, while the flag itself stays None (unset) so the settings' sources apply."""
    for action in parser._actions:  # argparse has no public list of a parser's actions
        if action.dest in fields:
            note_setting_default(action, declared_default(settings, fields[action.dest]))


def declared_default(settings: type[BaseModel], name: str) -> Any:
    """A field's default as declared; None for a required field or one built by a factory."""
    default = settings.model_fields[name].default
    return None if default is PydanticUndefined else default


def build_settings(settings: type[SettingsT], overrides: Mapping[str, Any]) -> SettingsT:
    """The settings from ``overrides`` (given flags) and the environment; anything wrong with them is one
    ``CommandError`` naming each setting to fix, never a traceback."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from xlreward.cli.main import CommandError

    try:
        return settings(**overrides)
    except (ValidationError, SettingsError) as error:
        raise CommandError(describe_settings_error(error)) from None


def describe_settings_error(error: Any) -> str:
    """A pydantic ValidationError, or pydantic-settings' SettingsError (an environment variable that is not
    the JSON its field needs), as one message saying which setting to fix."""
    if not hasattr(error, "errors"):
        import re

        named = re.search(r'field "(\w+)"', str(error))
        variable = f"XLREWARD_{named.group(1).upper()}" if named else "the variable"
        cause = f": {error.__cause__}" if error.__cause__ else ""
        return (
            f"invalid settings: {variable} is not JSON{cause}; a setting that holds a map or a list takes "
            f'JSON, for example {variable}=\'{{"key": "value"}}\''
        )
    lines = []
    for detail in error.errors():
        field = ".".join(str(part) for part in detail["loc"]) or "settings"
        env = f" [XLREWARD_{field.upper()}]" if detail["loc"] else ""
        lines.append(f"  {field}{env}: {detail['msg'].removeprefix('Value error, ')}")
    return "invalid settings:\n" + "\n".join(lines)


def settings_overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags that were given, as settings keyword arguments."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _plain_type(annotation: Any) -> Any:
    """``X | None`` -> X; anything else as it is."""
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
