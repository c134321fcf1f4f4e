"""The README's two set-up commands stay true: CI runs the test command verbatim, and the commands they name exist."""

import re
from pathlib import Path

from mimo_ds.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = _setup_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.endswith("mimo-ds demo")
    assert tests.endswith("python -m pytest -n 2")  # two files at a time: the suite's time on a 2-core machine
    assert tests in ROOT.joinpath(".ci", "run").read_text()


def test_cli_has_every_documented_subcommand():
    readme = ROOT.joinpath("README.md").read_text()
    documented = set(re.findall(r"`mimo-ds ([a-z-]+)", readme))
    choices = set(build_parser()._subparsers._group_actions[0].choices)
    assert documented <= choices, documented - choices
