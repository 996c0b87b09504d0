"""Scanner-effect simulator: turn one T1w head into what another scanner would have recorded.

A :class:`~models.scanners.ScannerProfile` describes one synthetic scanner; its effects are
applied in this order to an image whose intensities are first divided by its robust maximum
(the 99.5th percentile of the foreground, so the working range is about [0, 1]):

1. **Tissue contrast** (``sequence`` set): each voxel's intensity is multiplied by the gain of
   its tissue, ``y = x * sum_k w_k g_k``, with soft weights ``w`` of CSF, GM, WM and non-brain
   tissue (:func:`models.tissue.tissue_weights`). ``g_k`` moves the head's own mean of tissue k
   (relative to WM) to the sequence's signal ratio (:func:`models.tissue.signal_ratios`), so
   the texture within a tissue is the real image's while the contrast between tissues is the
   simulated scanner's.
2. **Intensity transfer curve**: ``y = x ** gamma``; a contrast stretch around
   ``contrast_level`` (older profiles; 1 = none).
3. **Bias field**: a smooth multiplicative field ``exp(bias_strength * f(r))``; ``f`` is a sum
   of six plane cosines in millimetre coordinates with wavelength about ``bias_scale_mm``.
4. **Resolution**: Gaussian blur of ``blur_fwhm_mm`` FWHM, plus ``slice_fwhm_mm`` along
   ``slice_axis`` (thick slices).
5. **Units**: ``y * scale + offset``.
6. **Noise**: Rician (magnitude of complex Gaussian) or Gaussian, ``noise_sigma`` as a fraction
   of the robust maximum.
7. **Storage**: rounding to ``bit_depth`` bits over [0, 1.5 x scale] (0 = float).

The result is multiplied back by the input's robust maximum, so a simulated image keeps the
input's units, is float32, and is never negative. Everything is deterministic given ``seed``:
the bias field and the noise come from ``numpy.random.default_rng([crc32(name), seed])``.

Profiles, families, the named training and held-out scanners and their JSON files are in
:mod:`models.scanners` (re-exported here).
"""

from __future__ import annotations

import zlib

import numpy as np
from scipy import ndimage

from .scanners import (
    ScannerProfile,
    default_profiles,
    legacy_profiles,
    load_profiles,
    resolve_profiles,
    sample_profile,
    save_profiles,
    training_profiles,
    unseen_profiles,
)
from .tissue import TissueModel, fit_tissue_model, signal_ratios, soft_brain, tissue_weights

