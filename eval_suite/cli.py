"""`pdefm eval ...` studies and `pdefm quickstart`."""

from __future__ import annotations

import typer

eval_app = typer.Typer(help="Zero-shot, few-shot and scaling-law studies with reports.", no_args_is_help=True)
quickstart_app = typer.Typer(help="The whole product end to end, offline, on a laptop.")
