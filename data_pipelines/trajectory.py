"""One trajectory (a row of a corpus): snapshots ``u[T, C, H, W]`` at physical times ``t[T]``.

Grid convention: ``u[..., i, j]`` is the value at ``(x_j, y_i)`` (axis H is y, axis W is x) on the cell
centres of ``domain = (x_min, x_max, y_min, y_max)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from data_pipelines.fields import check_fields


def _as_float32(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


@dataclass
class Trajectory:
    """Snapshots of one PDE solution with its family id, coefficients and boundary conditions.

    ``u`` float32 [T, C, H, W]; ``t`` float32 [T] physical times (increasing); ``fields`` the C channel
    names from ``data_pipelines.fields.FIELDS``; ``pde`` the family id; ``params`` the family's
    coefficients; ``bc`` e.g. "periodic"; ``domain`` (x_min, x_max, y_min, y_max).
    Torch tensors and float64 arrays are converted to float32 numpy arrays on construction.
    """

    u: np.ndarray
    t: np.ndarray
    fields: list[str]
    pde: str
    params: dict[str, float] = field(default_factory=dict)
    bc: str = "periodic"
    domain: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        self.u = _as_float32(self.u)
        self.t = _as_float32(self.t)
        self.fields = list(self.fields)
        self.domain = tuple(float(d) for d in self.domain)

    def validate(self, source: str) -> Trajectory:
        """Check rank, shapes, field names and finiteness; raise a ValueError naming ``source``."""
        where = f"{source} (pde {self.pde!r})"
        if self.u.ndim != 4:
            raise ValueError(f"{where}: u must have rank 4 [T, C, H, W], got shape {tuple(self.u.shape)}")
        n_t, n_c, height, width = self.u.shape
        if self.t.ndim != 1 or self.t.shape[0] != n_t:
            raise ValueError(
                f"{where}: t must have shape [T] = [{n_t}] to match u, got {tuple(self.t.shape)}"
            )
        if len(self.fields) != n_c:
            raise ValueError(
                f"{where}: {len(self.fields)} field names {self.fields} for C = {n_c} channels in u"
            )
        check_fields(self.fields, where)
        if n_t == 0 or height == 0 or width == 0:
            raise ValueError(f"{where}: empty trajectory, u has shape {tuple(self.u.shape)}")
        if n_t > 1 and not np.all(np.diff(self.t) > 0):
            raise ValueError(f"{where}: times t must increase strictly, got {self.t.tolist()}")
        if not np.all(np.isfinite(self.t)):
            raise ValueError(f"{where}: non-finite times t = {self.t.tolist()}")
        if len(self.domain) != 4:
            raise ValueError(f"{where}: domain must be (x_min, x_max, y_min, y_max), got {self.domain}")
        bad = ~np.isfinite(self.u)
        if bad.any():
            t_idx, c_idx = np.argwhere(bad)[0][:2]
            count = int(bad[t_idx, c_idx].sum())
            raise ValueError(
                f"{where}: field {self.fields[c_idx]!r} has {count} NaN/Inf value(s) at time index {t_idx} "
                f"(t = {float(self.t[t_idx]):g})"
            )
        return self
