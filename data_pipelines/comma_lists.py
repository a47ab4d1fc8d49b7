"""Comma-separated command-line lists ("a,b,c", "2,4,8"), parsed one way for every `pdefm` command."""

from __future__ import annotations

import typer


def names(spec: str | None) -> list[str] | None:
    """ "a, b,,c" -> ["a", "b", "c"]; None or "" -> None (the option's default)."""
    return [v.strip() for v in spec.split(",") if v.strip()] if spec else None


def integers(spec: str, option: str) -> list[int]:
    """ "2,4,8" -> [2, 4, 8]; anything else is a usage error naming `option`."""
    try:
        return [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated integers, got {spec!r}", param_hint=option
        ) from None
