"""Training volumes in memory: each image loaded once, normalized, with its patch centres.

A real domain's image is stored normalized by its robust range; a clean image used by
simulated domains is stored scaled by its robust max (the simulator's working range), with its
CSF/GM/WM tissue model, so that each draw is simulated from it (:mod:`models.data`).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from .intensity import HEAD_STRIDE, normalize, robust_range
from .scanners import ScannerProfile
from .simulate import apply_profile, robust_max
from .tissue import TissueModel, fit_tissue_model, soft_brain, tissue_weights

__all__ = ["Volume", "VolumeStore", "cut_box"]

_SUB = HEAD_STRIDE  # subsampling of the whole-volume estimates of a simulated draw


@dataclass
class Volume:
    """One image in memory: its data, voxel size, patch centres and (simulated use) tissue
    model."""

    data: np.ndarray  # float16; clean / robust max for simulated use, else raw normalized
    voxel_size: tuple[float, float, float]
    centres: np.ndarray  # (N, 3) head voxels to centre patches on
    clean_range: tuple[float, float] = (0.0, 1.0)  # robust range of ``data`` (clean target)
    tissue: TissueModel | None = None  # simulated use: CSF/GM/WM mixture of the clean head
    brain: np.ndarray | None = None  # soft brain weight on the grid (shared), or None
    sub_weights: np.ndarray | None = None  # tissue weights of the 1-in-4 subsample


class VolumeStore:
    """Loads each image once, keeps it in memory as float16 (about 14 MB per 1 mm head)."""

    def __init__(self, clip_max: float = 1.0) -> None:
        self.clip_max = clip_max
        self._cache: dict[tuple[str, bool], Volume] = {}
        self._brains: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _brain(self, path: str | None, shape: tuple[int, ...]) -> np.ndarray | None:
        if path is None:
            return None
        if path not in self._brains:
            mask = np.asarray(nib.load(path).dataobj) > 0
            self._brains[path] = soft_brain(mask).astype(np.float16)
        brain = self._brains[path]
        if brain.shape != shape:
            warnings.warn(
                f"{path}: brain mask grid {brain.shape} is not the image grid {shape}",
                stacklevel=2,
            )
            return None
        return brain

    def get(self, path: str, simulated: bool, brain_mask: str | None = None) -> Volume:
        key = (path, simulated)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        img = nib.load(path)
        if len(img.shape) != 3:
            raise ValueError(f"{path}: training images must be 3D, got shape {img.shape}")
        raw = np.asarray(img.dataobj, dtype=np.float32)
        vs = tuple(float(v) for v in img.header.get_zooms()[:3])
        vol = Volume(raw, vs, np.zeros((0, 3), int))
        if simulated:
            data = raw / robust_max(raw)  # the simulator's working range
            fg = data > 0.1
            with self._lock:
                brain = self._brain(brain_mask, data.shape)
            vol.brain = brain
            vol.tissue = fit_tissue_model(data, None if brain is None else brain > 0.5)
            sub = data[::_SUB, ::_SUB, ::_SUB]
            bsub = None if brain is None else brain[::_SUB, ::_SUB, ::_SUB].astype(np.float32)
            vol.sub_weights = tissue_weights(sub, vol.tissue, bsub).astype(np.float16)
            vol.clean_range = robust_range(data)
        else:
            lo, hi = robust_range(raw)
            data = normalize(raw, lo, hi, self.clip_max)
            fg = data > -0.8
        idx = np.argwhere(fg[::4, ::4, ::4]) * 4
        if len(idx) == 0:
            idx = np.array([[s // 2 for s in data.shape]])
        vol.data, vol.centres = data.astype(np.float16), idx
        with self._lock:
            self._cache[key] = vol
        return vol

    def simulate_subsample(self, vol: Volume, profile: ScannerProfile) -> np.ndarray:
        """The whole volume as ``profile`` records it, on a 1-in-4 subsample (each randomised
        draw is a new scanner, so nothing is cached)."""
        sub = vol.data[::_SUB, ::_SUB, ::_SUB].astype(np.float32)
        tissue = None if vol.tissue is None else (vol.sub_weights.astype(np.float32), vol.tissue)
        vs = tuple(_SUB * v for v in vol.voxel_size)
        return apply_profile(sub, profile, voxel_size_mm=vs, tissue=tissue)


def cut_box(data: np.ndarray, start, size) -> np.ndarray:
    """data[start:start+size] with edge padding where the box leaves the volume."""
    sl, pads = [], []
    for s, n, dim in zip(start, size, data.shape, strict=True):
        a, b = max(s, 0), min(s + n, dim)
        sl.append(slice(a, b))
        pads.append((a - s, s + n - b))
    out = data[tuple(sl)]
    if any(p != (0, 0) for p in pads):
        out = np.pad(out, pads, mode="edge")
    return out
