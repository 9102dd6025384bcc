"""Every option of every ``crema`` command is explained in ``--help``, with its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from crema.workflows.cli import parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return {"": top, **sub.choices}


COMMANDS = _commands()


def _documented(command: str) -> list[argparse.Action]:
    return [a for a in COMMANDS[command]._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def test_every_command_is_listed_with_a_summary():
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {c.dest: c.help for c in sub._choices_actions}
    assert set(summaries) == set(COMMANDS) - {""}
    assert all(summaries.values()), [name for name, text in summaries.items() if not text]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help(command):
    missing = [a.option_strings[0] if a.option_strings else a.dest
               for a in _documented(command) if not (a.help or "").strip() or a.help == argparse.SUPPRESS]
    assert not missing, f"crema {command}: no help for {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_defaults_are_stated(command):
    # an option whose default is a value (not None, not an on/off flag) says it in its help
    unstated = []
    for a in _documented(command):
        if not a.option_strings or a.default is None or isinstance(a.default, bool) or a.default == argparse.SUPPRESS:
            continue
        text = (a.help or "").replace(",", "")
        shown = {str(a.default), f"{a.default:g}"} if isinstance(a.default, (int, float)) else {str(a.default)}
        if "default" not in text or not any(v in text for v in shown):
            unstated.append(f"{a.option_strings[-1]} (default {a.default!r})")
    assert not unstated, f"crema {command}: --help does not state {unstated}"


def test_generate_lists_every_process():
    from crema.generate import PROCESSES

    text = next(a for a in _documented("generate") if a.dest == "process").help
    assert set(text.replace(",", " ").split()) == set(PROCESSES)
