"""`pdefm data ...`: list PDE families, generate, inspect, convert and push corpora."""

from __future__ import annotations

import typer

app = typer.Typer(help="Generate, inspect, convert and push multi-PDE corpora.", no_args_is_help=True)
