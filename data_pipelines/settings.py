"""One source of settings: command-line options generated from config dataclasses, YAML deep-merged with flags.

A dataclass field becomes `--field-name` (underscores to dashes) with its help from `metadata["help"]` or the
attribute docstring under the field, and its default shown from the dataclass: the option itself defaults to
"not given", so only flags typed on the command line override a `--config` YAML file, and every default is
written once, in the dataclass. Field types map to options as follows: bool -> `--x/--no-x`; int, float, str,
Path -> typed; `Literal[...]` -> a checked choice; list/tuple of str/int/float -> a comma-separated list;
dict -> repeatable `KEY=VALUE` (values read as YAML, merged key by key); anything else -> one YAML value.

`settings_command(params)` turns a typer command function that takes `settings: dict` into one whose signature
also holds the generated options (register it with `cls=SettingsCommand`, which reads a bare `--flag` with a
`flag_value` as that value); the function receives the given flags as a nested mapping, which
`resolve(cls, settings, config)` deep-merges over the YAML file and turns into the dataclass.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from typer.core import TyperCommand

MISSING = dataclasses.MISSING


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Param:
    """One generated command-line option: where its value goes (`dest`, a key path) and how it is parsed."""

    dest: tuple[str, ...]
    flags: tuple[str, ...]
    annotation: Any
    help: str = ""
    show_default: str | bool = False
    panel: str | None = None
    convert: Callable[[Any], Any] = _identity
    flag_value: str | None = None
    """The value a bare `--flag` (no value after it) stands for, e.g. `--resume` = `--resume must`."""

    @property
    def name(self) -> str:
        """The Python parameter name, unique per flag."""
        flag = self.flags[0].split("/")[0].removeprefix("--")
        return "__".join((*self.dest[:-1], flag)).replace("-", "_")


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (a string literal right under a field), base classes first."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (the factory called), or MISSING for a required field."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _show(value: Any) -> str | bool:
    if value is MISSING:
        return "required"
    if value is None:
        return False
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "empty"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _comma_list(item: type, container: type, flag: str) -> Callable[[str], Any]:
    def convert(text: str):
        items = [v.strip() for v in text.split(",") if v.strip()]
        try:
            return container(item(v) for v in items)
        except ValueError:
            raise typer.BadParameter(
                f"expected a comma-separated list of {item.__name__}, got {text!r}", param_hint=flag
            ) from None

    return convert


def _top_level_split(text: str) -> list[str]:
    """ "a=1,b=[1,2]" -> ["a=1", "b=[1,2]"]: commas inside brackets, braces or quotes do not split."""
    parts, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in [*parts, text[start:]] if p.strip()]


def _key_values(flag: str) -> Callable[[list[str]], dict]:
    def convert(items: list[str]) -> dict:
        out = {}
        for item in (part for given in items for part in _top_level_split(given)):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=flag)
            out[key.strip()] = yaml.safe_load(value)
        return out

    return convert


def _choice(choices: tuple, flag: str) -> Callable[[str], Any]:
    def convert(text: str):
        for c in choices:
            if str(c) == text:
                return c
        raise typer.BadParameter(f"expected one of {list(choices)}, got {text!r}", param_hint=flag)

    return convert


def _yaml_value(text: str) -> Any:
    return yaml.safe_load(text)


def cli_type(tp: Any, flag: str) -> tuple[Any, Callable[[Any], Any], str]:
    """(annotation typer parses, converter to the field's value, help suffix) for a field type."""
    tp = _unwrap_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (bool, int, float, str, Path):
        return tp | None, _identity, ""
    if origin is typing.Literal:
        return str | None, _choice(args, flag), f" One of: {', '.join(map(str, args))}."
    if origin in (list, tuple, Sequence) and args and _unwrap_optional(args[0]) in (str, int, float):
        container = tuple if origin is tuple else list
        return str | None, _comma_list(_unwrap_optional(args[0]), container, flag), " Comma separated."
    if tp is dict or origin in (dict, Mapping):
        return (
            list[str] | None,
            _key_values(flag),
            " KEY=VALUE[,KEY=VALUE...], repeatable; merged key by key.",
        )
    return str | None, _yaml_value, " A YAML value."


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_param(
    f: dataclasses.Field,
    tp: Any,
    dest: tuple[str, ...],
    flag: str,
    help: str = "",
    panel: str | None = None,
    show_default: str | bool | None = None,
    flag_value: str | None = None,
) -> Param:
    """The `Param` of one dataclass field of type `tp` (bool fields get `--x/--no-x`)."""
    if _unwrap_optional(tp) is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag.removeprefix('--')}"
    annotation, convert, suffix = cli_type(tp, flag.split("/")[0])
    if flag_value is not None:
        suffix += f" {flag} alone means {flag_value}."
    return Param(
        dest=dest,
        flags=(flag,),
        annotation=annotation,
        help=(help + suffix).strip(),
        show_default=_show(default_of(f)) if show_default is None else show_default,
        panel=panel,
        convert=convert,
        flag_value=flag_value,
    )


