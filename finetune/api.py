"""`finetune(...)`: few-shot adaptation of a checkpoint to the user's trajectories, one call per run.

Loads the model (Hub id, folder or module) and the data (file, folder, Hub id or trajectories), splits by
trajectory, maps the fields onto the model's channels (channel surgery when they do not fit), normalises
with the training split's statistics (or given ones), trains with the method chosen from the registry
(`finetune.methods.registry`: its preparation, gradient transform or own loop, and saving), keeps the best
validation epoch, scores the test split and saves every artifact (model or adapter, merged model,
PhysGuard basis, normalisation, history) to `out`, optionally pushing the result to the Hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from safetensors.torch import save_file
from torch import nn

from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from finetune import trainer
from finetune.channels import load_for_fields
from finetune.data import load_trajectories, pair_dataset, split_trajectories
from finetune.methods.registry import Method, MethodContext, get_method
from finetune.trainer import TrainConfig, TrainResult, evaluate, resolve_device
from foundation.conditioning import extend_vocabulary


@dataclass
class InputOptions:
    """How the data is read, split by trajectory, mapped onto the model's channels and normalised."""

    fields: list[str] | None = None
    """Fields of the data to use, in order (default: all); also names the channels of files that store none."""
    format: str | None = None
    """Data file format (default: detected from the file)."""
    n_val: int = field(default=1, metadata={"flag": "--val"})
    """Validation trajectories (the best epoch is chosen on them)."""
    n_test: int = field(default=1, metadata={"flag": "--test"})
    """Test trajectories (scored once at the end)."""
    stride: int = 1
    """Snapshot stride of the all2all training pairs."""
    max_lead: float | None = None
    """Longest lead time of a pair, as a fraction of the trajectory (default: all)."""
    normalization: str | None = "train"
    """'train' (training-split statistics), a stats.json, or 'none'."""
    channels: str = "auto"
    """'same': map fields onto the checkpoint's same-named channels; 'fresh': new embedding and recovery
    channels (new physics under a familiar name, e.g. a reaction-diffusion u that is no velocity); 'auto':
    fresh for a PDE family the checkpoint records it was not trained on, else same."""
    allow_surgery: bool = field(default=True, metadata={"flag": "--surgery"})
    """Allow replacing the embedding/recovery layers when the data's fields do not fit the model."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""


@dataclass
class FinetuneResult:
    """Where the artifacts are, the validation history and the scores of the kept epoch."""

    out: Path
    method: str
    channels: list[str]
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    initial_val_loss: float
    test_loss: float | None
    split: dict[str, list[int]]
    paths: dict[str, Path] = field(default_factory=dict)
    """The saved artifacts by kind (model, adapter, merged, basis, inner_lr, normalization, ...); written by
    the main process only (empty on the other ranks of a multi-process run)."""
    pde_vocabulary: list[str] | None = None
    world_size: int = 1
    mixed_precision: str = "no"
    pushed_to: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["paths"] = {k: str(v) for k, v in self.paths.items()}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _union_fields(trajs: Sequence[Trajectory]) -> list[str]:
    return list(dict.fromkeys(f for t in trajs for f in t.fields))


def _normalizer(normalization: str | Path | None, train_trajs: Sequence[Trajectory]) -> Normalizer | None:
    if normalization is None or str(normalization) == "none":
        return None
    if str(normalization) == "train":
        return Normalizer.from_trajectories(train_trajs)
    return Normalizer.from_json(normalization)


def save_model(model: nn.Module, folder: Path, extra_files: dict[str, str]) -> Path:
    """`save_pretrained` for transformers models, safetensors of the state dict for plain modules."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(folder)
    else:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
        )
    for name, text in extra_files.items():
        (folder / name).write_text(text)
    return folder


def model_card(
    method: Method, options: Any, base: str, channels: list[str], result: TrainResult, shots: int
) -> str:
    """A short Hub model card: what was adapted from what, how (the method's own paragraph), on which fields,
    with which validation loss."""
    return (
        "---\nlibrary_name: pdefm\ntags: [pdefm, scot, pde, few-shot, " + method.name + "]\n---\n"
        f"# {method.name} fine-tune of {base}\n\n"
        f"Adapted with `pdefm finetune --method {method.name}` on {shots} trajectories; channels {channels}.\n"
        f"Best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} "
        f"(start {result.initial_val_loss:.4g}). `normalization.json` holds the per-field statistics the "
        "inputs were normalised with.\n\n"
        f"{method.card(options)}\n"
    )


