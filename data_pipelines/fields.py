"""The field vocabulary: every channel of every trajectory is named by one of these short names.

One vocabulary across families lets corpora mix PDEs and lets the semigroup sampler map named fields
onto a model's channel layout (Poseidon's is ``POSEIDON_CHANNELS``).
"""

from __future__ import annotations

FIELDS: dict[str, str] = {
    "rho": "mass density",
    "u": "x-velocity (first velocity component)",
    "v": "y-velocity (second velocity component)",
    "p": "pressure",
    "E": "total energy density",
    "s": "scalar solution: temperature, concentration, phase, displacement or potential",
    "c": "wave speed field (variable coefficient of a wave or Helmholtz equation)",
    "k": "diffusivity or conductivity field (variable coefficient of a diffusion equation)",
    "f": "forcing or source term",
    "tracer": "passive tracer advected by the flow",
    "re": "real part of a complex field (e.g. the NLS wave function)",
    "im": "imaginary part of a complex field",
    "a": "first reacting species concentration (Gray-Scott u)",
    "b": "second reacting species concentration (Gray-Scott v)",
    "h": "water depth (shallow water)",
    "w": "vorticity",
    "g": "gravitational potential",
    "mask": "geometry indicator (1 inside an obstacle, 0 in the fluid)",
}

POSEIDON_CHANNELS: tuple[str, ...] = ("rho", "u", "v", "p")

MAX_COEFFICIENTS = 8


def check_fields(names: list[str] | tuple[str, ...], source: str) -> None:
    """Raise a ValueError naming ``source`` if any name is outside the vocabulary or repeated."""
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise ValueError(f"{source}: unknown field name(s) {unknown}; known fields are {sorted(FIELDS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"{source}: field name(s) {repeated} repeated in {list(names)}")
