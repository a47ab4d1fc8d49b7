"""`pdefm data ...`: list PDE families, generate, inspect, convert, reshard, verify and push corpora."""

from __future__ import annotations

import typer

from data_pipelines import comma_lists

app = typer.Typer(
    help="Generate, inspect, convert, reshard, verify and push multi-PDE corpora.", no_args_is_help=True
)


@app.command("families")
def families() -> None:
    """List the registered PDE families, one a line: name, fields, coefficient ranges, horizon."""
    from data_pipelines.solvers import get_family, list_families

    for name in list_families():
        fam = get_family(name)
        ranges = ", ".join(f"{k}=[{lo:g}, {hi:g}]" for k, (lo, hi) in fam.coefficient_ranges.items()) or "-"
        horizon = "steady" if fam.steady else f"T={fam.horizon:g}"
        typer.echo(f"{name:<16} fields={','.join(fam.fields):<12} {horizon:<8} bc={fam.bc:<9} {ranges}")


def _process_part(shard_index: int | None, num_shards: int | None) -> tuple[int, int]:
    """This process's part of the generation: the options, else RANK/WORLD_SIZE (torchrun, accelerate)."""
    import os

    index = shard_index if shard_index is not None else int(os.environ.get("RANK", 0))
    count = num_shards if num_shards is not None else int(os.environ.get("WORLD_SIZE", 1))
    if (shard_index is None) != (num_shards is None):
        raise typer.BadParameter("give both --shard-index and --num-shards, or neither")
    return index, count


@app.command("generate")
def generate(
    out: str = typer.Option(..., "--out", help="Corpus folder (created; an existing one resumes)."),
    families: str = typer.Option("all", "--families", help="'all' or comma-separated family names."),
    trajectories: int = typer.Option(64, "--trajectories", help="Trajectories per family."),
    resolution: int = typer.Option(64, "--resolution"),
    snapshots: int = typer.Option(21, "--snapshots"),
    seed: int = typer.Option(0, "--seed"),
    shard_mb: float = typer.Option(
        256.0, "--shard-mb", help="Target shard size in MiB (rows per shard follow from the row size)."
    ),
    shard_size: int = typer.Option(
        None, "--shard-size", help="Trajectories per parquet shard (overrides --shard-mb)."
    ),
    shard_index: int = typer.Option(
        None,
        "--shard-index",
        help="This process's part (0-based) of the work, e.g. a job-array index; default $RANK.",
    ),
    num_shards: int = typer.Option(
        None, "--num-shards", help="How many processes share the work; default $WORLD_SIZE, else 1."
    ),
    threads: int = typer.Option(
        1, "--threads", help="Torch threads per process on CPU (part of the settings: floats depend on it)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (under a launcher: cuda:$LOCAL_RANK)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip and count NaN/Inf trajectories."),
) -> None:
    """Generate a sharded parquet corpus with stats.json and a dataset card; reruns resume.

    N processes (`accelerate launch`/`torchrun`, or a job array with --shard-index/--num-shards) each
    write their own shards of the same corpus one process would write; the last to finish merges the
    statistics."""
    import os

    from data_pipelines.corpus import generate_corpus
    from data_pipelines.solvers import resolve_families

    index, count = _process_part(shard_index, num_shards)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
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
        shard_mb=shard_mb,
        process_index=index,
        num_processes=count,
        threads=threads,
    )
    if stats is None:
        typer.echo(
            f"{out}: part {index + 1}/{count} done; the part that finishes last writes stats.json "
            f"(or rerun with the same settings to finish)"
        )
    else:
        typer.echo(f"{out}: {stats['count']} trajectories, {len(stats['families'])} families")


@app.command("inspect")
def inspect(
    path: str = typer.Argument(..., help="Corpus folder."),
    png: str = typer.Option(None, "--png", help="Preview image path (default DIR/preview.png)."),
) -> None:
    """Print a summary table with each family's health (from the files) and write a preview PNG."""
    from data_pipelines.inspect_corpus import inspect_corpus

    typer.echo(f"preview: {inspect_corpus(path, png)}")


@app.command("reshard")
def reshard(
    path: str = typer.Argument(..., help="Corpus folder."),
    shards: int = typer.Option(
        None, "--shards", help="Shards per family, e.g. a multiple of ranks x workers."
    ),
    shard_mb: float = typer.Option(None, "--shard-mb", help="Target shard size in MiB."),
) -> None:
    """Rewrite a corpus into N shards per family (or shards of X MiB) without changing its rows."""
    from data_pipelines.corpus import reshard_corpus

    stats = reshard_corpus(path, shards=shards, shard_mb=shard_mb)
    layout = ", ".join(f"{f} {len(i['shards'])}" for f, i in stats["families"].items())
    typer.echo(f"{path}: {stats['count']} trajectories; shards per family: {layout}")


@app.command("verify")
def verify(path: str = typer.Argument(..., help="Corpus folder.")) -> None:
    """Check every shard against stats.json (presence, extra files, size, sha256, row count)."""
    from pathlib import Path

    from data_pipelines.corpus import CorpusError, verify_corpus

    problems, hashed = verify_corpus(Path(path), progress=True)
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise CorpusError(f"{path}: {len(problems)} damaged or unexpected shard(s); first: {problems[0]}")
    typer.echo(f"{path}: ok, {hashed / 2**20:.1f} MiB of shards match stats.json")


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
