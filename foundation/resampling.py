"""Band-limited FFT resampling of square fields, as Poseidon maps off-size inputs to its training grid.

Both directions use amplitude-preserving transforms (`norm="forward"`) and run in float32 (FFTs under
bf16/fp16 autocast are inexact or unsupported for non-power-of-two grids).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fft_resample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resample the last two (equal) dims of real `x` to `size` x `size` by truncating or zero-padding Fourier modes.

    Down: keep wavenumbers k in [-(size//2), (size-1)//2]. Up: zero-pad the centred spectrum. For even sizes this
    is exactly Poseidon's `_downsample` / `_upsample`.
    """
    n = x.shape[-1]
    if x.shape[-2] != n:
        raise ValueError(f"fft_resample needs a square field, got spatial shape {tuple(x.shape[-2:])}")
    if n == size:
        return x
    dtype = x.dtype
    x_hat = torch.fft.fft2(x.float(), norm="forward")
    if size < n:
        k = torch.fft.fftfreq(n, d=1.0 / n, device=x.device)
        keep = torch.nonzero((k >= -(size // 2)) & (k <= (size - 1) // 2)).squeeze(1)
        x_hat = x_hat.index_select(-2, keep).index_select(-1, keep)
    else:
        lo = size // 2 - n // 2
        hi = size - n - lo
        shifted = torch.fft.fftshift(x_hat, dim=(-2, -1))
        padded = torch.complex(
            F.pad(shifted.real, (lo, hi, lo, hi)),
            F.pad(shifted.imag, (lo, hi, lo, hi)),
        )
        x_hat = torch.fft.ifftshift(padded, dim=(-2, -1))
    return torch.fft.ifft2(x_hat, norm="forward").real.to(dtype)
