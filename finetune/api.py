"""`finetune(...)`: few-shot adaptation of a checkpoint to the user's trajectories, one call per run.

Loads the model (Hub id, folder or module) and the data (file, folder, Hub id or trajectories), splits by
trajectory, maps the fields onto the model's channels (channel surgery when they do not fit), normalises
with the training split's statistics (or given ones), trains with the chosen method, keeps the best
validation epoch, scores the test split and saves every artifact (model or adapter, merged model,
PhysGuard basis, normalisation, history) to `out`, optionally pushing the result to the Hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from data_pipelines.normalization import Normalizer
from data_pipelines.trajectory import Trajectory
from finetune.channels import load_for_fields
from finetune.data import load_trajectories, pair_dataset, select_fields, split_trajectories
from finetune.methods import full as full_method
from finetune.methods import lora as lora_method
from finetune.methods import meta as meta_method
from finetune.methods import physguard as physguard_method
from finetune.trainer import TrainConfig, TrainResult, evaluate, train

METHODS = ("full", "lora", "meta", "physguard")


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
    model_path: Path | None = None
    adapter_path: Path | None = None
    merged_path: Path | None = None
    basis_path: Path | None = None
    inner_lr_path: Path | None = None
    normalization_path: Path | None = None
    pushed_to: str | None = None
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _union_fields(trajs: Sequence[Trajectory]) -> list[str]:
    return list(dict.fromkeys(f for t in trajs for f in t.fields))


def _normalizer(normalization: str | Path | None, train_trajs: Sequence[Trajectory]) -> Normalizer | None:
    if normalization is None:
        return None
    if str(normalization) == "train":
        return Normalizer.from_trajectories(train_trajs)
    return Normalizer.from_json(normalization)


def _families(model: nn.Module) -> list[str] | None:
    """Operator-conditioned models index families in registry order; others take no conditioning."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_operator_conditioning", False):
        return None
    from data_pipelines.solvers.registry import list_families

    return list_families()


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


