"""The model's domain: the template space, grid and preprocessing of its training images (as its
card records them), how an input differs from it, and resampling between grids of one world.

A card records (``disarm-train``): ``training.grid`` (``shape``, ``affine``, ``voxel_size_mm``)
and ``training.data.template_space`` / ``training.data.preprocessing`` (``Backend``,
``BiasCorrection``, ...). Cards without them get no resampling and no warning (no opinion).

Templates of one family (all ``MNI*`` spaces) share millimetre world coordinates, so an image
on another MNI grid (FSL's MNI152NLin6Asym, 182x218x182) is resampled onto the model's grid
(e.g. nilearn's MNI152NLin2009aSym, 197x233x189) through the two affines, linearly, harmonized
there and resampled back. Two templates are still two different heads (affinely close), and
FAST is not N4: those differences are only warned about.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "BIAS_CORRECTION",
    "Grid",
    "ModelDomain",
    "bias_correction",
    "grid_warnings",
    "space_family",
]

#: The bias correction each preprocessing backend of disarm-pipeline applies.
BIAS_CORRECTION = {"fsl": "FAST", "ants": "N4"}
#: Largest relative voxel-size difference (any axis) still counted as the model's resolution.
VOXEL_TOLERANCE = 0.2


def space_family(space: str) -> str:
    """``MNI`` for every MNI template (one world of millimetre coordinates), else the name."""
    return "MNI" if space.upper().startswith("MNI") else space


def bias_correction(preprocessing: dict | None) -> str | None:
    """``BiasCorrection`` of a ``Preprocessing`` record, else the one of its ``Backend``."""
    prep = preprocessing or {}
    return prep.get("BiasCorrection") or BIAS_CORRECTION.get(str(prep.get("Backend", "")))


def _zooms_match(zooms, trained, tolerance: float = VOXEL_TOLERANCE) -> bool:
    return all(abs(z - t) <= tolerance * t for z, t in zip(zooms, trained, strict=True))


def grid_warnings(
    img: nib.Nifti1Image, card: dict, tolerance: float = VOXEL_TOLERANCE
) -> list[str]:
    """Sentences saying how ``img`` differs from the grid the model was trained on (voxel size
    off by more than ``tolerance``, relative, on any axis); empty when it matches or when the
    card does not record its grid (``training.grid``, written by disarm-train)."""
    grid = (card.get("training") or {}).get("grid") or {}
    trained = grid.get("voxel_size_mm")
    if not trained:
        return []
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    if _zooms_match(zooms, trained, tolerance):
        return []
    fmt = "x".join
    return [
        f"the input has {fmt(f'{z:g}' for z in zooms)} mm voxels but the model was trained on "
        f"{fmt(f'{t:g}' for t in trained)} mm images (its template grid): register the image "
        "to that grid first (e.g. the desc-preproc output of disarm-pipeline)"
    ]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: its shape and voxel-to-world (mm) affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def of(cls, img: nib.Nifti1Image) -> Grid:
        return cls(tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, dtype=float))

    @property
    def zooms(self) -> list[float]:
        return [float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0))]

    def same_as(self, other: Grid, atol: float = 1e-3) -> bool:
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "affine": np.round(self.affine, 6).tolist(),
            "voxel_size_mm": [round(z, 4) for z in self.zooms],
        }


def resample(data: np.ndarray, src: Grid, dst: Grid, cval: float) -> np.ndarray:
    """``data`` (on ``src``) on ``dst``: linear, through world coordinates; ``cval`` outside
    ``src``. Grids that differ by whole voxels (flips, shifts) are copied exactly."""
    vox = np.linalg.inv(src.affine) @ dst.affine  # dst voxel -> src voxel
    near = np.abs(vox - np.round(vox)) < 1e-6  # float noise of whole-voxel offsets
    vox[near] = np.round(vox[near])
    return ndimage.affine_transform(
        data, vox[:3, :3], vox[:3, 3], output_shape=dst.shape, order=1, cval=cval
    )


@dataclass(frozen=True)
class ModelDomain:
    """Template space, grid and preprocessing of a model's training images (``None``/empty
    where its card does not say)."""

    space: str | None
    grid: Grid | None
    preprocessing: dict

    @classmethod
    def from_card(cls, card: dict) -> ModelDomain:
        training = card.get("training") or {}
        data = training.get("data") or {}
        g = training.get("grid") or {}
        grid = None
        if g.get("shape") and g.get("affine"):
            grid = Grid(tuple(int(n) for n in g["shape"]), np.asarray(g["affine"], dtype=float))
        return cls(data.get("template_space"), grid, dict(data.get("preprocessing") or {}))

    def resamples(self, img: nib.Nifti1Image, space: str | None) -> bool:
        """True when ``img``, in template ``space``, lies on another grid of the model's world
        (same space family, the model's voxel size): it is then harmonized on the model's
        grid. Other voxel sizes are left to :func:`grid_warnings`."""
        if self.grid is None or not self.space or not space or len(img.shape) != 3:
            return False
        if space_family(space) != space_family(self.space):
            return False
        grid = Grid.of(img)
        return not grid.same_as(self.grid) and _zooms_match(grid.zooms, self.grid.zooms)

    def to_model_grid(self, data: np.ndarray, grid: Grid) -> np.ndarray:
        """``data`` (on ``grid``) on the model's grid; outside it, its minimum (the air)."""
        return resample(data, grid, self.grid, float(data.min()))

    def from_model_grid(self, data: np.ndarray, grid: Grid, fill: np.ndarray) -> np.ndarray:
        """``data`` (on the model's grid) back on ``grid``; ``fill`` where the model's grid
        does not reach."""
        back = resample(data, self.grid, grid, np.nan)
        return np.where(np.isnan(back), fill, back).astype(np.float32)

    def warnings(self, space: str | None, preprocessing: dict | None) -> list[str]:
        """One sentence per way the input's template space or preprocessing differs from the
        model's (nothing where either side is unknown)."""
        out = []
        if self.space and space and space != self.space:
            if space_family(space) == space_family(self.space):
                out.append(
                    f"the input is in {space} but the model was trained in {self.space}: the "
                    "same millimetre coordinates (harmonized on the model's grid), but another "
                    "template, so heads sit and are shaped slightly differently (affinely "
                    "close) from those the model learned"
                )
            else:
                out.append(
                    f"the input is in {space} but the model was trained in {self.space}: "
                    f"register it to {self.space} first"
                )
        prep = preprocessing or {}
        mine, theirs = bias_correction(self.preprocessing), bias_correction(prep)
        backend, model_backend = prep.get("Backend"), self.preprocessing.get("Backend")
        if (mine and theirs and mine != theirs) or (
            backend and model_backend and backend != model_backend
        ):
            out.append(
                f"the input was preprocessed {_how(backend, theirs)} but the model's training "
                f"images {_how(model_backend, mine)}: its intensities and residual bias may "
                "differ from those the model learned"
            )
        return out

    def provenance(self, space: str | None, resampled: bool) -> dict:
        """Sidecar fields: the input's space, the model's space and grid, and whether the
        image was harmonized on the model's grid."""
        meta: dict = {"ResampledToModelGrid": resampled}
        if space:
            meta["InputSpace"] = space
        if self.space:
            meta["ModelSpace"] = self.space
        if self.grid is not None:
            meta["ModelGrid"] = self.grid.to_dict()
        if self.preprocessing:
            meta["ModelPreprocessing"] = {
                "Backend": self.preprocessing.get("Backend"),
                "BiasCorrection": bias_correction(self.preprocessing),
            }
        if resampled:
            meta["Resampling"] = (
                "linear, through world coordinates: onto the model's grid, harmonized there, "
                "back onto the input's grid (the input's own values where the model's grid "
                "does not reach)"
            )
        return meta


def _how(backend: str | None, bias: str | None) -> str:
    """``by the fsl backend (FAST bias correction)`` and shorter forms."""
    if backend and bias:
        return f"by the {backend} backend ({bias} bias correction)"
    return f"by the {backend} backend" if backend else f"with {bias} bias correction"