__all__ = [
    "ScannerProfile",
    "default_profiles",
    "training_profiles",
    "unseen_profiles",
    "load_profiles",
    "save_profiles",
    "resolve_profiles",
    "legacy_profiles",
    "sample_profile",
    "robust_max",
    "apply_profile",
    "tissue_gains",
    "simulate_scanner",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def robust_max(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """99.5th percentile of the foreground (``mask``, or voxels above 5% of the maximum)."""
    data = np.asarray(data, dtype=np.float32)
    if mask is not None:
        fg = data[np.asarray(mask, dtype=bool)]
    else:
        top = float(data.max()) if data.size else 0.0
        fg = data[data > 0.05 * top] if top > 0 else data.ravel()
    if fg.size == 0:
        return 1.0
    value = float(np.percentile(fg, 99.5))
    return value if value > 0 else 1.0


def bias_field(
    shape: tuple[int, int, int],
    profile: ScannerProfile,
    rng: np.random.Generator,
    voxel_size_mm=(1.0, 1.0, 1.0),
    origin_vox=(0, 0, 0),
    full_shape: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Multiplicative bias field on a block of ``shape`` starting at ``origin_vox`` of a volume.

    The field is defined in millimetres relative to the centre of ``full_shape`` (default:
    ``shape``), so a patch gets exactly the values it would have inside the whole volume.
    """
    full_shape = tuple(full_shape or shape)
    n = 6
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    freqs = directions / profile.bias_scale_mm * rng.uniform(0.7, 1.3, size=(n, 1))
    phases = rng.uniform(0, 2 * np.pi, size=n)
    amps = rng.normal(size=n)
    amps *= np.sqrt(2.0 / np.sum(amps**2))  # log-field std ~ bias_strength
    if profile.bias_strength == 0:
        return np.ones(shape, dtype=np.float32)
    axes = [
        ((np.arange(shape[a]) + origin_vox[a] - (full_shape[a] - 1) / 2.0) * voxel_size_mm[a])
        for a in range(3)
    ]
    # sum_k amp_k cos(a_k + b_k + c_k) = Re sum_k (amp_k e^{i a_k}) e^{i b_k} e^{i c_k}: one
    # rank-6 complex product (a BLAS contraction), no full-size cosines
    per_axis = [np.exp(1j * 2 * np.pi * freqs[:, a, None] * axes[a][None]) for a in range(3)]
    first = (amps * np.exp(1j * phases))[:, None] * per_axis[0]
    log_field = np.einsum(
        "ki,kj,kl->ijl",
        first.astype(np.complex64),
        *(v.astype(np.complex64) for v in per_axis[1:]),
        optimize=True,
    ).real
    return np.exp(profile.bias_strength * log_field, dtype=np.float32)


def tissue_gains(profile: ScannerProfile, model: TissueModel) -> np.ndarray:
    """Gains of CSF, GM, WM that move the head's tissue means (relative to WM) to the
    sequence's signal ratios; WM keeps its level. Clipped to [0.1, 10]."""
    means = np.maximum(np.asarray(model.means, np.float64), 1e-6)
    own = means / means[2]
    return np.clip(signal_ratios(profile) / own, 0.1, 10.0).astype(np.float32)


def apply_profile(
    norm: np.ndarray,
    profile: ScannerProfile,
    *,
    voxel_size_mm=(1.0, 1.0, 1.0),
    seed: int = 0,
    origin_vox=(0, 0, 0),
    full_shape: tuple[int, int, int] | None = None,
    tissue: tuple[np.ndarray, TissueModel] | None = None,
) -> np.ndarray:
    """Apply ``profile`` to an image already divided by its robust maximum (float32 out, >= 0).

    The building block of :func:`simulate_scanner`; data loaders call it on patches, giving
    ``origin_vox``/``full_shape`` so the bias field matches the whole-volume one. Blur on a
    patch differs from the whole volume only within ~2 sigma of the patch border.
    ``tissue`` = (weights (4, *norm.shape) of :func:`models.tissue.tissue_weights`, the head's
    tissue model): needed when ``profile.sequence`` is set; without it the weights are
    estimated from ``norm`` itself, the whole head standing for the brain.
    """
    rng = np.random.default_rng([zlib.crc32(profile.name.encode()), int(seed) & 0xFFFFFFFF])
    x = np.clip(np.asarray(norm, dtype=np.float32), 0.0, None)
    if profile.sequence != "none":
        if tissue is None:
            model = fit_tissue_model(x)
            tissue = (tissue_weights(x, model), model)
        weights, model = tissue
        gains = np.append(tissue_gains(profile, model), np.float32(profile.other_gain))
        x = x * np.tensordot(gains, weights, axes=1).astype(np.float32)
    y = np.power(x, profile.gamma, dtype=np.float32) if profile.gamma != 1.0 else x.copy()
    if profile.contrast != 1.0:
        w = np.exp(-0.5 * ((y - profile.contrast_level) / profile.contrast_width) ** 2)
        y = y + (profile.contrast - 1.0) * (y - profile.contrast_level) * w
        np.clip(y, 0.0, None, out=y)
    y *= bias_field(y.shape, profile, rng, voxel_size_mm, origin_vox, full_shape)
    sigma = blur_sigma_vox(profile, voxel_size_mm)
    if any(sigma):
        y = ndimage.gaussian_filter(y, sigma=sigma, mode="nearest")
    y = y * profile.scale + profile.offset
    if profile.noise_sigma > 0:
        n1 = rng.standard_normal(y.shape, dtype=np.float32) * profile.noise_sigma
        if profile.noise == "rician":
            n2 = rng.standard_normal(y.shape, dtype=np.float32) * profile.noise_sigma
            y = np.sqrt((y + n1) ** 2 + n2**2)
        else:
            y = y + n1
    y = np.clip(y, 0.0, None).astype(np.float32, copy=False)
    if profile.bit_depth:
        step = np.float32(1.5 * profile.scale / (2**profile.bit_depth - 1))
        y = np.minimum(np.round(y / step), 2**profile.bit_depth - 1) * step
    return y


def blur_sigma_vox(profile: ScannerProfile, voxel_size_mm) -> list[float]:
    """Gaussian sigma per axis, in voxels: isotropic blur and slice thickness combined."""
    out = []
    for axis, v in enumerate(voxel_size_mm):
        fwhm2 = profile.blur_fwhm_mm**2 + (
            profile.slice_fwhm_mm**2 if axis == profile.slice_axis else 0
        )
        out.append(float(np.sqrt(fwhm2) * _FWHM_TO_SIGMA / float(v)))
    return out


def blur_margin(profile: ScannerProfile, voxel_size_mm) -> int:
    """Voxels a patch needs around it so its blur equals the whole volume's (3 sigma + 1)."""
    return int(np.ceil(3 * max(blur_sigma_vox(profile, voxel_size_mm)))) + 1


def simulate_scanner(
    data: np.ndarray,
    profile: ScannerProfile,
    *,
    voxel_size_mm=(1.0, 1.0, 1.0),
    seed: int = 0,
    mask: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``data`` (a 3D head, any units) as ``profile``'s scanner would record it.

    ``mask`` (optional) selects the foreground used for the robust maximum; by default voxels
    above 5% of the maximum. ``brain_mask`` (optional, same grid): where CSF, GM and WM are;
    outside it is non-brain tissue (without it, the whole head counts as brain). Output:
    float32, non-negative, in the input's units (scaled by ``profile.scale``), same shape.
    Deterministic given ``seed``.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"simulate_scanner expects a 3D volume, got shape {data.shape}")
    if len(voxel_size_mm) != 3 or min(voxel_size_mm) <= 0:
        raise ValueError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm}")
    ref = robust_max(data, mask)
    norm = data / ref
    tissue = None
    if profile.sequence != "none":
        brain = None if brain_mask is None else np.asarray(brain_mask) > 0
        model = fit_tissue_model(norm, brain)
        weight = None if brain is None else soft_brain(brain)
        tissue = (tissue_weights(norm, model, weight), model)
    out = apply_profile(norm, profile, voxel_size_mm=voxel_size_mm, seed=seed, tissue=tissue)
    out *= ref
    return out
