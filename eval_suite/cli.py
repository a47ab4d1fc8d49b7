"""`pdefm eval ...` studies and `pdefm quickstart`."""

from __future__ import annotations

from pathlib import Path

import typer

from data_pipelines.comma_lists import integers, names
from eval_suite.quickstart import QuickstartConfig

eval_app = typer.Typer(help="Zero-shot, few-shot and scaling-law studies with reports.", no_args_is_help=True)
quickstart_app = typer.Typer(help="The whole product end to end, offline, on a laptop.")
QS = QuickstartConfig()  # the quickstart's embedded defaults


HORIZON_HELP = {
    "input": "Snapshot the prediction starts from (persistence returns it as its prediction).",
    "target": "Snapshot predicted (default: the last).",
    "lead": "Instead of --target-index: the lead time as a fraction of the trajectory span (e.g. 0.3).",
}


def _lr_scales(spec: str | None) -> dict[str, float]:
    """ "full=2,fno=0.5" -> {"full": 2.0, "fno": 0.5}; anything else is a usage error."""
    scales = {}
    for item in names(spec) or []:
        name, _, value = item.partition("=")
        try:
            scales[name.strip()] = float(value)
        except ValueError:
            raise typer.BadParameter(
                f"expected NAME=FACTOR pairs, got {item!r}", param_hint="--lr-scales"
            ) from None
    return scales


def _factors(spec: str | None) -> list[float] | None:
    """ "0.33,1,3" -> [0.33, 1.0, 3.0]; None stays None; anything else is a usage error."""
    try:
        return [float(v) for v in names(spec)] if spec else None
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers, got {spec!r}", param_hint="--lr-grid"
        ) from None


def _budget(epochs: int, max_steps: int | None, batch_size: int, lr: float, device: str):
    from eval_suite.studies.candidates import Budget

    return Budget(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, device=device)


@eval_app.command("few-shot")
def few_shot(
    data: str = typer.Option(
        ..., help="Trajectories: a file (netCDF/HDF5/PDEBench/Well/numpy), corpus folder or Hub id."
    ),
    out: Path = typer.Option(..., help="Report folder (report.md, metrics.json, PNGs)."),
    model: str = typer.Option(None, help="Pretrained checkpoint (Hub id or folder) for the methods."),
    shots: str = typer.Option("2,4,8,16,32,64", help="Training trajectories, comma-separated."),
    seeds: str = typer.Option("0,1,2", help="Seeds, comma-separated (error bars over them)."),
    candidates: str = typer.Option(
        "full,fno,unet,scot_scratch",
        help="Methods (full, lora, physguard) and baselines (fno, unet, scot_scratch).",
    ),
    sim_data: str = typer.Option(
        None, help="physguard: simulation (pretraining) data to protect: corpus folder, file or Hub id."
    ),
    fields: str = typer.Option(None, help="Comma-separated fields of the data to use (default: all)."),
    channels: str = typer.Option(
        "auto",
        help="Methods map the fields onto the checkpoint's same-named channels (same), onto new "
        "embedding/recovery channels (fresh: new physics under a familiar name), or auto (fresh for a PDE "
        "family the checkpoint was not trained on).",
    ),
    val: int = typer.Option(2, help="Validation trajectories per run."),
    test: int = typer.Option(8, help="Test trajectories, fixed for the whole study."),
    mode: str = typer.Option("direct", help="direct (one jump to the target snapshot) or rollout."),
    rollout_stride: int = typer.Option(1, help="rollout: snapshots per autoregressive step."),
    input_index: int = typer.Option(0, help=HORIZON_HELP["input"]),
    target_index: int = typer.Option(None, help=HORIZON_HELP["target"]),
    lead_time: float = typer.Option(None, help=HORIZON_HELP["lead"]),
    epochs: int = typer.Option(20, help="Epochs per run (every candidate)."),
    max_steps: int = typer.Option(None, help="Cap on optimizer steps per run (every candidate)."),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(5e-4, help="Baselines' learning rate (methods use their own recipes)."),
    lr_scales: str = typer.Option(
        None, help="Per-candidate factors on the learning rates, e.g. full=2,fno=0.5 (default 1)."
    ),
    lr_grid: str = typer.Option(
        None,
        help="Choose each candidate's learning-rate factor from these (e.g. 0.33,1,3) on the validation "
        "split, per shot count; the report lists the choices.",
    ),
    device: str = typer.Option("cpu"),
) -> None:
    """Error against number of trajectories for methods and baselines, with AG/EG over FNO, scOT from scratch
    and persistence; the report's first line says whether pretraining helped."""
    from eval_suite.studies.few_shot import FewShotConfig, run_few_shot

    config = FewShotConfig(
        shots=integers(shots, "--shots"),
        seeds=integers(seeds, "--seeds"),
        candidates=names(candidates),
        n_val=val,
        n_test=test,
        mode=mode,
        rollout_stride=rollout_stride,
        input_index=input_index,
        target_index=target_index,
        lead_time=lead_time,
        fields=names(fields),
        channels=channels,
        budget=_budget(epochs, max_steps, batch_size, lr, device),
        sim_data=sim_data,
        lr_scales=_lr_scales(lr_scales),
        lr_grid=_factors(lr_grid),
    )
    metrics = run_few_shot(data, out, model=model, config=config, log=typer.echo)
    typer.echo(
        f"{metrics['verdict']}\nwrote {out / 'report.md'}; AG over FNO: {metrics['accuracy_gain_over_fno']}"
    )


