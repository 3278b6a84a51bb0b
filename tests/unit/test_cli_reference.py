"""The README's command reference and ``--help`` against the parsers.

The "Commands" section of README.md has a table of the shared flags each command takes and one
subsection per command naming its own flags: a flag in a parser that the README does not name,
or one the README names that no parser has, fails here. ``--help`` shows every flag with a
help text, and every default that is not "off".
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from forwarder import cli

README = Path(__file__).resolve().parents[2] / "README.md"
COMMON = ("--config", "--log-level", "--log-format", "--hec-url", "--token")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def command_parser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser(name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    chosen: argparse.ArgumentParser = sub.choices[name]
    return chosen


def parser_flags(name: str) -> set[str]:
    return {
        option
        for action in command_parser(name)._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def commands_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Commands\n")
    return text[start : text.index("\n## ", start + 1)]


def common_table() -> dict[str, set[str]]:
    """command -> the shared flags the README's table marks for it."""
    rows: dict[str, set[str]] = {}
    for line in commands_section().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == len(COMMON) + 1 and cells[0].startswith("`") and cells[0] != "`--config`":
            name = cells[0].strip("`")
            rows[name] = {flag for flag, cell in zip(COMMON, cells[1:], strict=True) if cell}
    return rows


def subsections() -> dict[str, str]:
    """command -> the text of its ``### `forwarder NAME ...` `` subsection (sub-subsections
    included)."""
    parts = re.split(r"\n### ", commands_section())
    found: dict[str, str] = {}
    for part in parts[1:]:
        heading = re.match(r"`forwarder ([a-z-]+)", part)
        if heading:
            found[heading.group(1)] = part
    return found


def test_every_command_has_a_subsection_and_a_row() -> None:
    assert set(subsections()) == set(cli.COMMANDS)
    assert set(common_table()) == set(cli.COMMANDS)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_the_common_flags_table_matches_the_parser(name: str) -> None:
    assert common_table()[name] == parser_flags(name) & set(COMMON)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_the_readme_names_exactly_the_parsers_flags(name: str) -> None:
    """GIVEN a command's subsection and its row of shared flags THEN together they name every
    flag its parser has, and no flag it lacks."""
    documented = set(FLAG.findall(subsections()[name])) | common_table()[name]
    flags = parser_flags(name)
    assert sorted(flags - documented) == [], f"{name}: in the parser, not in the README"
    assert sorted(documented - flags) == [], f"{name}: in the README, not in the parser"


def _shows_default(action: argparse.Action, text: str) -> bool:
    default = action.default
    if isinstance(default, float) and default.is_integer():
        candidates = {str(default), str(int(default))}
    else:
        candidates = {str(default)}
    return "default" in text or any(candidate in text for candidate in candidates)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_help_shows_every_flag_with_its_default(name: str) -> None:
    parser = command_parser(name)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or "--help" in action.option_strings:
            continue
        assert action.help, f"{name} {action.option_strings[-1]}: no help text"
        text = formatter._expand_help(action)
        if action.default not in (None, False, [], argparse.SUPPRESS):
            assert _shows_default(action, text), (
                f"{name} {action.option_strings[-1]}: default {action.default!r} not in --help"
            )


def unwrapped(text: str) -> str:
    """Help text as one line: argparse wraps lines, and breaks words at hyphens."""
    return re.sub(r"\s+", " ", re.sub(r"-\n\s*", "-", text))


def test_the_named_gaps_of_issue_15_are_closed() -> None:
    """daemon --help names firehose-http; replay --help names epoch seconds and the defaults of
    --concurrency and --chunk-mb."""
    daemon = unwrapped(command_parser("daemon").format_help())
    assert "kinesis, sqs-s3, firehose-http" in daemon
    replay = unwrapped(command_parser("replay").format_help())
    assert "epoch seconds" in replay
    assert "objects replayed at once (default: 1)" in replay
    assert "(default: 8)" in replay
