"""MNI templates the preprocessing registers to, resolved offline.

Two sources:

* ``fsl``: ``$FSLDIR/data/standard/MNI152_T1_{1,2}mm{,_brain,_brain_mask}.nii.gz``
  (TemplateFlow id ``MNI152NLin6Asym``); the reference (METHOD.md) registers to the 1 mm head.
* ``nilearn``: the ICBM 2009a symmetric template shipped inside nilearn
  (``MNI152NLin2009aSym``, brain only, no head). It is written once to a cache folder
  (``$DISARM_CACHE`` or ``~/.cache/disarm-pipeline``) so Nipype nodes get file paths.

Nothing is downloaded: templateflow and ANTs' data fetchers fail without internet.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from models.atomic import atomic_path

FSL_SPACE = "MNI152NLin6Asym"
NILEARN_SPACE = "MNI152NLin2009aSym"
RESOLUTIONS = (1, 2)
BACKENDS = ("fsl", "ants")


class TemplateError(RuntimeError):
    """A template (or the FSL installation holding it) cannot be found."""


@dataclass(frozen=True)
class Template:
    """A registration target on disk.

    ``head`` is the whole-head T1w (FSL only; ``None`` for nilearn), ``brain`` the
    brain-only T1w, ``mask`` its binary brain mask. All three share one grid.
    """

    space: str
    resolution: int
    head: Path | None
    brain: Path
    mask: Path
    source: str

    @property
    def grid(self) -> Path:
        """The image whose grid every output in template space is written on."""
        return self.head if self.head is not None else self.brain


def fsl_available() -> bool:
    """True when ``fast`` and ``flirt`` are on PATH and ``$FSLDIR`` is set."""
    return bool(os.environ.get("FSLDIR")) and all(shutil.which(t) for t in ("fast", "flirt"))


def resolve_backend(backend: str) -> str:
    """Map ``auto`` to ``fsl`` when FSL is usable, else ``ants``; check other values."""
    if backend == "auto":
        return "fsl" if fsl_available() else "ants"
    if backend not in BACKENDS:
        raise ValueError(f"unknown preprocessing backend {backend!r} (choose auto, fsl or ants)")
    return backend


def cache_dir() -> Path:
    """Folder for files this package writes once and reuses (``$DISARM_CACHE``)."""
    root = os.environ.get("DISARM_CACHE") or Path.home() / ".cache" / "disarm-pipeline"
    return Path(root)


def _fsl_paths(resolution: int) -> tuple[Path, Path, Path] | None:
    fsldir = os.environ.get("FSLDIR")
    if not fsldir:
        return None
    std = Path(fsldir) / "data" / "standard"
    stem = f"MNI152_T1_{resolution}mm"
    return (
        std / f"{stem}.nii.gz",
        std / f"{stem}_brain.nii.gz",
        std / f"{stem}_brain_mask.nii.gz",
    )


def _fsl_template(resolution: int) -> Template | None:
    paths = _fsl_paths(resolution)
    if paths is None or not all(p.is_file() for p in paths):
        return None
    head, brain, mask = paths
    return Template(FSL_SPACE, resolution, head, brain, mask, "fsl")


def _atomic_save(img, path: Path) -> None:
    """Write a NIfTI so a concurrent reader never sees a half-written file."""
    with atomic_path(path, suffix=".nii.gz") as tmp:
        img.to_filename(tmp)


def _nilearn_template(resolution: int) -> Template:
    import nibabel as nb
    import numpy as np
    from nilearn import datasets

    folder = cache_dir() / "templates"
    prefix = f"tpl-{NILEARN_SPACE}_res-{resolution}"
    brain = folder / f"{prefix}_desc-brain_T1w.nii.gz"
    mask = folder / f"{prefix}_desc-brain_mask.nii.gz"
    if not brain.is_file():
        img = datasets.load_mni152_template(resolution=resolution)
        data = np.asarray(img.dataobj, dtype=np.float32)
        _atomic_save(nb.Nifti1Image(data, img.affine), brain)
    if not mask.is_file():
        img = datasets.load_mni152_brain_mask(resolution=resolution)
        data = (np.asarray(img.dataobj) > 0).astype(np.uint8)
        _atomic_save(nb.Nifti1Image(data, img.affine), mask)
    return Template(NILEARN_SPACE, resolution, None, brain, mask, "nilearn")


def get_template(backend: str, resolution: int = 1) -> Template:
    """Return the template the given backend registers to.

    ``fsl`` needs FSL's MNI152 files (the reference target). ``ants`` uses them too when
    ``$FSLDIR`` holds them, else nilearn's ICBM 2009a template. ``resolution`` 2 is for
    tests and quick demos (about 8x less work than 1).
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"template resolution must be 1 or 2 mm, not {resolution!r}")
    backend = resolve_backend(backend)
    tpl = _fsl_template(resolution)
    if tpl is not None:
        return tpl
    if backend == "fsl":
        paths = _fsl_paths(resolution)
        where = paths[0].parent if paths else "$FSLDIR/data/standard ($FSLDIR is not set)"
        raise TemplateError(
            f"the fsl backend needs MNI152_T1_{resolution}mm(_brain, _brain_mask).nii.gz in "
            f"{where}; install FSL or use the ants backend"
        )
    return _nilearn_template(resolution)
