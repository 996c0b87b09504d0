"""Versions of the software that made an output, for the JSON sidecars."""

from __future__ import annotations

import os
import platform
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline import __version__

#: Why a sidecar records thread counts: outputs that change in their last bits with them.
ITK_THREADS_NOTE = (
    "ITK threads of these steps: their multi-threaded sums round differently with another "
    "thread count, so the output is reproduced bit for bit only with the same counts (the "
    "same count gives the same output on every run)."
)
TORCH_THREADS_NOTE = (
    "torch CPU threads: another count changes the image in its last bits (float rounding of "
    "multi-threaded sums); the same count gives the same image on every run."
)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@cache
def fsl_version() -> str | None:
    """FSL's version, from ``$FSLDIR/etc/fslversion``."""
    fsldir = os.getenv("FSLDIR")
    if not fsldir:
        return None
    try:
        return (Path(fsldir) / "etc" / "fslversion").read_text().split(":")[0].strip()
    except OSError:
        return None


def software_versions(backend: str | None = None, torch: bool = False) -> dict[str, str]:
    """``{"disarm-pipeline": ..., "nipype": ..., ...}`` for the tools an output went through."""
    versions = {
        "disarm-pipeline": __version__,
        "python": platform.python_version(),
        "nipype": _package_version("nipype"),
        "nibabel": _package_version("nibabel"),
    }
    if backend == "ants":
        versions["antspyx"] = _package_version("antspyx")
        versions["brainextractor"] = _package_version("brainextractor")
    elif backend == "fsl":
        versions["fsl"] = fsl_version() or "unknown"
    if torch:
        versions["torch"] = _package_version("torch")
    return {name: value for name, value in versions.items() if value}
