"""`pdefm data ...`: list PDE families, generate, inspect, convert and push corpora."""

from __future__ import annotations

import typer

app = typer.Typer(help="Generate, inspect, convert and push multi-PDE corpora.", no_args_is_help=True)


@app.command("families")
def families() -> None:
    """List the registered PDE families, one a line: name, fields, coefficient ranges, horizon."""
    from data_pipelines.solvers import get_family, list_families

    for name in list_families():
        fam = get_family(name)
        ranges = ", ".join(f"{k}=[{lo:g}, {hi:g}]" for k, (lo, hi) in fam.coefficient_ranges.items()) or "-"
        horizon = "steady" if fam.steady else f"T={fam.horizon:g}"
        typer.echo(f"{name:<16} fields={','.join(fam.fields):<12} {horizon:<8} bc={fam.bc:<9} {ranges}")