def push_folder(folder: Path, repo_id: str, message: str) -> str:
    """Uploads `folder` to the Hub model repo `repo_id` (created if missing) through huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    return repo_id


def finetune(
    model: str | Path | nn.Module,
    data: str | Path | Sequence[Trajectory],
    shots: int,
    method: str = "full",
    out: str | Path = "finetune-out",
    *,
    options: Any = None,
    train: TrainConfig | None = None,
    inputs: InputOptions | None = None,
    push_to: str | None = None,
    state: dict | None = None,
    log: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Adapt `model` to `data` with `shots` training trajectories by the registered `method` and save the
    result to `out`.

    `options` is the method's options dataclass (default: its defaults), `train` the training settings
    and `inputs` how the data is split, mapped and normalised; `state` may carry what a method computed
    before (e.g. PhysGuard's "bases"). An operator-conditioned model's PDE vocabulary is extended with the
    data's families. Returns the artifact paths and the validation history.
    """
    spec = get_method(method)
    opts = options if options is not None else spec.Options()
    if not isinstance(opts, spec.Options):
        raise ValueError(
            f"finetune: method {method!r} takes {spec.Options.__name__} options, got {type(opts).__name__}"
        )
    cfg = train or TrainConfig()
    inp = inputs or InputOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_name = str(model) if not isinstance(model, nn.Module) else type(model).__name__

    trajs = load_trajectories(data, fields=inp.fields, format=inp.format)
    split = split_trajectories(trajs, shots, inp.n_val, inp.n_test, cfg.seed)
    pdes = [t.pde for t in trajs]
    net, channels = load_for_fields(
        model,
        _union_fields(trajs),
        allow_surgery=inp.allow_surgery,
        revision=inp.revision,
        channels=spec.channel_mode(inp.channels),
        families=pdes,
    )
    normalizer = _normalizer(inp.normalization, split.train)
    families = extend_vocabulary(net, pdes)
    norm_json = json.dumps(normalizer.to_dict() if normalizer else {}, indent=2)

    def pairs(part: Sequence[Trajectory]):
        return pair_dataset(
            part, channels, normalizer, stride=inp.stride, max_lead=inp.max_lead, families=families
        )

    device = resolve_device(cfg.device)
    context = MethodContext(
        pairs=pairs,
        train=cfg,
        device=device,
        train_trajectories=split.train,
        val_trajectories=split.val,
        channels=list(channels),
        families=families,
        state=state if state is not None else {},
        files={"normalization.json": norm_json},
        log=log,
    )
    torch.manual_seed(cfg.seed)
    net, groups = spec.prepare(net, opts, context)
    result = spec.fit(net, opts, context)
    if result is None:
        transform = spec.gradient_transform(net, opts, context)
        result = trainer.train(
            net,
            pairs(split.train),
            pairs(split.val),
            config=cfg,
            param_groups=groups,
            grad_transform=transform,
            log=log,
        )
    context.files["README.md"] = model_card(spec, opts, base_name, channels, result, shots)
    res = FinetuneResult(
        out=out,
        method=method,
        channels=list(channels),
        history=result.history,
        best_epoch=result.best_epoch,
        best_val_loss=result.best_val_loss,
        initial_val_loss=result.initial_val_loss,
        test_loss=None,
        split=split.indices,
        pde_vocabulary=families,
        world_size=result.world_size,
        mixed_precision=result.mixed_precision,
        model=net,
    )
    if split.test:
        res.test_loss = evaluate(net, pairs(split.test), batch_size=cfg.batch_size, device=device)
    processes = PartialState()  # under `accelerate launch` only the main process writes and pushes
    if processes.is_main_process:
        (out / "normalization.json").write_text(norm_json)
        res.paths = {"normalization": out / "normalization.json", **spec.save(net, out, opts, context)}
        if push_to:
            folder = next(res.paths[k] for k in spec.artifacts if k in res.paths)
            res.pushed_to = push_folder(folder, push_to, f"pdefm finetune --method {method} ({shots} shots)")
        (out / "history.json").write_text(json.dumps(result.history, indent=2))
        (out / "finetune.json").write_text(json.dumps(res.to_dict(), indent=2))
    processes.wait_for_everyone()
    return res
