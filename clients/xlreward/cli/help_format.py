"""Every ``xlreward`` option's default in ``--help``, from one place: the formatter all its parsers use.

A flag that defaults to None so that a settings class's own sources (``XLREWARD_*`` variables, then the
declared default) apply carries that declared default as ``setting_default`` (``note_setting_default``),
and the help shows it, since what the command does without the flag is what a reader wants to know.
"""

from __future__ import annotations

import argparse
import copy
import re
from typing import Any

SETTING_DEFAULT = "setting_default"  # the attribute note_setting_default sets on an argparse action
# A help that states its default itself, in words where a value would mislead: "(default: 4096 on CPU, ...)".
SAYS_DEFAULT = re.compile(r"\(default\b|%\(default\)")


def note_setting_default(action: argparse.Action, default: Any) -> None:
    """Shows ``default`` as the default of ``action`` (whose own default stays None: unset)."""
    setattr(action, SETTING_DEFAULT, default)


def shown_default(action: argparse.Action) -> Any:
    """The default ``--help`` shows for ``action``; None when there is none worth showing (unset, a plain
    switch's False, a suppressed option)."""
    if action.help == argparse.SUPPRESS:
        return None
    default = action.default if action.default is not None else getattr(action, SETTING_DEFAULT, None)
    if default is None or default is argparse.SUPPRESS:
        return None
    if default is False and not isinstance(action, argparse.BooleanOptionalAction):
        return None  # store_true: off unless given goes without saying
    return default


def default_text(default: Any) -> str:
    """How a default reads on the command line: list values as they are typed, space-separated.

    >>> default_text(["en", "es"]), default_text(0.1)
    ('en es', '0.1')
    """
    if isinstance(default, list | tuple):
        return " ".join(str(value) for value in default)
    return str(default)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already says ``(default ...)``."""

    def _format_action(self, action: argparse.Action) -> str:
        if not (action.help and action.help.strip()) and shown_default(action) is not None:
            action = copy.copy(action)  # an option without help text still shows its default
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").strip()
        default = shown_default(action)
        if default is None or SAYS_DEFAULT.search(text):
            return text
        shown = default_text(default).replace("%", "%%")  # the help is a %-format string
        return f"{text} (default: {shown})".lstrip()


class CommandParser(argparse.ArgumentParser):
    """The parser of ``xlreward`` and of each command (``add_subparsers`` passes its class on)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