@eval_app.command("zero-shot")
def zero_shot(
    model: str = typer.Option(..., help="Pretrained checkpoint (Hub id or folder)."),
    out: Path = typer.Option(..., help="Report folder."),
    data: list[str] = typer.Option([], help="Evaluation data file(s); repeat the option for several."),
    family: list[str] = typer.Option(
        [], help="Built-in family to generate, NAME or NAME:coef=lo:hi,...; repeatable."
    ),
    trajectories: int = typer.Option(8, help="Trajectories per generated family."),
    resolution: int = typer.Option(64),
    snapshots: int = typer.Option(11),
    seed: int = typer.Option(1234, help="Seed of the generated sets."),
    mode: str = typer.Option("direct", help="direct or rollout."),
    rollout_stride: int = typer.Option(1),
    input_index: int = typer.Option(0, help=HORIZON_HELP["input"]),
    target_index: int = typer.Option(None, help=HORIZON_HELP["target"]),
    lead_time: float = typer.Option(None, help=HORIZON_HELP["lead"]),
    stats: str = typer.Option(
        None, help="stats.json to normalise with (default: each set's own statistics)."
    ),
) -> None:
    """A checkpoint, untouched, on unseen families and unseen coefficients, beside persistence."""
    from eval_suite.studies.zero_shot import ZeroShotConfig, run_zero_shot

    config = ZeroShotConfig(
        trajectories=trajectories,
        resolution=resolution,
        snapshots=snapshots,
        seed=seed,
        mode=mode,
        rollout_stride=rollout_stride,
        stats=stats,
        input_index=input_index,
        target_index=target_index,
        lead_time=lead_time,
    )
    metrics = run_zero_shot(model, out, data=data, families=family, config=config, log=typer.echo)
    typer.echo(f"{metrics['verdict']}\nwrote {out / 'report.md'}")


