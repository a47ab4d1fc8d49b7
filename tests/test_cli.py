"""The `pdefm` entry point joins every package's command group."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from eval_suite.command_line import main


def test_help_lists_every_registered_group():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name in ["data", "pretrain", "push", "hub", "finetune", "eval", "quickstart"]:
        assert name in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("pdefm ")


def test_unknown_command_is_a_clear_error():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code != 0
    assert "No such command" in result.output


@pytest.mark.parametrize("group", ["data", "hub", "eval", "finetune", "pretrain"])
def test_group_help_runs_as_console_script(group):
    out = subprocess.run(
        [sys.executable, "-m", "eval_suite.command_line", group, "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
