"""Fourier pseudo-spectral toolkit on the periodic unit square and an integrating-factor RK4 integrator.

``SpectralGrid`` holds real-FFT wavenumbers (2*pi*integer), the 2/3 dealiasing mask and the cell-centre
coordinates. ``integrate_if_rk4`` advances ``d(hat u)/dt = L hat u + N(hat u)`` with the diagonal linear
part L exact (integrating factor) and N by classical RK4, sampling the requested output times.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


class SpectralGrid:
    """An n x n periodic grid on [0, 1)^2 with real-FFT (or full-FFT when ``complex_fields``) wavenumbers."""

    def __init__(self, n: int, device: torch.device | str, dtype: torch.dtype, complex_fields: bool = False):
        self.n, self.device, self.dtype, self.complex_fields = n, torch.device(device), dtype, complex_fields
        freq_y = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype)
        freq_x = freq_y if complex_fields else torch.fft.rfftfreq(n, d=1.0 / n, device=device, dtype=dtype)
        self.ky = (2 * math.pi * freq_y)[:, None]
        self.kx = (2 * math.pi * freq_x)[None, :]
        self.k2 = self.kx**2 + self.ky**2
        self.dealias = ((freq_y.abs() < n / 3)[:, None] & (freq_x.abs() < n / 3)[None, :]).to(dtype)
        # odd derivatives drop the unpaired Nyquist mode so real fields stay real
        nyq = (freq_y.abs() < n / 2)[:, None] & (freq_x.abs() < n / 2)[None, :]
        self.ikx = 1j * self.kx * nyq
        self.iky = 1j * self.ky * nyq
        c = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
        self.y, self.x = torch.meshgrid(c, c, indexing="ij")

    def fft(self, u: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(u) if self.complex_fields else torch.fft.rfft2(u)

    def ifft(self, u_hat: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(u_hat) if self.complex_fields else torch.fft.irfft2(u_hat, s=(self.n, self.n))

    def grad(self, u_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical-space (d/dx, d/dy) of a spectral field."""
        return self.ifft(self.ikx * u_hat), self.ifft(self.iky * u_hat)

    def velocity_from_vorticity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v) = (d psi/dy, -d psi/dx) with -Laplace(psi) = w (zero-mean streamfunction)."""
        psi_hat = w_hat / torch.where(self.k2 == 0, 1.0, self.k2)
        psi_hat = psi_hat * (self.k2 != 0)
        return self.ifft(self.iky * psi_hat), -self.ifft(self.ikx * psi_hat)

    def smooth_random_field(self, rng, batch: int, k_max: float, decay: float = 2.0) -> torch.Tensor:
        """Zero-mean real random field: white noise filtered to 0 < |k|/2pi <= k_max with amplitude
        (1 + |k|/2pi)^-decay, scaled to max |value| = 1 per sample."""
        k = self.k2.sqrt() / (2 * math.pi)
        filt = ((k <= k_max) & (k > 0)) * (1 + k) ** (-decay)
        field = self.ifft(self.fft(rng.normal(batch, self.n, self.n)) * filt)
        field = field.real if self.complex_fields else field
        return field / field.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)


def integrate_if_rk4(
    u_hat: torch.Tensor,
    linear: torch.Tensor,
    nonlinear: Callable[[torch.Tensor], torch.Tensor],
    times: torch.Tensor,
    max_dt: Callable[[torch.Tensor], float],
    dt: float | None = None,
) -> list[torch.Tensor]:
    """Integrating-factor RK4 from ``times[0]`` through every output time; returns the spectral states there.

    ``linear`` broadcasts against ``u_hat``; ``max_dt(u_hat)`` gives the stable step at the start of each
    output interval (``dt`` overrides it). Each interval is split into equal substeps.
    """
    states = [u_hat]
    times = times.tolist()  # one read of the output times, not one per interval
    for i in range(1, len(times)):
        span = times[i] - times[i - 1]
        step = dt if dt is not None else max_dt(u_hat)
        n_sub = max(1, math.ceil(span / step - 1e-9))
        h = span / n_sub
        e_half = torch.exp(linear * (h / 2))
        e_full = e_half * e_half
        for _ in range(n_sub):
            k1 = nonlinear(u_hat)
            k2 = nonlinear(e_half * (u_hat + (h / 2) * k1))
            k3 = nonlinear(e_half * u_hat + (h / 2) * k2)
            k4 = nonlinear(e_full * u_hat + h * e_half * k3)
            u_hat = e_full * u_hat + (h / 6) * (e_full * k1 + 2 * e_half * (k2 + k3) + k4)
        states.append(u_hat)
    return states
