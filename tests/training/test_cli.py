"""The `python -m training` command line as a user meets it: a description, the commands, every option helped."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from training import cli


def _command_parser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser([name])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_top_level_help_describes_the_tool_and_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "training", "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "Train BridgeNet" in out and "sub-command per module" not in out  # not the developer docstring
    for name, (_, help_text) in cli.COMMANDS.items():
        assert name in out and help_text in out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_option_has_a_one_line_help_with_its_default(name: str) -> None:
    parser = _command_parser(name)
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    assert options, f"{name} has no options"
    formatter = cli.HelpFormatter(prog="x")
    for action in options:
        assert action.help and "\n" not in action.help, f"{name} {action.option_strings[0]} has no one-line help"
        shown = formatter._get_help_string(action) % {"default": action.default}
        if action.nargs != 0 and not action.required:  # a value with a default: the help must say it
            assert "default" in shown, f"{name} {action.option_strings[0]}: default not shown ({shown!r})"


def test_command_help_shows_defaults() -> None:
    text = _command_parser("train").format_help()
    assert "--epochs EPOCHS" in text and "(default: 30)" in text
    assert "(default: None)" not in text
