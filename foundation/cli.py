"""`pdefm pretrain`, `pdefm push` and `pdefm hub ...`."""

from __future__ import annotations

from pathlib import Path

import typer

pretrain_app = typer.Typer(help="Pretrain scOT on a streamed corpus (run under `accelerate launch`).")
push_app = typer.Typer(help="Upload a checkpoint folder with its model card to the Hub.")
hub_app = typer.Typer(help="pdefm's own Hub-compatible server for offline clusters.", no_args_is_help=True)


@hub_app.callback()
def hub_group():
    """pdefm's own Hub-compatible server (keeps `serve` a subcommand)."""


@hub_app.command("serve")
def hub_serve(
    root: Path = typer.Option(..., help="Folder holding the repositories (created if missing)."),
    port: int = typer.Option(8080, help="TCP port."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 to serve a cluster)."),
    token: str = typer.Option(None, help="Write token (default: $HF_TOKEN, else generated in ROOT/.token)."),
):
    """Serve a disk-backed, Hub-compatible server; clients use HF_ENDPOINT=http://HOST:PORT."""
    from foundation.hub.server import serve

    serve(root, port, token, host)
