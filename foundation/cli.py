"""`pdefm pretrain`, `pdefm push` and `pdefm hub ...`."""

from __future__ import annotations

from pathlib import Path

import typer

from data_pipelines.comma_lists import names
from data_pipelines.settings import SettingsCommand, settings_command

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
    token_file: Path = typer.Option(
        None, help="File holding the write token (default: $PDEFM_HUB_TOKEN, $HF_TOKEN, else ROOT/.token)."
    ),
    max_upload_mb: float = typer.Option(50_000, help="Largest request body in MB; larger ones get 413."),
    lfs_threshold_mb: float = typer.Option(
        10, help="Files this large (MB) or larger, and binary files, go through Xet or LFS instead of inline."
    ),
    token: str = typer.Option(None, hidden=True, help="Refused: use --token-file."),
):
    """Serve a disk-backed, Hub-compatible server; clients use HF_ENDPOINT=http://HOST:PORT."""
    from foundation.hub.server import TOKEN_ARGV_REFUSED, serve

    if token is not None:
        raise typer.BadParameter(TOKEN_ARGV_REFUSED, param_hint="--token")
    serve(root, port, host, token_file, max_upload_mb, lfs_threshold_mb)


@push_app.command()
def push(
    checkpoint: Path = typer.Argument(
        ..., help="Checkpoint folder (config.json + model.safetensors) or a pretrain --out."
    ),
    repo_id: str = typer.Argument(..., help="Target model repo, org/name."),
    revision: str = typer.Option(None, help="Branch to push to (created from main if missing)."),
    private: bool = typer.Option(False, help="Create the repo private."),
    siblings: str = typer.Option(
        None, help="Sibling runs (folders or Hub ids), comma separated: the card ranks the model among them."
    ),
):
    """Upload a checkpoint with its model card; HF_ENDPOINT selects the Hub (huggingface.co when unset)."""
    from foundation.hub.push import push_checkpoint

    url = push_checkpoint(checkpoint, repo_id, revision=revision, private=private, siblings=names(siblings))
    typer.echo(url)


def _pretrain_params() -> list:
    """`pdefm pretrain`'s options: one per PretrainConfig field (--lr for learning_rate) and --image-size."""
    from data_pipelines.settings import Param, dataclass_params
    from foundation.pretrain.config import PretrainConfig

    image_size = Param(
        dest=("model_overrides", "image_size"),
        flags=("--image-size",),
        annotation=int | None,
        help="Model resolution (sets model_overrides.image_size; default: the preset's).",
    )
    params = dataclass_params(PretrainConfig, flags={"learning_rate": "--lr"}, flag_values={"resume": "must"})
    return [*params, image_size]


@pretrain_app.command(cls=SettingsCommand)
@settings_command(_pretrain_params)
def pretrain(
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML file of settings; flags given here override it (mappings merged key by key).",
    ),
    settings: dict | None = None,
):
    """Pretrain scOT on streamed corpora; run under `accelerate launch` for several processes or GPUs."""
    from data_pipelines.settings import resolve
    from foundation.pretrain.config import PretrainConfig
    from foundation.pretrain.loop import pretrain as run

    try:
        cfg = resolve(PretrainConfig, settings or {}, config)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    summary = run(cfg)
    typer.echo(
        f"done: {summary['steps']} steps, final train loss {summary['final_train_loss']:.4g} -> {cfg.out}"
    )
