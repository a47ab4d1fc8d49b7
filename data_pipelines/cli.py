"""`pdefm data ...`: list PDE families, generate, inspect, convert and push corpora."""

from __future__ import annotations

import typer

from data_pipelines import comma_lists

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


@app.command("generate")
def generate(
    out: str = typer.Option(..., "--out", help="Corpus folder (created; an existing one resumes)."),
    families: str = typer.Option("all", "--families", help="'all' or comma-separated family names."),
    trajectories: int = typer.Option(64, "--trajectories", help="Trajectories per family."),
    resolution: int = typer.Option(64, "--resolution"),
    snapshots: int = typer.Option(21, "--snapshots"),
    seed: int = typer.Option(0, "--seed"),
    shard_size: int = typer.Option(32, "--shard-size", help="Trajectories per parquet shard."),
    device: str = typer.Option("cpu", "--device"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip and count NaN/Inf trajectories."),
) -> None:
    """Generate a sharded parquet corpus with stats.json and a dataset card; reruns resume."""
    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers import resolve_families

    stats = generate_corpus(
        out,
        resolve_families(families),
        trajectories,
        resolution,
        snapshots,
        seed,
        shard_size,
        device,
        on_invalid="skip" if skip_invalid else "error",
    )
    typer.echo(f"{out}: {stats['count']} trajectories, {len(stats['families'])} families")


@app.command("inspect")
def inspect(
    path: str = typer.Argument(..., help="Corpus folder."),
    png: str = typer.Option(None, "--png", help="Preview image path (default DIR/preview.png)."),
) -> None:
    """Print a summary table and write a preview PNG of snapshots per family."""
    from data_pipelines.inspect_corpus import inspect_corpus

    typer.echo(f"preview: {inspect_corpus(path, png)}")


@app.command("convert")
def convert(
    sources: list[str] = typer.Argument(
        ..., help="Poseidon .nc/.h5, PDEBench .h5/.hdf5, The Well .hdf5, .npy/.npz"
    ),
    out: str = typer.Option(..., "--out", help="New corpus folder."),
    fields: str = typer.Option(None, "--fields", help="Comma-separated field names in channel order."),
    pde: str = typer.Option(None, "--pde", help="Family id for the converted data (default: file name)."),
    variable: str = typer.Option(None, "--variable", help="Poseidon: the data variable name."),
    format: str = typer.Option(
        None, "--format", help="numpy | poseidon | pdebench | well (default: detected from the file)."
    ),
    split_complex: bool = typer.Option(
        False, "--split-complex", help="Store each complex channel as two real ones (real, imaginary)."
    ),
    shard_size: int = typer.Option(32, "--shard-size"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip and count NaN/Inf trajectories."),
) -> None:
    """Convert user files into a pdefm corpus."""
    from data_pipelines.corpus import DATA_DIR, write_corpus
    from data_pipelines.formats import check_format, read_any
    from data_pipelines.paths import inside, safe_name

    check_format(format)
    if pde is not None:
        safe_name(pde, "--pde")
    trajs = []
    for src in sources:
        trajs += read_any(
            src,
            format=format,
            fields=comma_lists.names(fields),
            pde=pde,
            variable=variable,
            split_complex=split_complex,
        )
    for name in sorted({t.pde for t in trajs}):  # each family id becomes the folder DATA_DIR/<pde>
        inside(out, DATA_DIR, safe_name(name, "family id (pde)"))
    stats = write_corpus(
        out, trajs, shard_size, on_invalid="skip" if skip_invalid else "error", source=",".join(sources)
    )
    skipped = sum(stats["skipped"].values())
    typer.echo(f"{out}: {stats['count']} trajectories written, {skipped} skipped")


@app.command("push")
def push(
    path: str = typer.Argument(..., help="Corpus folder."),
    repo_id: str = typer.Argument(..., help="Hub dataset repo, org/name."),
    private: bool = typer.Option(False, "--private"),
) -> None:
    """Upload a corpus folder as a Hub dataset repo (streamable with load_dataset(id, streaming=True))."""
    from data_pipelines.corpus import push_corpus

    typer.echo(push_corpus(path, repo_id, private))
