"""Group level, total grey-matter volume (TGV): Atropos grey matter, and back to native mL.

The segmentation runs in template space; :func:`native_volume_factor` is the affine's
Jacobian that turns a template-space volume into the native one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline import figures as figs

#: Grid (mm) the segmentation runs on: finer images are resampled (< 5 s per image).
SEGMENTATION_MM = 2.0


def native_volume_factor(xfm: Path | None) -> float:
    """Native volume / template volume, from the affine's 3x3 linear part (NaN if unknown).

    * ITK text (``.txt``, ants backend): the first 9 numbers of ``Parameters:`` are the matrix
      (row-major) mapping template points to subject points: factor = |det|.
    * FLIRT (``.mat``, fsl backend): a 4x4 matrix mapping native mm to template mm:
      factor = 1 / |det|.
    """
    if xfm is None:
        return math.nan
    try:
        text = xfm.read_text()
    except OSError:
        return math.nan
    try:
        if xfm.suffix == ".txt":
            line = next(s for s in text.splitlines() if s.startswith("Parameters:"))
            matrix = np.array(line.split(":", 1)[1].split()[:9], dtype=float).reshape(3, 3)
            return float(abs(np.linalg.det(matrix)))
        matrix = np.array(text.split(), dtype=float).reshape(4, 4)[:3, :3]
        return float(1.0 / abs(np.linalg.det(matrix)))
    except (StopIteration, ValueError, ZeroDivisionError):
        return math.nan


def grey_matter_ml(data: np.ndarray, mask: np.ndarray, zooms: np.ndarray) -> float:
    """Grey-matter volume (mL, on the image's grid) from a 3-class Atropos segmentation."""
    import ants

    # Atropos' k-means start fails on tiny intensity ranges (e.g. max 0.01): rescale first
    scaled = figs.normalize_in_mask(np.asarray(data, dtype=np.float32), mask) * 100.0
    img = ants.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32), spacing=tuple(zooms))
    msk = ants.from_numpy(mask.astype(np.float32), spacing=tuple(zooms))
    if min(zooms) < SEGMENTATION_MM - 1e-3:
        target = (SEGMENTATION_MM,) * 3
        img = ants.resample_image(img, target, use_voxels=False, interp_type=0)
        msk = ants.resample_image(msk, target, use_voxels=False, interp_type=1)
    seg = ants.atropos(
        a=img, x=msk, i="kmeans[3]", m="[0.1,1x1x1]", c="[3,0.01]", priorweight=0.0, verbose=0
    )
    # k-means classes come sorted by mean intensity: CSF < GM < WM on a T1w image
    gm = seg["probabilityimages"][1].numpy() * (msk.numpy() > 0.5)
    return float(gm.sum() * np.prod(img.spacing) / 1000.0)
