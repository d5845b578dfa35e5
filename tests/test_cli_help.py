"""`xlreward ... --help` shows every option's default (help_format.DefaultsHelpFormatter on every parser)."""

from __future__ import annotations

import argparse
import re

import pytest

from xlreward.cli.help_format import SETTING_DEFAULT, default_text
from xlreward.cli.main import build_parser
from xlreward.worker.settings import WorkerSettings


def parsers() -> dict[str, argparse.ArgumentParser]:
    """``xlreward`` itself and each of its commands."""
    top = build_parser()
    (commands,) = [action for action in top._actions if isinstance(action, argparse._SubParsersAction)]
    return {"xlreward": top, **commands.choices}


def option_help(rendered: str, flag: str) -> str:
    """The lines of ``rendered`` help that describe ``flag``: its invocation up to the next option's."""
    found = re.search(rf"^  {re.escape(flag)}\b.*?(?=^  -|\Z)", rendered, re.MULTILINE | re.DOTALL)
    assert found, f"{flag} is not in the help"
    return " ".join(found.group(0).split())


def effective_default(action: argparse.Action) -> object:
    """argparse's default, or for a flag left unset so that XLREWARD_* variables apply, the setting's."""
    return action.default if action.default is not None else getattr(action, SETTING_DEFAULT, None)


@pytest.mark.parametrize("command", sorted(parsers()))
def test_every_default_shows_in_help(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    parser = parsers()[command]
    rendered = parser.format_help()
    for action in parser._actions:
        default = effective_default(action)
        if not action.option_strings or default is None or default is False or default is argparse.SUPPRESS:
            continue
        shown = option_help(rendered, action.option_strings[0])
        assert re.search(rf"\(default:? {re.escape(default_text(default))}(?!\w)", shown), shown


def test_worker_settings_defaults_show_while_the_flags_stay_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """annotate's --samples defaults to None so that XLREWARD_SAMPLES applies; its help shows the setting's
    default (it once said "default cross" for --mode, whose setting is cross_lingual)."""
    monkeypatch.setenv("COLUMNS", "200")
    annotate = parsers()["annotate"]
    rendered = annotate.format_help()
    assert f"(default: {WorkerSettings.model_fields['samples'].default})" in option_help(
        rendered, "--samples"
    )
    assert "(default: cross_lingual)" in option_help(rendered, "--mode")
    args = annotate.parse_args(["--instructions", "x.jsonl", "--languages", "en", "--out", "o"])
    assert args.samples is None and args.mode is None


def test_an_option_without_help_text_still_shows_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    rendered = parsers()["serve"].format_help()
    assert option_help(rendered, "--log-level").endswith("(default: info)")
    assert option_help(rendered, "--packed").endswith("[XLREWARD_PACKED] (default: False)")
    switch = option_help(parsers()["score"].format_help(), "--trust-remote-code")
    assert "default" not in switch  # a plain switch is off unless given: no "(default: False)"


def test_doctests_of_the_help_and_argument_modules() -> None:
    import doctest

    from xlreward.cli import arg_types, help_format

    for module in (help_format, arg_types):
        assert doctest.testmod(module).failed == 0