def model_card(method: str, base: str, channels: list[str], result: TrainResult, shots: int) -> str:
    """A short Hub model card: what was adapted from what, on which fields, with which validation loss."""
    return (
        "---\nlibrary_name: pdefm\ntags: [pdefm, scot, pde, few-shot, " + method + "]\n---\n"
        f"# {method} fine-tune of {base}\n\n"
        f"Adapted with `pdefm finetune --method {method}` on {shots} trajectories; channels {channels}.\n"
        f"Best validation loss {result.best_val_loss:.4g} at epoch {result.best_epoch} "
        f"(start {result.initial_val_loss:.4g}). `normalization.json` holds the per-field statistics the "
        "inputs were normalised with.\n"
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
    fields: Sequence[str] | None = None,
    n_val: int = 1,
    n_test: int = 1,
    epochs: int = 20,
    batch_size: int = 8,
    grad_clip: float = 5.0,
    max_steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    stride: int = 1,
    max_lead: float | None = None,
    normalization: str | Path | None = "train",
    allow_surgery: bool = True,
    full: full_method.FullOptions | None = None,
    lora: lora_method.LoraOptions | None = None,
    meta: meta_method.MetaOptions | None = None,
    physguard: physguard_method.PhysGuardOptions | None = None,
    sim_data: str | Path | Sequence[Trajectory] | None = None,
    basis: str | Path | None = None,
    merge: bool = False,
    push_to: str | None = None,
    revision: str | None = None,
    log: Callable[[dict], None] | None = None,
) -> FinetuneResult:
    """Adapt `model` to `data` with `shots` training trajectories by `method` and save the result to `out`.

    `method` "meta" meta-trains on tasks (family x coefficient set) from the training trajectories and saves a
    meta-initialised checkpoint to fine-tune later; "physguard" needs `sim_data` (the simulation data to
    protect) or a cached `basis`. Returns the artifact paths and the validation history.
    """
    if method not in METHODS:
        raise ValueError(f"finetune: unknown method {method!r}; choose from {list(METHODS)}")
    if method == "physguard" and sim_data is None and basis is None:
        raise ValueError(
            "finetune: method 'physguard' needs sim_data (simulation data to protect) or a cached basis"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_name = str(model) if not isinstance(model, nn.Module) else type(model).__name__

    trajs = select_fields(load_trajectories(data), fields)
    split = split_trajectories(trajs, shots, n_val, n_test, seed)
    net, channels = load_for_fields(
        model, _union_fields(trajs), allow_surgery=allow_surgery, revision=revision
    )
    normalizer = _normalizer(normalization, split.train)
    families = _families(net)
    norm_json = json.dumps(normalizer.to_dict() if normalizer else {}, indent=2)
    (out / "normalization.json").write_text(norm_json)

    def pairs(part):
        return pair_dataset(part, channels, normalizer, stride=stride, max_lead=max_lead, families=families)

    val_ds = pairs(split.val)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        grad_clip=grad_clip,
        max_steps=max_steps,
        seed=seed,
        device=device,
    )
    res = FinetuneResult(
        out=out,
        method=method,
        channels=list(channels),
        history=[],
        best_epoch=0,
        best_val_loss=float("nan"),
        initial_val_loss=float("nan"),
        test_loss=None,
        split=split.indices,
        normalization_path=out / "normalization.json",
    )
    extra = {"normalization.json": norm_json}
    torch.manual_seed(seed)

    if method == "meta":
        opts = meta or meta_method.MetaOptions(epochs=epochs, batch_size=batch_size, seed=seed, device=device)
        task_args = dict(support_fraction=opts.support_fraction, seed=seed, families=families)
        train_tasks = meta_method.make_tasks(split.train, channels, normalizer, **task_args)
        val_tasks = meta_method.make_tasks(split.val, channels, normalizer, **task_args)
        result, lr_net = meta_method.meta_train(net, train_tasks, val_tasks, opts)
        extra["README.md"] = model_card(method, base_name, channels, result, shots)
        res.model_path = save_model(net, out / "model", extra)
        if lr_net is not None:
            res.inner_lr_path = out / "inner_lr.safetensors"
            save_file(lr_net.state_dict(), str(res.inner_lr_path), metadata={"max_lr": str(lr_net.max_lr)})
    elif method == "lora":
        opts = lora or lora_method.LoraOptions()
        net = lora_method.wrap(net, opts)
        result = train(
            net,
            pairs(split.train),
            val_ds,
            config=cfg,
            param_groups=lora_method.param_groups(net, opts),
            log=log,
        )
        res.adapter_path = lora_method.save_adapter(net, out / "adapter")
        (res.adapter_path / "normalization.json").write_text(norm_json)
        if merge:
            extra["README.md"] = model_card(method, base_name, channels, result, shots)
            res.merged_path = save_model(lora_method.merged(net), out / "merged", extra)
            res.model_path = res.merged_path
    else:
        groups = full_method.poseidon_param_groups(net, full)
        transform = None
        if method == "physguard":
            opts = physguard or physguard_method.PhysGuardOptions(seed=seed)
            res.basis_path = out / physguard_method.BASIS_FILE
            if basis is not None:
                bases = physguard_method.load_bases(basis, net)
            else:
                sim = select_fields(load_trajectories(sim_data), None)
                bases = physguard_method.compute_bases(net.to(device), pairs(sim), opts)
            physguard_method.save_bases(bases, res.basis_path, opts)
            transform = physguard_method.Projector(net.to(device), bases, opts.alpha)
        result = train(
            net,
            pairs(split.train),
            val_ds,
            config=cfg,
            param_groups=groups,
            grad_transform=transform,
            log=log,
        )
        extra["README.md"] = model_card(method, base_name, channels, result, shots)
        res.model_path = save_model(net, out / "model", extra)

    res.history, res.best_epoch, res.best_val_loss = result.history, result.best_epoch, result.best_val_loss
    res.initial_val_loss = result.initial_val_loss
    if split.test:
        res.test_loss = evaluate(net, pairs(split.test), batch_size=batch_size, device=device)
    res.model = net
    if push_to:
        folder = res.merged_path or res.adapter_path or res.model_path
        res.pushed_to = push_folder(folder, push_to, f"pdefm finetune --method {method} ({shots} shots)")
    (out / "history.json").write_text(json.dumps(result.history, indent=2))
    (out / "finetune.json").write_text(json.dumps(res.to_dict(), indent=2))
    return res
