"""The `pdefm` command: joins the command groups that each package registers, and owns the error contract.

Packages register Typer apps under the ``pdefm.commands`` entry-point group (see pyproject.toml),
so a package adds its commands without this file, or any lower package, importing it.
A group's module is imported only when that group runs (or when `pdefm --help` lists it).

Error contract: a user mistake (ValueError, a missing or unwritable path, an unknown name, a damaged corpus
or checkpoint, a Hub refusal or an unreachable Hub, a usage error) is printed as one line ``error: ...`` on stderr with exit code
2; ``pdefm --debug COMMAND`` or ``PDEFM_DEBUG=1`` shows its traceback instead. Any other
exception is a bug and keeps its traceback. Commands raise; none of them needs to catch anything.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points, version

import typer
from typer.core import TyperGroup

try:  # recent typer runs on its own copy of click, whose classes are not the `click` package's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on the click package
    from click import exceptions as click_errors

ENTRY_POINT_GROUP = "pdefm.commands"
COMPLETION_OPTIONS = {"install_completion", "show_completion"}
DEBUG_ENV = "PDEFM_DEBUG"
# control flow, not errors: help shown for a bare group, an explicit exit, Ctrl-C
PASS_THROUGH = (getattr(click_errors, "NoArgsIsHelpError", typer.Exit), typer.Exit, typer.Abort)
USER_ERRORS = (
    ValueError,  # includes FormatError, CorpusError and every bad-input error of the packages
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
# The packages' own error classes that are not ValueErrors, by name (importing them here would load torch).
USER_ERROR_NAMES = {"CheckpointError", "CorpusError", "FormatError", "HubError"}
# HTTP client libraries whose exceptions are transport failures (huggingface_hub's come through these)
NETWORK_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"}


def is_user_error(exc: BaseException) -> bool:
    """Whether `exc` is a mistake in the user's input or environment rather than a bug in pdefm."""
    if isinstance(exc, USER_ERRORS):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & USER_ERROR_NAMES:
        return True
    if type(exc).__module__.startswith("huggingface_hub"):  # repo not found, no token, offline, ...
        return True
    if is_network_error(exc):
        return True
    # the registries' "unknown family/baseline 'x'; known ..." (a bug's KeyError is a bare key)
    return isinstance(exc, KeyError) and len(exc.args) == 1 and " " in str(exc.args[0])


def is_network_error(exc: BaseException) -> bool:
    """No route to the Hub (DNS, refused connection, timeout): the environment, not a bug."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in NETWORK_MODULES


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's message without its quotes)."""
    if isinstance(exc, click_errors.ClickException):
        text = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, click_errors.UsageError) and ctx is not None:
            text += f" (see '{ctx.command_path} --help')"
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    if is_network_error(exc) and not type(exc).__module__.startswith("huggingface_hub"):
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        text = f"cannot reach the Hub at {endpoint} (HF_ENDPOINT): {type(exc).__name__}: {text}"
    return " ".join(text.split())


class PluginGroup(TyperGroup):
    """A Typer group whose subcommands are loaded lazily from entry points, with the error contract."""

    @staticmethod
    def _entry_points() -> dict:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx) -> list[str]:
        return sorted(self._entry_points())

    def get_command(self, ctx, name: str):
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        app = ep.load()
        if not (app.registered_commands or app.registered_groups):
            return None  # a package that has not added commands to its group yet
        command = typer.main.get_command(app)
        command.name = name
        # shell completion is the root command's business, not every group's
        command.params = [p for p in command.params if p.name not in COMPLETION_OPTIONS]
        return command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PASS_THROUGH:
            raise
        except Exception as exc:
            usage = isinstance(exc, click_errors.UsageError)
            if not (usage or is_user_error(exc)):
                raise  # a bug: its traceback is the report
            if not usage and (ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0")):
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from exc


main = typer.Typer(
    cls=PluginGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pdefm {version('pdefm')}")
        raise typer.Exit()


@main.callback()
def root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        envvar=DEBUG_ENV,
        help=f"Show the traceback of an error instead of its one-line message (also {DEBUG_ENV}=1).",
    ),
) -> None:
    """pdefm: PDE foundation models from data to few-shot evaluation.

    Start with `pdefm quickstart` (everything offline on one laptop), or run
    `pdefm COMMAND --help` for one step: data, pretrain, push, hub, finetune, eval.
    """


if __name__ == "__main__":
    main()
