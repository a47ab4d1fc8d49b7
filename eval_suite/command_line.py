"""The `pdefm` command: joins the command groups that each package registers.

Packages register Typer apps under the ``pdefm.commands`` entry-point group (see pyproject.toml),
so a package adds its commands without this file, or any lower package, importing it.
A group's module is imported only when that group runs (or when `pdefm --help` lists it).
"""

from __future__ import annotations

from importlib.metadata import entry_points, version

import typer
from typer.core import TyperGroup

ENTRY_POINT_GROUP = "pdefm.commands"
COMPLETION_OPTIONS = {"install_completion", "show_completion"}


class PluginGroup(TyperGroup):
    """A Typer group whose subcommands are loaded lazily from entry points."""

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
) -> None:
    """pdefm: PDE foundation models from data to few-shot evaluation.

    Start with `pdefm quickstart` (everything offline on one laptop), or run
    `pdefm COMMAND --help` for one step: data, pretrain, push, hub, finetune, eval.
    """


if __name__ == "__main__":
    main()
