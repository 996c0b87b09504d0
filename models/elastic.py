"""Elastic augmentation of training samples (TorchIO's deformation model, ref).

TorchIO's RandomElasticDeformation(num_control_points=10, locked_borders=2, max_displacement=8)
is applied with probability ``elastic_p`` (0.7, ref). Whole volumes go through TorchIO itself
(:func:`seeded_elastic`). A patch gets the same deformation model (:func:`elastic_patch`:
TorchIO's control-point distribution and border locking, SimpleITK's cubic B-spline) on a
virtual 128 mm field centred on it (control-point spacing 18 mm > twice the 8 mm displacement,
TorchIO's no-folding condition), evaluated on the patch voxels only: deforming a whole 128^3
region with TorchIO for every 64^3 patch cost more than the training step itself.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ELASTIC_MARGIN", "elastic_patch", "seeded_elastic"]

_ELASTIC_FIELD_MM = 128.0  # virtual field of a patch deformation: 16 mm grid > 2 x 8 mm
ELASTIC_MARGIN = 9  # voxels cut around a patch to be deformed (displacements up to 8 mm)


def seeded_elastic():
    """TorchIO's RandomElasticDeformation(num_control_points=10, locked_borders=2,
    max_displacement=8, p=1) drawing its control points from a numpy Generator, so the data
    thread never touches torch's global RNG (which the training loop uses)."""
    import torchio as tio

    class SeededElastic(tio.RandomElasticDeformation):
        rng: np.random.Generator = np.random.default_rng(0)

        def get_params(self, num_control_points, max_displacement, num_locked_borders):
            # same distribution and border locking as torchio's own get_params
            field = (self.rng.random((*num_control_points, 3), dtype=np.float32) - 0.5) * 2
            field *= np.asarray(max_displacement, dtype=np.float32)
            for i in range(num_locked_borders):
                field[i, :] = 0
                field[-1 - i, :] = 0
                field[:, i] = 0
                field[:, -1 - i] = 0
            return field

    return SeededElastic(num_control_points=10, locked_borders=2, max_displacement=8)


def _bspline_weights(coords_mm: np.ndarray, spacing: float, n_points: int) -> np.ndarray:
    """(n, n_points) cubic B-spline weights of a control grid starting one spacing before 0
    (SimpleITK's BSplineTransform layout: mesh of n_points - 3 cells over the field)."""
    u = coords_mm / spacing
    cell = np.floor(u).astype(int)
    t = u - cell
    basis = np.stack(
        [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6,
         (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6], axis=1,
    )  # fmt: skip
    w = np.zeros((len(u), n_points), dtype=np.float64)
    for k in range(4):
        idx = np.clip(cell + k, 0, n_points - 1)
        np.add.at(w, (np.arange(len(u)), idx), basis[:, k])
    return w


def elastic_patch(
    t: torch.Tensor, size: int, margin: int, voxel_size, rng: np.random.Generator
) -> torch.Tensor:
    """TorchIO's RandomElasticDeformation(num_control_points=10, locked_borders=2,
    max_displacement=8) on a cubic field of 128 mm centred on the patch, evaluated only on the
    ``size``-voxel patch: ``t`` is (1, size + 2 margin, ...) and the patch is resampled from it
    (trilinear). Same control-point distribution and border locking as TorchIO, cubic B-spline
    interpolation as SimpleITK; ~20x cheaper than deforming the whole 128^3 field."""
    n_cp, field_mm, max_d = 10, _ELASTIC_FIELD_MM, 8.0
    cp = (rng.random((n_cp, n_cp, n_cp, 3)) - 0.5) * 2 * max_d
    for i in range(2):  # TorchIO locks the borders of the first two axes only
        cp[i, :] = cp[-1 - i, :] = 0
        cp[:, i] = cp[:, -1 - i] = 0
    spacing = field_mm / (n_cp - 3)
    weights = []
    for a in range(3):
        vs = float(voxel_size[a])
        # patch voxel centres in mm, in a field whose centre is the patch centre
        x = (np.arange(size) - (size - 1) / 2) * vs + field_mm / 2
        weights.append(_bspline_weights(x, spacing, n_cp))
    disp = np.einsum("xi,yj,zk,ijkc->xyzc", *weights, cp, optimize=True)  # mm
    full = size + 2 * margin
    base = [np.arange(size) + margin for _ in range(3)]
    grid = np.stack(np.meshgrid(*base, indexing="ij"), -1).astype(np.float64)
    grid += disp / np.asarray(voxel_size, dtype=np.float64)  # voxels of the source box
    norm = 2 * grid / (full - 1) - 1  # grid_sample wants (x=W, y=H, z=D) in [-1, 1]
    g = torch.from_numpy(norm[..., ::-1].copy()).float()[None]
    out = torch.nn.functional.grid_sample(
        t[None], g, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0]
