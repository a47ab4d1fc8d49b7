"""Registry of PDE families by name; ``--families all`` or ``a,b`` resolves through it."""

from __future__ import annotations

from data_pipelines.fields import MAX_COEFFICIENTS, check_fields
from data_pipelines.solvers.base import PDEFamily

_FAMILIES: dict[str, type[PDEFamily]] = {}


def register_family(cls: type[PDEFamily]) -> type[PDEFamily]:
    """Class decorator: check the family's declared attributes and register it under ``cls.name``."""
    for attr in ("name", "fields", "coefficient_ranges", "horizon", "description"):
        if not hasattr(cls, attr):
            raise TypeError(f"PDE family {cls.__name__} must define class attribute {attr!r}")
    if cls.name in _FAMILIES and _FAMILIES[cls.name] is not cls:
        raise ValueError(
            f"PDE family name {cls.name!r} registered twice ({_FAMILIES[cls.name].__name__}, {cls.__name__})"
        )
    check_fields(cls.fields, f"PDE family {cls.name!r}")
    if len(cls.coefficient_ranges) > MAX_COEFFICIENTS:
        raise ValueError(f"PDE family {cls.name!r}: more than {MAX_COEFFICIENTS} coefficients")
    for k, (lo, hi) in cls.coefficient_ranges.items():
        if not lo <= hi or (k in cls.log_coefficients and lo <= 0):
            raise ValueError(f"PDE family {cls.name!r}: bad range {k} = ({lo}, {hi})")
    _FAMILIES[cls.name] = cls
    return cls


def list_families() -> list[str]:
    """Names of all registered families, sorted."""
    return sorted(_FAMILIES)


def get_family(name: str) -> PDEFamily:
    """A fresh instance of the family ``name``; unknown names raise a KeyError listing the known ones."""
    try:
        return _FAMILIES[name]()
    except KeyError:
        raise KeyError(f"unknown PDE family {name!r}; known families: {', '.join(list_families())}") from None


def resolve_families(spec: str) -> list[PDEFamily]:
    """``"all"`` or a comma-separated list of names -> family instances (order kept, duplicates dropped)."""
    names = list_families() if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(
            f"empty family selection {spec!r}; use 'all' or names from: {', '.join(list_families())}"
        )
    return [get_family(n) for n in dict.fromkeys(names)]
