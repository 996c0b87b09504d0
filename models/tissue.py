"""Tissue maps and T1-weighted signal equations for the scanner simulator.

A simulated scanner changes contrast *per tissue*, as real ones do: T1 relaxation times
differ between 1.5 T and 3 T, and MPRAGE, IR-FSPGR, 3D TFE and SPGR weight CSF, grey and white
matter differently. Three pieces:

* :class:`TissueModel`: a 3-class Gaussian mixture (CSF < GM < WM) of the brain intensities
  of one clean head, fitted once (EM on a subsample, initialised at the terciles);
* :func:`tissue_weights`: per-voxel posteriors of that mixture computed on a slightly smoothed
  image (so a voxel's class depends on its neighbourhood, not on its intensity alone: the
  change is not a global intensity curve that histogram matching would undo), times a soft
  brain weight; what is outside the brain ("other": scalp fat, muscle, bone) is a 4th class;
* :func:`signal_ratios`: steady-state signal of each brain tissue relative to white matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["TissueModel", "fit_tissue_model", "tissue_weights", "signal_ratios", "TISSUES"]

TISSUES = ("csf", "gm", "wm")
_MAX_FIT_VOXELS = 200_000


@dataclass(frozen=True)
class TissueModel:
    """Means, standard deviations and weights of CSF, GM and WM intensities (one head)."""

    means: tuple[float, float, float]
    sds: tuple[float, float, float]
    weights: tuple[float, float, float]

    def posteriors(self, x: np.ndarray) -> np.ndarray:
        """(3, *x.shape) float32 posteriors of CSF, GM, WM for intensities ``x``."""
        m = np.asarray(self.means, np.float32).reshape(3, *([1] * x.ndim))
        s = np.asarray(self.sds, np.float32).reshape(3, *([1] * x.ndim))
        w = np.asarray(self.weights, np.float32).reshape(3, *([1] * x.ndim))
        logp = np.log(w / s) - 0.5 * ((x[None] - m) / s) ** 2
        logp -= logp.max(axis=0, keepdims=True)
        p = np.exp(logp)
        return (p / p.sum(axis=0, keepdims=True)).astype(np.float32)


def fit_tissue_model(
    data: np.ndarray, brain: np.ndarray | None = None, iterations: int = 30, seed: int = 0
) -> TissueModel:
    """EM fit of a 3-class 1-D Gaussian mixture to the smoothed brain intensities.

    ``brain``: a boolean or [0, 1] brain mask; without one, every voxel above 10% of the
    robust maximum counts (the whole head then stands for the brain).
    """
    x = ndimage.gaussian_filter(np.asarray(data, np.float32), 1.0)
    if brain is not None:
        sel = np.asarray(brain) > 0.5
    else:
        top = float(np.percentile(x, 99.5)) if x.size else 1.0
        sel = x > 0.1 * top
    v = x[sel]
    if v.size < 30:
        raise ValueError("too few brain voxels to fit a tissue model")
    if v.size > _MAX_FIT_VOXELS:
        v = np.random.default_rng(seed).choice(v, _MAX_FIT_VOXELS, replace=False)
    v = v.astype(np.float64)
    edges = np.percentile(v, [0, 33.3, 66.7, 100])
    means = np.array(
        [v[(v >= a) & (v <= b)].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    )
    sds = np.full(3, max(v.std() / 3, 1e-6))
    weights = np.full(3, 1 / 3)
    for _ in range(iterations):
        logp = (
            np.log(weights / sds)[:, None] - 0.5 * ((v[None] - means[:, None]) / sds[:, None]) ** 2
        )
        logp -= logp.max(axis=0)
        r = np.exp(logp)
        r /= r.sum(axis=0)
        n = r.sum(axis=1) + 1e-9
        means = (r @ v) / n
        sds = np.sqrt((r * (v[None] - means[:, None]) ** 2).sum(axis=1) / n) + 1e-3 * v.std()
        weights = n / n.sum()
    order = np.argsort(means)
    return TissueModel(
        tuple(float(a) for a in means[order]),
        tuple(float(a) for a in sds[order]),
        tuple(float(a) for a in weights[order]),
    )


def tissue_weights(
    data: np.ndarray, model: TissueModel, brain_weight: np.ndarray | None = None
) -> np.ndarray:
    """(4, *data.shape) float32: CSF, GM, WM (inside the brain) and other (outside); sums to 1.

    ``brain_weight``: soft brain mask in [0, 1] on ``data``'s grid (``None``: all brain).
    """
    x = ndimage.gaussian_filter(np.asarray(data, np.float32), 1.0, mode="nearest")
    post = model.posteriors(x)
    b = np.ones_like(x) if brain_weight is None else np.asarray(brain_weight, np.float32)
    return np.concatenate([post * b[None], (1.0 - b)[None]]).astype(np.float32)


def soft_brain(mask: np.ndarray, sigma_vox: float = 1.5) -> np.ndarray:
    """A binary brain mask smoothed to a [0, 1] weight (registration is never exact)."""
    return np.clip(ndimage.gaussian_filter(np.asarray(mask, np.float32), sigma_vox), 0.0, 1.0)


def _spgr(pd: float, t1: float, tr: float, flip_deg: float) -> float:
    """Spoiled gradient echo steady state (TE << T2*): PD sin(a) (1 - E1) / (1 - cos(a) E1)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-tr / t1)
    return float(pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1))


def _inversion_recovery(pd: float, t1: float, tr: float, ti: float) -> float:
    """Magnitude inversion recovery: PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)|."""
    return float(pd * abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)))


def signal_ratios(profile) -> np.ndarray:
    """Signal of CSF, GM, WM relative to WM for a profile's sequence, attenuated.

    The ideal equations overstate the contrast of a real acquisition (a readout train samples
    the recovery over hundreds of ms; partial volume mixes tissues): the ratios are raised to
    ``profile.contrast_exponent`` (< 1 flattens them toward 1).
    """
    t1 = (profile.t1_csf_ms, profile.t1_gm_ms, profile.t1_wm_ms)
    pd = (profile.pd_csf, profile.pd_gm, profile.pd_wm)
    if profile.sequence == "spgr":
        s = [_spgr(p, t, profile.tr_ms, profile.flip_deg) for p, t in zip(pd, t1, strict=True)]
    else:  # mprage, irfspgr, tfe: inversion-prepared
        s = [
            _inversion_recovery(p, t, profile.tr_ms, profile.ti_ms)
            for p, t in zip(pd, t1, strict=True)
        ]
    s = np.maximum(np.asarray(s) / max(s[2], 1e-9), 1e-3)
    return s**profile.contrast_exponent