def dataclass_params(
    cls: type,
    dest: tuple[str, ...] = (),
    *,
    flags: Mapping[str, str] | None = None,
    prefix: str = "",
    help: Mapping[str, str] | None = None,
    panel: str | None = None,
    exclude: Sequence[str] = (),
    flag_values: Mapping[str, str] | None = None,
) -> list[Param]:
    """One `Param` per field of `cls` (except `exclude`), its value going to `dest + (field,)`.

    The flag is `flags[field]`, else `field.metadata["flag"]`, else `--{prefix}{field-name}`; the help is
    `help[field]` (what the field means to this command), else `field.metadata["help"]`, else the attribute
    docstring. `flag_values[field]` is what the flag means when given without a value.
    """
    flags, help, flag_values = dict(flags or {}), dict(help or {}), dict(flag_values or {})
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    return [
        field_param(
            f,
            hints[f.name],
            (*dest, f.name),
            flags.get(f.name) or f.metadata.get("flag") or flag_name(prefix + f.name),
            help.get(f.name) or f.metadata.get("help") or docs.get(f.name, ""),
            panel,
            flag_value=flag_values.get(f.name),
        )
        for f in dataclasses.fields(cls)
        if f.name not in exclude and f.init
    ]


def _insert(settings: dict, dest: tuple[str, ...], value: Any) -> None:
    node = settings
    for key in dest[:-1]:
        node = node.setdefault(key, {})
    leaf = dest[-1]
    node[leaf] = deep_merge(node[leaf], value) if isinstance(node.get(leaf), dict) else value


class _Command:
    """A typer command callback whose signature is the function's own parameters plus generated options."""

    def __init__(self, func: Callable, params: Callable[[], list[Param]]):
        self._func, self._params = func, params
        self.__name__, self.__qualname__ = func.__name__, func.__qualname__
        self.__doc__, self.__module__ = func.__doc__, func.__module__
        own = inspect.signature(func).parameters
        hints = typing.get_type_hints(func)
        self._own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own.values()]
        self._own = [p for p in self._own if p.name != "settings"]

    def _generated(self) -> list[Param]:
        params = self._params()
        names = [p.name for p in params] + [p.name for p in self._own]
        seen_flags = [f for p in params for f in p.flags]
        dup = {n for n in names if names.count(n) > 1} | {f for f in seen_flags if seen_flags.count(f) > 1}
        if dup:
            raise TypeError(f"{self.__name__}: generated options clash: {sorted(dup)}")
        return params

    @property
    def __signature__(self) -> inspect.Signature:
        extra = [
            inspect.Parameter(
                p.name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=p.annotation,
                default=typer.Option(
                    None, *p.flags, help=p.help, show_default=p.show_default, rich_help_panel=p.panel
                ),
            )
            for p in self._generated()
        ]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in self._own]
        return inspect.Signature([*own, *extra])

    @property
    def __annotations__(self) -> dict[str, Any]:
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}

    def __call__(self, **kwargs: Any) -> Any:
        settings: dict = {}
        for p in self._generated():
            value = kwargs.pop(p.name, None)
            if value is None or (isinstance(value, (list, tuple)) and not value):
                continue
            _insert(settings, p.dest, p.convert(value))
        return self._func(**kwargs, settings=settings)


class SettingsCommand(TyperCommand):
    """The click command of a `settings_command` function: a bare flag that has a `flag_value` (the next
    argument missing or another option) is read as that value, e.g. `--resume` as `--resume must`."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        generated = getattr(self.callback, "__wrapped__", None)
        if isinstance(generated, _Command):
            implied = {f: p.flag_value for p in generated._generated() if p.flag_value for f in p.flags}
            args = [
                part
                for i, arg in enumerate(args)
                for part in (
                    [arg, implied[arg]]
                    if arg in implied and (i + 1 == len(args) or args[i + 1].startswith("-"))
                    else [arg]
                )
            ]
        return super().parse_args(ctx, args)


def settings_command(params: Callable[[], list[Param]]) -> Callable[[Callable], Callable]:
    """Decorator for a typer command `f(..., settings: dict)`: adds the options `params()` returns (evaluated
    each time the command is built, so registries that grow are picked up) and passes the given ones to `f`
    as a nested mapping."""

    def wrap(func: Callable) -> Callable:
        return _Command(func, params)

    return wrap


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """`base` updated by `override`, recursively for values that are mappings on both sides."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    """A YAML mapping of settings (a clear error for a missing file, bad YAML or a non-mapping)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: settings file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def from_mapping(cls: type, data: Mapping, source: str = "settings") -> Any:
    """`cls(**data)` with nested dataclass fields built from sub-mappings, lists made tuples where the field is
    a tuple, and one-line errors naming `source` and the field for unknown or missing settings."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown settings {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            value = from_mapping(tp, value, f"{source}: {name}")
        elif typing.get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    missing = [n for n, f in fields.items() if n not in values and default_of(f) is MISSING]
    if missing:
        raise ValueError(
            f"{source}: {cls.__name__} needs {', '.join(missing)} (give them as flags or in --config)"
        )
    return cls(**values)


def resolve(cls: type, flags: Mapping, config: str | Path | None = None, source: str | None = None) -> Any:
    """The dataclass from the YAML file `config` (if any) deep-merged with the given `flags`, flags winning."""
    data = deep_merge(load_yaml(config), flags) if config is not None else dict(flags)
    return from_mapping(cls, data, source or (str(config) if config is not None else "command line"))