@eval_app.command("scaling")
def scaling(
    axis: str = typer.Option(..., help="model | data | families | compute."),
    out: Path = typer.Option(..., help="Report folder (with --runs absent: also the runs and corpora)."),
    runs: str = typer.Option(
        None,
        help="Pretraining runs to fit, comma-separated: `pdefm pretrain` folders or Hub model ids "
        "(without it, small runs are pretrained here along the axis).",
    ),
    tasks: str = typer.Option(
        None, help="--runs: downstream tasks (NAME.MODE) giving each run's error (default: all shared)."
    ),
    metric: str = typer.Option("rel_l1", help="--runs: the downstream metric."),
    evaluate: list[str] = typer.Option(
        [],
        help="--runs: evaluate runs without downstream records on this task, in the --downstream spec "
        "syntax ('burgers few-shot:4 input=2'); repeatable.",
    ),
    values: str = typer.Option(
        None, help="Axis values, comma-separated (widths, trajectories per family, number of families)."
    ),
    families: str = typer.Option("ns_sines,ns_shear_layer,ns_gauss", help="Pretraining families, in order."),
    target_family: str = typer.Option("burgers", help="families axis: the held-out target family."),
    target_shots: int = typer.Option(4, help="families axis: few-shot trajectories of the target."),
    trajectories: int = typer.Option(8, help="Pretraining trajectories per family (all axes but data)."),
    embed_dim: int = typer.Option(16, help="Model width (data and families axes)."),
    resolution: int = typer.Option(32),
    snapshots: int = typer.Option(5),
    test: int = typer.Option(4, help="Held-out trajectories per downstream task."),
    seeds: str = typer.Option("0", help="Seeds, comma-separated (one run per value and seed)."),
    bootstrap: int = typer.Option(0, help="Bootstrap resamples for the fit's intervals (0: covariance)."),
    steps: int = typer.Option(200, help="Pretraining steps of every run."),
    finetune_steps: int = typer.Option(50, help="families axis: few-shot steps at each evaluation."),
    evaluations: int = typer.Option(4, help="Downstream evaluations during each run."),
    batch_size: int = typer.Option(8),
    lr: float = typer.Option(1e-3, help="Pretraining learning rate."),
    input_index: int = typer.Option(0, help=HORIZON_HELP["input"]),
    target_index: int = typer.Option(None, help=HORIZON_HELP["target"]),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
) -> None:
    """Fit downstream error against parameters, data, families or compute: across existing pretraining runs
    (--runs), or pretraining small runs here along the axis (the same records and fit)."""
    if runs:
        from eval_suite.studies.scaling_runs import RunsScalingConfig, run_scaling_runs

        config = RunsScalingConfig(
            axis=axis,
            tasks=names(tasks),
            metric=metric,
            evaluate=list(evaluate),
            bootstrap=bootstrap,
            device=device,
        )
        metrics = run_scaling_runs(names(runs), out, config=config, log=typer.echo)
    else:
        from eval_suite.studies.scaling import ScalingConfig, run_scaling

        config = ScalingConfig(
            axis=axis,
            values=integers(values, "--values") if values else None,
            families=names(families),
            target_family=target_family,
            target_shots=target_shots,
            trajectories=trajectories,
            embed_dim=embed_dim,
            resolution=resolution,
            snapshots=snapshots,
            n_test=test,
            seeds=integers(seeds, "--seeds"),
            bootstrap=bootstrap,
            steps=steps,
            batch_size=batch_size,
            learning_rate=lr,
            finetune_steps=finetune_steps,
            evaluations=evaluations,
            input_index=input_index,
            target_index=target_index,
            device=device,
        )
        metrics = run_scaling(out, config=config, log=typer.echo)
    typer.echo(f"{metrics['verdict']}\nwrote {out / 'report.md'}")


@quickstart_app.command()
def quickstart(
    out: Path = typer.Option(QS.out, help="Output folder (report.md, metrics.json, figures)."),
    minutes: float = typer.Option(
        QS.minutes, help="Wall-clock target on 2 CPU cores; pretraining gets 40% of it."
    ),
    held_out: str = typer.Option(
        QS.held_out, help="PDE family kept out of pretraining and adapted few-shot."
    ),
    trajectories: int = typer.Option(QS.trajectories, help="Trajectories per pretraining family."),
    pretrain_steps: int = typer.Option(
        QS.pretrain_steps, help="Pretraining optimizer steps (capped by the time budget)."
    ),
    shots: str = typer.Option(
        ",".join(map(str, QS.shots)), help="Few-shot training trajectories, comma-separated."
    ),
    seeds: str = typer.Option(
        ",".join(map(str, QS.seeds)), help="Seeds of the few-shot runs, comma-separated."
    ),
    finetune_steps: int = typer.Option(
        QS.finetune_steps, help="Optimizer steps of every few-shot run (methods and baselines)."
    ),
) -> None:
    """Run pdefm end to end offline: local Hub, generated corpus, pretraining, few-shot adaptation, report.

    Reruns reuse the corpus, the pretrained model and the finished study in OUT.
    """
    from eval_suite.quickstart import run_quickstart

    config = QuickstartConfig(
        out=out,
        minutes=minutes,
        held_out=held_out,
        trajectories=trajectories,
        pretrain_steps=pretrain_steps,
        shots=tuple(integers(shots, "--shots")),
        seeds=tuple(integers(seeds, "--seeds")),
        finetune_steps=finetune_steps,
    )
    run_quickstart(config)
