"""`pdefm finetune`: few-shot adaptation of a pretrained checkpoint.

Its options are generated: one per field of `FinetuneJob`, `InputOptions` and `TrainConfig`, and one per
option of every registered method (`finetune.methods.registry`); a method option applies to the method
chosen with `--method`, and one whose name is also a job or training setting is prefixed with the method
(`--lora-lr`). `--lr` also sets the chosen method's main learning rate. `--config run.yaml` holds the same
settings as a mapping (sections `inputs`, `train` and `options`), deep-merged under the flags.
`--plugin my_module` imports a module that registers more methods before the options are built.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import typer

from data_pipelines.comma_lists import names
from data_pipelines.settings import (
    Param,
    SettingsCommand,
    dataclass_params,
    deep_merge,
    default_of,
    field_docs,
    field_param,
    flag_name,
    from_mapping,
    load_yaml,
    settings_command,
)


@dataclass
class FinetuneJob:
    """One `pdefm finetune` run: what to adapt, on which data, by which method, and where to write it."""

    model: str
    """Checkpoint: Hub id (org/name) or local folder (pdefm or Poseidon)."""
    data: str
    """Trajectories: a file (netCDF/HDF5/PDEBench/Well/numpy), a folder of them, a corpus folder or Hub id."""
    shots: int
    """Training trajectories (all2all pairs are built within them)."""
    method: str = "full"
    """Adaptation method (registered: see --help)."""
    out: str = "finetune-out"
    """Output folder: model or adapter, records, and the run's checkpoints under OUT/run."""
    push_to: str | None = None
    """Push the model (or adapter) to this Hub repo, org/name."""
    plugin: list[str] = field(default_factory=list)
    """Modules to import first: they register more methods."""
    inputs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


SECTIONS = ("inputs", "train", "options")
TRAIN_HELP = {
    "out": "Run folder of checkpoints and metrics.jsonl, for --resume (default: OUT/run).",
    "lr": "Learning rate; also sets the chosen method's main learning rate (see its options).",
    "epochs": "Passes over the training pairs (meta: over the training tasks).",
    "batch_size": "Examples per optimizer step.",
    "seed": "Seed of the split, shuffling and initialisation.",
}
"""What these training settings mean to `pdefm finetune` (overrides the dataclass's help)."""


class PluginCommand(SettingsCommand):
    """Imports `--plugin` modules before parsing, then rebuilds the options so that their methods appear."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        modules = []
        for i, arg in enumerate(args):
            if arg == "--plugin" and i + 1 < len(args):
                modules += names(args[i + 1]) or []
            elif arg.startswith("--plugin="):
                modules += names(arg.split("=", 1)[1]) or []
        if modules:
            from finetune.methods.registry import load_plugins

            try:
                load_plugins(modules)
            except ValueError as exc:
                raise typer.BadParameter(str(exc), param_hint="--plugin") from None
            fresh = typer.main.get_command(app)
            self.params, self.callback = fresh.params, fresh.callback
        return super().parse_args(ctx, args)


def _method_params(reserved: set[str]) -> list[Param]:
    """One option per distinct method-option flag; a flag shared by several methods sets the chosen one's."""
    from finetune.methods.registry import get_method, method_names

    by_flag: dict[str, list] = {}
    for name in method_names():
        options = get_method(name).Options
        hints, docs = typing.get_type_hints(options), field_docs(options)
        for f in dataclasses.fields(options):
            flag = f.metadata.get("flag") or flag_name(f.name)
            if flag in reserved:
                flag = flag_name(f"{name}_{f.name}")
            by_flag.setdefault(flag, []).append(
                (name, f, hints[f.name], f.metadata.get("help") or docs.get(f.name, ""))
            )
    params = []
    for flag, users in by_flag.items():
        _, f, tp, _ = users[0]
        docs, defaults = {}, {}
        for m, fl, _, doc in users:
            docs.setdefault(doc, []).append(m)
            defaults.setdefault(_default_text(fl), []).append(m)
        text = " ".join(f"{', '.join(ms)}: {doc}" for doc, ms in docs.items())
        shown = (
            next(iter(defaults))
            if len(defaults) == 1
            else "; ".join(f"{', '.join(ms)}: {d}" for d, ms in defaults.items())
        )
        panel = "Method options (for the chosen --method)"
        params.append(field_param(f, tp, ("options", f.name), flag, text, panel, shown))
    return params


