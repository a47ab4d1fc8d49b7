"""`pdefm pretrain`, `pdefm push` and `pdefm hub ...`."""

from __future__ import annotations

import typer

pretrain_app = typer.Typer(help="Pretrain scOT on a streamed corpus (run under `accelerate launch`).")
push_app = typer.Typer(help="Upload a checkpoint folder with its model card to the Hub.")
hub_app = typer.Typer(help="pdefm's own Hub-compatible server for offline clusters.", no_args_is_help=True)
