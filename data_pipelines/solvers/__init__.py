"""Batched torch PDE solvers, one family per module; importing the package registers every family."""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from data_pipelines.solvers.base import PDEFamily, SolverBatch  # noqa: E402
from data_pipelines.solvers.registry import get_family, list_families, register_family, resolve_families  # noqa: E402

__all__ = ["PDEFamily", "SolverBatch", "get_family", "list_families", "register_family", "resolve_families"]
