"""The registry of adaptation methods: `pdefm finetune --method`, its options, the studies' candidates and the
model card all read it.

A method is a `Method` subclass registered with `@register_method`, one file per method: its `Options`
dataclass (every field becomes a `pdefm finetune` flag, with the field's docstring as help), `prepare` (the
model to train and its optimizer parameter groups), an optional `gradient_transform` (edits `.grad` before
each optimizer step), an optional `fit` (a training loop of its own, for meta-learning), `save` (the files
it writes) and `card` (its section of the model card).

Methods outside this package are found through the `pdefm.methods` entry-point group (a package declares
`[project.entry-points."pdefm.methods"] mine = "my_package.my_method"`) or imported by name with
`pdefm finetune --plugin my_module` / `load_plugins(["my_module"])`; importing the module registers it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import Dataset

from finetune.channels import check_channel_mode

ENTRY_POINT_GROUP = "pdefm.methods"
BUILTIN = ("full", "lora", "meta", "physguard")

GradTransform = Callable[[nn.Module], None]
"""Called with the model after backward and clipping, before the optimizer step; edits `.grad` in place."""


@dataclass
class MethodContext:
    """What a method may use besides the model and its options, built once per run by `finetune()`.

    `pairs` maps trajectories to training examples in the model's channel layout, normalisation and PDE
    vocabulary; `state` is shared by runs of one study (e.g. PhysGuard's bases, computed once per checkpoint);
    `files` are written next to every saved model (normalisation, model card).
    """

    pairs: Callable[[Sequence], Dataset]
    train: Any
    """The run's `TrainConfig` (epochs, batch size, seed, device, ...)."""
    device: str = "cpu"
    train_trajectories: Sequence = ()
    val_trajectories: Sequence = ()
    channels: list[str] = field(default_factory=list)
    families: list[str] | None = None
    """The PDE vocabulary of an operator-conditioned model (`pde_id` indexes it); None otherwise."""
    state: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    log: Callable[[dict], None] | None = None
    """Receives each validation-history row (the CLI prints them)."""


class Method:
    """Base class of an adaptation method; subclasses set `name`, `Options`, `summary` and override hooks."""

    name: ClassVar[str]
    Options: ClassVar[type]
    """The method's options dataclass (every field has a default)."""
    summary: ClassVar[str]
    """One line: what the method trains (shown by `--help` and in the model card)."""
    lr_field: ClassVar[str | None] = None
    """The option that `pdefm finetune --lr` sets: the method's main learning rate."""
    artifacts: ClassVar[tuple[str, ...]] = ("model",)
    """Keys of `save`'s result, the first present being the folder pushed to the Hub."""
    candidate: ClassVar[bool] = True
    """Whether the few-shot study can run it as a candidate (it trains the model on the shots)."""
    keeps_channels: ClassVar[bool] = False
    """Whether it needs the checkpoint's own channels (channels "auto" then means "same", "fresh" is refused)."""

    def channel_mode(self, channels: str) -> str:
        """The channel mode this method trains with when `channels` is asked for."""
        if check_channel_mode(channels) == "fresh" and self.keeps_channels:
            raise ValueError(
                f"method {self.name!r} keeps the checkpoint's own channels; use channels 'same' or 'auto'"
            )
        return "same" if self.keeps_channels else channels

    def prepare(self, model: nn.Module, options: Any, context: MethodContext) -> tuple[nn.Module, list[dict]]:
        """The module to train (may wrap `model`) and its optimizer parameter groups."""
        params = [p for p in model.parameters() if p.requires_grad]
        return model, [{"name": "all", "params": params}]

    def gradient_transform(
        self, model: nn.Module, options: Any, context: MethodContext
    ) -> GradTransform | None:
        """An in-place edit of the gradients run before every optimizer step, or None."""
        return None

    def fit(self, model: nn.Module, options: Any, context: MethodContext):
        """A training loop of the method's own (returns a `TrainResult`), or None to train with the core."""
        return None

    def save(self, model: nn.Module, out: Path, options: Any, context: MethodContext) -> dict[str, Path]:
        """Writes the trained result under `out`; returns {artifact: path}."""
        from finetune.api import save_model

        return {"model": save_model(model, out / "model", context.files)}

    def card(self, options: Any) -> str:
        """The method's paragraph of the model card (Markdown)."""
        return f"Method `{self.name}`: {self.summary} Options: {options_summary(options)}."


def options_summary(options: Any) -> str:
    """`a=1, b=x` over an options dataclass's fields."""
    return ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in fields(options))


_METHODS: dict[str, Method] = {}
_discovered = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: check the method's declared attributes and register one instance under `cls.name`."""
    for attr in ("name", "Options", "summary"):
        if not hasattr(cls, attr):
            raise TypeError(f"adaptation method {cls.__name__} must define class attribute {attr!r}")
    if not is_dataclass(cls.Options):
        raise TypeError(f"adaptation method {cls.name!r}: Options must be a dataclass, got {cls.Options!r}")
    known = {f.name for f in fields(cls.Options)}
    if cls.lr_field is not None and cls.lr_field not in known:
        raise TypeError(f"adaptation method {cls.name!r}: lr_field {cls.lr_field!r} is not an option")
    current = _METHODS.get(cls.name)
    if current is not None and (type(current).__module__, type(current).__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise ValueError(
            f"adaptation method {cls.name!r} registered twice ({type(current).__name__}, {cls.__name__})"
        )
    _METHODS[cls.name] = cls()
    return cls


def load_plugins(modules: Iterable[str]) -> None:
    """Imports modules that register methods (`--plugin`); a missing module is a one-line error."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ValueError(f"--plugin {name}: cannot import it ({exc})") from None


def _discover() -> None:
    """Imports the built-in methods and the `pdefm.methods` entry points, once."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for name in BUILTIN:
        importlib.import_module(f"finetune.methods.{name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def method_names() -> list[str]:
    """Registered methods: built-ins first, then plugins in registration order."""
    _discover()
    return [n for n in BUILTIN if n in _METHODS] + [n for n in _METHODS if n not in BUILTIN]


def get_method(name: str) -> Method:
    """The registered method `name`; unknown names raise a ValueError listing the known ones."""
    _discover()
    try:
        return _METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(method_names())}") from None
