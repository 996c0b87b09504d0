"""Evaluation helpers: travelling-head consistency, anatomy kept, detail kept.

Given clean heads and K simulated scanners (normally the held-out profiles of
:func:`models.simulate.unseen_profiles`), every head is "acquired" on every scanner and then
harmonized. A good harmonization makes the K versions of one head agree with one another
(higher SSIM, lower mean absolute difference than before harmonization) while keeping the
anatomy (SSIM to the clean head) and, on 1 mm data, the fine detail (SSIM to its own input).

All comparisons are made on images scaled by their robust range (``models.intensity``), so
a global gain is not counted as a difference, within a head mask (clean head above 10% of its
robust maximum) for the mean absolute difference; SSIM
(``skimage.metrics.structural_similarity``, data_range 2) is computed on the whole volume.
"""

from __future__ import annotations

from itertools import combinations

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from .intensity import normalize, robust_range
from .simulate import ScannerProfile, robust_max, simulate_scanner, unseen_profiles

__all__ = ["scaled", "ssim", "travelling_heads", "ssim_to_input", "fine_detail", "summarize"]


def scaled(data: np.ndarray) -> np.ndarray:
    """Robust range -> [-1, 1] (clip to [-1, 2]); comparisons ignore global gain/offset."""
    lo, hi = robust_range(data)
    return normalize(data, lo, hi, clip_max=2.0)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two volumes after :func:`scaled`."""
    return float(structural_similarity(scaled(a), scaled(b), data_range=2.0))


def ssim_to_input(img_in: nib.Nifti1Image, img_out: nib.Nifti1Image) -> float:
    """SSIM between an image and its harmonized version (the paper's 0.96 check; on a 1 mm
    input it also shows whether fine detail survived)."""
    return ssim(np.asarray(img_in.dataobj, np.float32), np.asarray(img_out.dataobj, np.float32))


def fine_detail(img_in: nib.Nifti1Image, img_out: nib.Nifti1Image, sigma: float = 1.0) -> dict:
    """How much of the input's finest band the output kept, inside the head.

    The band is ``x - gaussian(x, sigma voxels)`` of each image after :func:`scaled`.
    ``energy_ratio`` = RMS of the output's band / RMS of the input's (1 = as sharp as the input;
    a blur to twice the voxel size leaves well under half); ``correlation`` = Pearson
    correlation of the two bands (1 = the same fine structure). Unlike SSIM, neither is moved
    by a smooth change of contrast, which is what harmonization is meant to make.
    """
    a = scaled(np.asarray(img_in.dataobj, np.float32))
    b = scaled(np.asarray(img_out.dataobj, np.float32))
    mask = a > -0.8  # head: above 10% of the input's robust range
    band_a = (a - ndimage.gaussian_filter(a, sigma))[mask]
    band_b = (b - ndimage.gaussian_filter(b, sigma))[mask]
    return {
        "energy_ratio": float(np.sqrt(np.mean(band_b**2) / np.mean(band_a**2))),
        "correlation": float(np.corrcoef(band_a, band_b)[0, 1]),
    }


def _mad(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(scaled(a)[mask] - scaled(b)[mask]).mean())


def travelling_heads(
    heads: list[nib.Nifti1Image],
    harmonize,
    profiles: list[ScannerProfile] | None = None,
    seed: int = 0,
) -> list[dict]:
    """Simulate every head on every profile, harmonize, and measure agreement.

    ``harmonize``: a callable ``nib.Nifti1Image -> nib.Nifti1Image`` (e.g.
    ``lambda im: h.harmonize(im)[0]`` for a :class:`models.harmonize.Harmonizer` ``h``).
    Returns one dict per head with, before and after harmonization: mean SSIM and mean
    absolute difference (MAD) over all scanner pairs, and mean SSIM to the clean head.
    """
    profiles = profiles or unseen_profiles()
    if len(profiles) < 2:
        raise ValueError("travelling heads need at least two scanner profiles")
    rows = []
    for i, img in enumerate(heads):
        clean = np.asarray(img.dataobj, dtype=np.float32)
        vox = tuple(float(v) for v in img.header.get_zooms()[:3])
        mask = clean > 0.1 * robust_max(clean)
        before, after = [], []
        for k, prof in enumerate(profiles):
            sim = simulate_scanner(clean, prof, voxel_size_mm=vox, seed=seed + 1000 * i + k)
            before.append(sim)
            out = harmonize(nib.Nifti1Image(sim, img.affine, img.header))
            after.append(np.asarray(out.dataobj, dtype=np.float32))
        row = {"head": i}
        for tag, vols in (("before", before), ("after", after)):
            pairs = list(combinations(range(len(vols)), 2))
            row[f"pair_ssim_{tag}"] = float(np.mean([ssim(vols[a], vols[b]) for a, b in pairs]))
            row[f"pair_mad_{tag}"] = float(
                np.mean([_mad(vols[a], vols[b], mask) for a, b in pairs])
            )
            row[f"clean_ssim_{tag}"] = float(np.mean([ssim(clean, v) for v in vols]))
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> str:
    """A markdown table (mean +- sd over heads) of :func:`travelling_heads` rows."""
    keys = [k for k in rows[0] if k != "head"]
    lines = ["| metric | mean | sd |", "|---|---|---|"]
    for k in keys:
        v = np.array([r[k] for r in rows])
        lines.append(f"| {k} | {v.mean():.4f} | {v.std():.4f} |")
    return "\n".join(lines)
