"""`pdefm pretrain`, `pdefm push` and `pdefm hub ...`."""

from __future__ import annotations

from pathlib import Path

import click
import typer

from data_pipelines.comma_lists import names

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
):
    """Upload a checkpoint with its model card; HF_ENDPOINT selects the Hub (huggingface.co when unset)."""
    from foundation.hub.push import push_checkpoint

    typer.echo(push_checkpoint(checkpoint, repo_id, revision=revision, private=private))


@pretrain_app.command()
def pretrain(
    ctx: typer.Context,
    config: Path = typer.Option(
        None, "--config", help="YAML file of settings; flags given here override it."
    ),
    corpus: str = typer.Option(None, help="Corpus folders / Hub dataset ids, comma separated."),
    preset: str = typer.Option("tiny", help="Model size: tiny, T, B, L."),
    image_size: int = typer.Option(None, help="Model resolution (default: the preset's)."),
    families: str = typer.Option(
        None, help="Families to use, comma separated (default: all in the corpora)."
    ),
    eval_corpus: str = typer.Option(None, help="Held-out corpora for periodic evaluation, comma separated."),
    out: Path = typer.Option(Path("pretrain-out"), help="Output folder: checkpoints, logs, final model."),
    max_steps: int = typer.Option(1000, help="Optimizer steps (also the length of the cosine schedule)."),
    max_minutes: float = typer.Option(None, help="Stop (with a checkpoint) after this many minutes."),
    batch_size: int = typer.Option(8, help="Examples per process and micro-batch."),
    grad_accum: int = typer.Option(1, help="Micro-batches per optimizer step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate."),
    weight_decay: float = typer.Option(0.1, help="AdamW weight decay (not on norms and biases)."),
    warmup_steps: int = typer.Option(50, help="Linear warmup steps."),
    max_grad_norm: float = typer.Option(5.0, help="Gradient clipping norm."),
    mixed_precision: str = typer.Option("auto", help="auto | no | bf16 | fp16."),
    gradient_checkpointing: bool = typer.Option(False, help="Recompute activations to save memory."),
    compile_blocks: bool = typer.Option(
        False, help="torch.compile each Swin/ConvNeXt block: faster steps after a one-off compile (cached)."
    ),
    num_workers: int = typer.Option(0, help="DataLoader workers per process."),
    pairs_per_trajectory: int = typer.Option(None, help="Random pairs per trajectory (default: all2all)."),
    eval_every: int = typer.Option(100, help="Evaluate every N steps."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint every N steps."),
    seed: int = typer.Option(0, help="Seed of initialisation and data order."),
    log_with: str = typer.Option(
        "tensorboard", help="Trackers: tensorboard, wandb, trackio (comma separated) or none."
    ),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoints/latest."),
    push_to: str = typer.Option(None, help="Push the final model to this Hub repo, org/name."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
):
    """Pretrain scOT on streamed corpora; run under `accelerate launch` for several processes or GPUs."""
    from foundation.pretrain.config import PretrainConfig
    from foundation.pretrain.loop import pretrain as run

    values = {
        "corpus": names(corpus),
        "preset": preset,
        "families": names(families),
        "eval_corpus": names(eval_corpus),
        "out": str(out),
        "max_steps": max_steps,
        "max_minutes": max_minutes,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "learning_rate": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "max_grad_norm": max_grad_norm,
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
        "compile_blocks": compile_blocks,
        "num_workers": num_workers,
        "pairs_per_trajectory": pairs_per_trajectory,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
        "log_with": log_with,
        "resume": resume,
        "push_to": push_to,
        "progress": progress,
    }
    if image_size is not None:
        values["model_overrides"] = {"image_size": image_size}
    if config is not None:
        # only flags given on the command line override the file
        given = {
            k: v
            for k, v in values.items()
            if ctx.get_parameter_source(_PARAM.get(k, k)) == click.core.ParameterSource.COMMANDLINE
        }
        cfg = PretrainConfig.from_yaml(config, **given)
    else:
        if not values["corpus"]:
            raise typer.BadParameter("give --corpus (or --config FILE)", param_hint="--corpus")
        cfg = PretrainConfig(**values)
    summary = run(cfg)
    typer.echo(
        f"done: {summary['steps']} steps, final train loss {summary['final_train_loss']:.4g} -> {cfg.out}"
    )


_PARAM = {"learning_rate": "lr", "model_overrides": "image_size"}
