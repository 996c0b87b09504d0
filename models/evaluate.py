"""Evaluation helpers: travelling-head consistency, anatomy kept, detail kept.

Given clean heads and K simulated scanners (normally the held-out profiles of
:func:`models.simulate.unseen_profiles`), every head is "acquired" on every scanner and then
harmonized. A good harmonization makes the K versions of one head agree with one another
(higher SSIM, lower mean absolute difference than before harmonization) while keeping the
anatomy (SSIM to the clean head) and, on 1 mm data, the fine detail (SSIM to its own input),
without adding a checkerboard (:func:`checkerboard_ratio`, the artefact of stride-2 up-sampling).

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

__all__ = [
    "scaled",
    "ssim",
    "travelling_heads",
    "ssim_to_input",
    "ssim_structure",
    "fine_detail",
    "nyquist_energy",
    "checkerboard_ratio",
    "summarize",
]

#: Second difference along one axis: gain 1 at the Nyquist frequency, 0 at frequency 0.
_NYQUIST_1D = np.array([-0.25, 0.5, -0.25], dtype=np.float32)


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


def ssim_structure(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """SSIM's structure term alone, ``(cov_ab + C3) / (sd_a sd_b + C3)`` in ``win``-voxel
    windows, averaged (after :func:`scaled`, data range 2, ``C3 = (0.03 * 2)^2 / 2``): the
    correlation of local patterns, blind to the changes of brightness and contrast that
    harmonization is meant to make (the paper's 0.96 is this kind of figure)."""
    x, y = scaled(a).astype(np.float64), scaled(b).astype(np.float64)
    mean = lambda v: ndimage.uniform_filter(v, win)  # noqa: E731
    mx, my = mean(x), mean(y)
    vx = np.maximum(mean(x * x) - mx**2, 0)
    vy = np.maximum(mean(y * y) - my**2, 0)
    cov = mean(x * y) - mx * my
    c3 = (0.03 * 2.0) ** 2 / 2
    return float(np.mean((cov + c3) / (np.sqrt(vx * vy) + c3)))


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


def nyquist_energy(x: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared period-2 ("checkerboard") component of ``x`` inside ``mask``.

    The component is the second difference ``[-1, 2, -1] / 4`` applied along all three axes:
    its spectral gain, ``sin^2(pi f_x) sin^2(pi f_y) sin^2(pi f_z)`` (f in cycles/voxel), is 1 at
    the Nyquist corner f = (1/2, 1/2, 1/2), where a stride-2 transposed convolution folds the
    image's low frequencies, and 0 wherever any axis is at frequency 0. The faces
    (stripes, e.g. f = (1/2, 0, 0)) were left out on purpose: anatomical edges put much more
    energy there, so a stripe artefact would be far less visible against them. A local filter,
    unlike an FFT of the masked image, needs no taper: it is averaged over the mask eroded by
    one voxel, so it sees brain voxels only. The image's scale is its brain's own (1st to 99th
    percentile inside ``mask`` = 1), not :func:`scaled`'s whole-volume range, which methods
    that rewrite the background (z-score, DISARM) move while the brain only changes gain.
    """
    mask = np.asarray(mask, dtype=bool)
    lo, hi = np.percentile(x[mask], [1, 99])
    y = (np.asarray(x, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo if hi > lo else 1)
    for axis in range(3):
        y = ndimage.correlate1d(y, _NYQUIST_1D, axis=axis, mode="nearest")
    core = ndimage.binary_erosion(mask, np.ones((3, 3, 3), dtype=bool))
    return float(np.mean(np.square(y[core if core.any() else mask], dtype=np.float64)))


def checkerboard_ratio(x_in: np.ndarray, x_out: np.ndarray, mask: np.ndarray) -> float:
    """Checkerboard energy of the output relative to its input (:func:`nyquist_energy`).

    About 1 when the output passes the input's finest texture through, below 1 when it
    denoises or blurs, above 1 (the issue's limit: 1.05) when it adds a period-2 pattern.
    NaN when the input has none at all (a constant image).
    """
    e_in = nyquist_energy(x_in, mask)
    return nyquist_energy(x_out, mask) / e_in if e_in > 0 else float("nan")


def _mad(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(scaled(a)[mask] - scaled(b)[mask]).mean())


def travelling_heads(
    heads: list[nib.Nifti1Image],
    harmonize,
    profiles: list[ScannerProfile] | None = None,
    seed: int = 0,
    brain_masks: list[np.ndarray | None] | None = None,
) -> list[dict]:
    """Simulate every head on every profile, harmonize, and measure agreement.

    ``brain_masks``: one per head (or ``None``), where the simulator's brain tissues are.

    ``harmonize``: a callable ``nib.Nifti1Image -> nib.Nifti1Image`` (e.g.
    ``lambda im: h.harmonize(im)[0]`` for a :class:`models.harmonize.Harmonizer` ``h``).
    Returns one dict per head with, before and after harmonization: mean SSIM and mean
    absolute difference (MAD) over all scanner pairs, and mean SSIM to the clean head; and the
    mean :func:`checkerboard_ratio` of the harmonized versions to their inputs (within the
    head mask).
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
            brain = brain_masks[i] if brain_masks else None
            sim = simulate_scanner(
                clean, prof, voxel_size_mm=vox, seed=seed + 1000 * i + k, brain_mask=brain
            )
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
        row["checkerboard"] = float(
            np.mean([checkerboard_ratio(b, a, mask) for b, a in zip(before, after, strict=True)])
        )
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