def _default_text(f: dataclasses.Field) -> str:
    value = default_of(f)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _params() -> list[Param]:
    from finetune.api import InputOptions
    from finetune.methods.registry import method_names
    from finetune.trainer import TrainConfig

    job = dataclass_params(FinetuneJob, exclude=(*SECTIONS, "method"))
    method_field = next(f for f in dataclasses.fields(FinetuneJob) if f.name == "method")
    method = Param(
        dest=("method",),
        flags=("--method",),
        annotation=str | None,
        help=f"Adaptation method: {' | '.join(method_names())} (--plugin adds more).",
        show_default=default_of(method_field),
    )
    inputs = dataclass_params(InputOptions, ("inputs",), panel="Data")
    train = dataclass_params(
        TrainConfig,
        ("train",),
        flags={"out": "--run-folder"},
        help=TRAIN_HELP,
        panel="Training",
        flag_values={"resume": "must"},
    )
    fixed = [*job, method, *inputs, *train]
    reserved = {f.split("/")[0] for p in fixed for f in p.flags} | {"--config", "--help"}
    return [*fixed, *_method_params(reserved)]


app = typer.Typer(
    help="Adapt a pretrained model few-shot with a registered method (full, LoRA, meta, PhysGuard, ...)."
)


@app.command(cls=PluginCommand)
@settings_command(_params)
def finetune(
    config: Path = typer.Option(
        None,
        "--config",
        help="YAML file of settings; flags given here override it (mappings merged key by key).",
    ),
    settings: dict | None = None,
) -> None:
    """Fine-tune MODEL on DATA with SHOTS trajectories by METHOD and save the result to OUT."""
    from rich.console import Console

    from finetune.api import InputOptions
    from finetune.api import finetune as run
    from finetune.methods.registry import get_method, load_plugins
    from finetune.trainer import TrainConfig

    flags = settings or {}
    data = deep_merge(load_yaml(config), flags) if config is not None else dict(flags)
    source = str(config) if config is not None else "command line"
    load_plugins(data.get("plugin") or [])
    method = get_method(data.get("method", "full"))
    train = data.setdefault("train", {})
    options = data.setdefault("options", {})
    if "lr" in train and method.lr_field and method.lr_field not in options:
        options[method.lr_field] = train["lr"]
    if "out" not in train:
        train["out"] = str(Path(data.get("out", "finetune-out")) / "run")
    job = from_mapping(FinetuneJob, data, source)
    console = Console(stderr=True)

    def log(row: dict) -> None:
        console.print(
            f"epoch {row['epoch']:>3}  step {row['step']:>5}  train {row['train_loss']:.4g}  val {row['val_loss']:.4g}"
        )

    result = run(
        job.model,
        job.data,
        job.shots,
        method.name,
        job.out,
        options=from_mapping(method.Options, job.options, f"{source}: options of method {method.name!r}"),
        train=from_mapping(TrainConfig, job.train, f"{source}: train"),
        inputs=from_mapping(InputOptions, job.inputs, f"{source}: inputs"),
        push_to=job.push_to,
        log=log,
    )
    console.print(
        f"best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} "
        f"(start {result.initial_val_loss:.4g}); test loss {result.test_loss}"
    )
    for name, path in result.paths.items():
        console.print(f"{name}: {path}")
    if result.pushed_to:
        console.print(f"pushed to {result.pushed_to}")
