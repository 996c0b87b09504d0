"""Tissue fractions (GM, WM) from a 3-class k-means of the brain intensities."""

from __future__ import annotations

import numpy as np

from .common import N_SEGMENTATION_POINTS, NAN, Volume


def tissue_fractions(x: Volume, mask: np.ndarray) -> tuple[float, float]:
    """(GM, WM) fractions of ``mask`` from a 3-class k-means of its intensities.

    Classes are CSF < GM < WM by centre. The image is mapped by its own 1st/99th brain
    percentiles to 0/1 first (the segmentation ignores gain and offset); k-means (centres
    started at the tercile means, one run: deterministic) is fitted to
    ``N_SEGMENTATION_POINTS`` evenly spaced brain quantiles, then labels every brain voxel by
    its nearest centre. NaN for an image with fewer than 3 distinct brain intensities.
    """
    from sklearn.cluster import KMeans

    values = x[mask].astype(np.float64)
    lo, hi = np.percentile(values, [1, 99])
    if not hi > lo:
        return NAN, NAN
    values = (values - lo) / (hi - lo)
    levels = (np.arange(N_SEGMENTATION_POINTS) + 0.5) / N_SEGMENTATION_POINTS * 100
    sample = np.percentile(values, levels)
    if np.unique(sample).size < 3:
        return NAN, NAN
    init = np.array([t.mean() for t in np.array_split(sample, 3)])[:, None]
    kmeans = KMeans(3, init=init, n_init=1).fit(sample[:, None])
    rank = np.argsort(np.argsort(kmeans.cluster_centers_.ravel()))  # 0 CSF, 1 GM, 2 WM
    share = np.bincount(rank[kmeans.predict(values[:, None])], minlength=3) / values.size
    return float(share[1]), float(share[2])
