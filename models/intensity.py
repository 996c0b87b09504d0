"""Intensity normalization: a robust range mapped to [-1, 1], and back.

The reference maps each whole volume min-max to [-1, 1]. One bright voxel (fat, a vessel, an
artefact) then squeezes the brain into a narrow band, so here the range is robust:

* ``lo`` = 0.5th percentile of the whole volume (the background of a head),
* ``hi`` = 99.5th percentile of the foreground (voxels above 5% of the maximum),

``x_n = 2 (x - lo) / (hi - lo) - 1``, clipped to ``[-1, clip_max]`` (``clip_max`` = 1 for
the tanh generator of the reference configuration; 2 for the fast configuration, whose linear
output keeps the brightest tissue).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .simulate import robust_max

__all__ = [
    "robust_range",
    "normalize",
    "denormalize",
    "intensity_quantiles",
    "head_quantiles",
    "FIXED_OUTPUT_RANGE",
]

#: the 1-in-HEAD_STRIDE subsample (per axis) whose quantiles describe a whole head
HEAD_STRIDE = 4

#: Harmonized images are written with lo -> 0 and hi -> 1000 by default ("fixed" scale).
FIXED_OUTPUT_RANGE = (0.0, 1000.0)


def robust_range(data: np.ndarray) -> tuple[float, float]:
    """(lo, hi): 0.5th percentile of all voxels, 99.5th percentile of the foreground."""
    data = np.asarray(data, dtype=np.float32)
    lo = float(np.percentile(data, 0.5))
    hi = robust_max(data)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def normalize(data: np.ndarray, lo: float, hi: float, clip_max: float = 1.0) -> np.ndarray:
    """Map [lo, hi] to [-1, 1], clip to [-1, clip_max]; float32."""
    x = (np.asarray(data, dtype=np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1
    return np.clip(x, -1.0, clip_max, out=x)


def denormalize(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`normalize` (without the clip), never below ``min(lo, 0)``; float32."""
    y = (np.asarray(x, dtype=np.float32) + 1) * np.float32((hi - lo) / 2.0) + np.float32(lo)
    return np.clip(y, min(lo, 0.0), None, out=y)


def intensity_quantiles(x: torch.Tensor, n: int) -> torch.Tensor:
    """Evenly spaced quantiles (B, n) of each normalized image's voxels above the background
    level -1 (all voxels when fewer than 64 are): where a window's tissues lie on the
    intensity axis. x (B, 1, ...)."""
    x = x.detach().float()
    return _quantiles(x, x > -0.95, n)


def head_quantiles(x: torch.Tensor, n: int, stride: int = 1) -> torch.Tensor:
    """Evenly spaced quantiles (B, n) of each normalized whole head x (B, 1, D, H, W), on a
    1-in-``stride`` subsample per axis: its voxels whose 3x3x3 neighbourhood mean is above
    -0.8 (10% of the robust range). The neighbourhood mean keeps a noisy scanner's air out
    (Rician noise lifts single air voxels above a plain threshold, and would fill the lower
    quantiles with air) and CSF, skull and edges in: one head gives one voxel set whatever
    its scanner, so the quantiles of two versions compare tissue with tissue."""
    if stride > 1:
        x = x[..., ::stride, ::stride, ::stride]
    x = x.detach().float()
    local = F.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
    return _quantiles(x, local > -0.8, n)


def _quantiles(x: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
    levels = (torch.arange(n, device=x.device, dtype=torch.float32) + 0.5) / n
    rows = []
    for v, k in zip(x.flatten(1), keep.flatten(1), strict=True):
        inside = v[k]
        rows.append(torch.quantile(inside if inside.numel() >= 64 else v, levels))
    return torch.stack(rows)
