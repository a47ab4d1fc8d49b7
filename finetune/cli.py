"""`pdefm finetune`: few-shot adaptation of a pretrained checkpoint."""

from __future__ import annotations

import typer

app = typer.Typer(help="Adapt a pretrained model few-shot: full, LoRA, meta-learning or PhysGuard.")
