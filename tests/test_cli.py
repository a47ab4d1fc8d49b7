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


def _invoke(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["data", "convert", "{tmp}/missing.npy", "--out", "{tmp}/c"], "missing.npy: no such file"),
        (["pretrain", "--corpus", "{tmp}/missing-corpus", "--out", "{tmp}/p"], "missing-corpus"),
        (["push", "{tmp}/missing-ckpt", "org/name"], "missing-ckpt"),
        (["hub", "serve"], "Missing option '--root'"),
        (["finetune", "--model", "m", "--data", "{tmp}/d.npz", "--shots", "1"], "d.npz' does not exist"),
        (["eval", "few-shot", "--data", "{tmp}/d.npz", "--out", "{tmp}/e", "--candidates", "fno"], "d.npz"),
        (["quickstart", "--shots", "2,x", "--out", "{tmp}/q"], "expected comma-separated integers"),
    ],
    ids=["data", "pretrain", "push", "hub", "finetune", "eval", "quickstart"],
)
def test_every_group_reports_a_user_mistake_as_one_line(tmp_path, args, needle):
    result = _invoke(*(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback(tmp_path):
    args = ["data", "convert", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "c")]
    out = subprocess.run(
        [sys.executable, "-m", "eval_suite.command_line", "--debug", *args], capture_output=True, text=True
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "missing.npy" in out.stderr
    result = CliRunner().invoke(main, args, env={"PDEFM_DEBUG": "1"})
    assert isinstance(result.exception, FileNotFoundError)  # raised on, not turned into one line


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import data_pipelines.formats

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(data_pipelines.formats, "read_any", broken)
    result = _invoke("data", "convert", tmp_path / "x.npy", "--out", tmp_path / "c")
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    import data_pipelines.formats

    def offline(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(data_pipelines.formats, "read_any", offline)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    result = _invoke("data", "convert", tmp_path / "x.npy", "--out", tmp_path / "c")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "cannot reach the Hub at http://127.0.0.1:9" in result.stderr
