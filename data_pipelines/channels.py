"""Mapping a trajectory's named fields into a model's fixed channel layout, with `pixel_mask`.

A target channel the trajectory lacks is filled with a known constant when one is given (unit density
for incompressible flow, as Poseidon feeds its NS sets) and is then a real input, or else zero-filled
and masked (`pixel_mask` True = absent, not scored), as Poseidon masks NS pressure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipelines.normalization import Normalizer

DEFAULT_FILL = {"rho": 1.0}


class ChannelMap:
    """Maps `u[..., C_src, H, W]` with source field names onto `target` fields (in order)."""

    def __init__(self, target: Sequence[str], fill: dict[str, float] | None = None, drop_extra: bool = False):
        if len(set(target)) != len(target):
            raise ValueError(f"channel layout {list(target)} names a field twice")
        self.target = tuple(target)
        self.fill = dict(DEFAULT_FILL if fill is None else fill)
        self.drop_extra = drop_extra
        self._plans: dict[tuple[str, ...], tuple[list[int | None], np.ndarray]] = {}

    def plan(self, fields: Sequence[str], source: str = "trajectory") -> tuple[list[int | None], np.ndarray]:
        """Source channel index per target channel (None = absent) and the bool `pixel_mask`."""
        key = tuple(fields)
        if key not in self._plans:
            extra = [f for f in fields if f not in self.target]
            if extra and not self.drop_extra:
                raise ValueError(
                    f"{source}: fields {extra} are not in the model's channel layout {list(self.target)} "
                    f"(pass drop_extra=True to drop them)"
                )
            index = [key.index(f) if f in key else None for f in self.target]
            mask = np.array(
                [i is None and f not in self.fill for i, f in zip(index, self.target, strict=True)],
                dtype=bool,
            )
            self._plans[key] = (index, mask)
        return self._plans[key]

    def __call__(
        self,
        u: np.ndarray,
        fields: Sequence[str],
        normalizer: Normalizer | None = None,
        source: str = "trajectory",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (`u` in the target layout [..., C_target, H, W] float32, `pixel_mask` bool[C_target]).

        Present and constant-filled channels are normalised with the target field's statistics; absent
        channels stay exactly zero.
        """
        index, mask = self.plan(fields, source)
        out = np.zeros((*u.shape[:-3], len(self.target), *u.shape[-2:]), dtype=np.float32)
        for c, (i, name) in enumerate(zip(index, self.target, strict=True)):
            if i is not None:
                out[..., c, :, :] = u[..., i, :, :]
            elif name in self.fill:
                out[..., c, :, :] = self.fill[name]
        if normalizer is not None:
            out = normalizer.normalize(out, self.target).astype(np.float32, copy=False)
            out[..., mask, :, :] = 0.0
        return out, mask.copy()
