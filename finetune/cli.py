"""`pdefm finetune`: few-shot adaptation of a pretrained checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from data_pipelines.comma_lists import names

app = typer.Typer(help="Adapt a pretrained model few-shot: full, LoRA, meta-learning or PhysGuard.")


@app.command()
def finetune(
    model: str = typer.Option(..., help="Checkpoint: Hub id (org/name) or local folder (pdefm or Poseidon)."),
    data: str = typer.Option(
        ..., help="Trajectories: a file (netCDF/HDF5/PDEBench/Well/numpy), corpus folder or Hub id."
    ),
    shots: int = typer.Option(..., help="Training trajectories (all2all pairs are built within them)."),
    method: str = typer.Option("full", help="full | lora | meta | physguard."),
    out: Path = typer.Option(Path("finetune-out"), help="Output folder for the model/adapter and records."),
    fields: str = typer.Option(
        None, help="Comma-separated fields of the data to use, in order (default: all)."
    ),
    val: int = typer.Option(1, help="Validation trajectories (best epoch chosen on them)."),
    test: int = typer.Option(1, help="Test trajectories (scored once at the end)."),
    epochs: int = typer.Option(20, help="Epochs (meta: passes over the training tasks)."),
    batch_size: int = typer.Option(8, help="Examples per batch."),
    lr: float = typer.Option(
        None, help="Main learning rate: backbone (full/physguard), adapter (lora), outer (meta)."
    ),
    lr_embedding: float = typer.Option(5e-4, help="full/physguard: embedding and recovery learning rate."),
    lr_time: float = typer.Option(5e-4, help="full/physguard: time-conditioned norm learning rate."),
    seed: int = typer.Option(0, help="Seed of the split, shuffling and initialisation."),
    device: str = typer.Option("cpu", help="torch device."),
    normalization: str = typer.Option(
        "train", help="'train' (training-split statistics), a stats.json, or 'none'."
    ),
    surgery: bool = typer.Option(True, help="Allow replacing embedding/recovery when the fields differ."),
    lora_rank: int = typer.Option(8, help="lora: adapter rank."),
    lora_alpha: float = typer.Option(16.0, help="lora: adapter alpha (scale alpha/rank)."),
    merge: bool = typer.Option(False, help="lora: also write the adapter merged into a plain model."),
    meta_algorithm: str = typer.Option("fomaml", help="meta: fomaml | reptile."),
    inner_steps: int = typer.Option(5, help="meta: inner SGD steps per task."),
    inner_lr: float = typer.Option(1e-2, help="meta: inner learning rate."),
    learn_inner_lr: bool = typer.Option(False, help="meta: learn a per-task inner learning rate."),
    sim_data: str = typer.Option(
        None, help="physguard: simulation data whose Fisher directions are protected."
    ),
    basis: Path = typer.Option(
        None, help="physguard: a cached physguard_basis.safetensors instead of sim data."
    ),
    tau: float = typer.Option(0.9, help="physguard: cumulative eigen-energy cutoff."),
    alpha: float = typer.Option(1.0, help="physguard: projection strength."),
    fisher_samples: int = typer.Option(200, help="physguard: simulation examples for the Fisher."),
    max_rank: int = typer.Option(200, help="physguard: maximum protected rank per tensor."),
    push_to: str = typer.Option(None, help="Push the model (or adapter) to this Hub repo, org/name."),
) -> None:
    """Fine-tune MODEL on DATA with SHOTS trajectories and save the result to OUT."""
    from rich.console import Console

    from finetune.api import METHODS
    from finetune.api import finetune as run
    from finetune.methods.full import FullOptions
    from finetune.methods.lora import LoraOptions
    from finetune.methods.meta import MetaOptions
    from finetune.methods.physguard import PhysGuardOptions

    if method not in METHODS:
        raise typer.BadParameter(
            f"unknown method {method!r}; choose from {', '.join(METHODS)}", param_hint="--method"
        )
    console = Console(stderr=True)

    def log(row: dict) -> None:
        console.print(
            f"epoch {row['epoch']:>3}  step {row['step']:>5}  train {row['train_loss']:.4g}  val {row['val_loss']:.4g}"
        )

    full = FullOptions(**({"lr_backbone": lr} if lr else {}), lr_embedding=lr_embedding, lr_time=lr_time)
    lora = LoraOptions(rank=lora_rank, alpha=lora_alpha, **({"lr": lr} if lr else {}))
    meta = MetaOptions(
        algorithm=meta_algorithm,
        inner_steps=inner_steps,
        inner_lr=inner_lr,
        learn_inner_lr=learn_inner_lr,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        **({"outer_lr": lr} if lr else {}),
    )
    physguard = PhysGuardOptions(tau=tau, alpha=alpha, n_samples=fisher_samples, max_rank=max_rank, seed=seed)
    try:
        result = run(
            model,
            data,
            shots,
            method,
            out,
            fields=names(fields),
            n_val=val,
            n_test=test,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            device=device,
            normalization=None if normalization == "none" else normalization,
            allow_surgery=surgery,
            full=full,
            lora=lora,
            meta=meta,
            physguard=physguard,
            sim_data=sim_data,
            basis=basis,
            merge=merge,
            push_to=push_to,
            log=log,
        )
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(
        f"best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} "
        f"(start {result.initial_val_loss:.4g}); test loss {result.test_loss}"
    )
    for name in ("model_path", "adapter_path", "merged_path", "basis_path", "inner_lr_path"):
        path = getattr(result, name)
        if path is not None:
            console.print(f"{name.removesuffix('_path')}: {path}")
    if result.pushed_to:
        console.print(f"pushed to {result.pushed_to}")
