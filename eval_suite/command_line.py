"""The `pdefm` command: joins the command groups that each package registers.

Packages register Typer apps under the ``pdefm.commands`` entry-point group (see pyproject.toml),
so a package adds its commands without this file, or any lower package, importing it.
A group's module is imported only when that group runs (or when `pdefm --help` lists it).
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click
import typer

ENTRY_POINT_GROUP = "pdefm.commands"


class PluginGroup(click.Group):
    """A click group whose subcommands are loaded lazily from entry points."""

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._entry_points())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        ep = self._entry_points().get(name)
        if ep is None:
            return None
        app = ep.load()
        if not (app.registered_commands or app.registered_groups):
            return None  # a package that has not added commands to its group yet
        command = typer.main.get_command(app)
        command.name = name
        return command


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pdefm")
def main() -> None:
    """pdefm: PDE foundation models from data to few-shot evaluation.

    Start with `pdefm quickstart` (everything offline on one laptop), or run
    `pdefm COMMAND --help` for one step: data, pretrain, push, hub, finetune, eval.
    """


if __name__ == "__main__":
    main()
