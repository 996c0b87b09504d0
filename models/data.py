"""Training data: images with scanner labels, scanner-pair sampling, simulation, patches.

Two kinds of scanner domain:

* **real**: the images of one acquired scanner (``TrainImage.profile is None``);
* **simulated**: a :class:`~models.simulate.ScannerProfile` applied on the fly to a clean
  image (``TrainImage.profile`` set). With ``assign="all"`` (the default model) every clean
  image belongs to every simulated domain, with a fresh simulation seed per draw, so the K
  domains differ only by their scanner effects; ``assign="split"`` gives image i to domain
  i mod K only (disjoint subjects per scanner, like real multi-site data).

Each sample draws two different scanners uniformly, then one random image of each (the
reference draws a random scanner, then a random image of it). On CPU a random patch
(``patch_size``) centred on a random head voxel is cut; ``patch_size=None`` gives whole
volumes (GPU). TorchIO's RandomElasticDeformation(num_control_points=10, locked_borders=2,
max_displacement=8) is applied with probability ``elastic_p`` (0.7, ref). Whole volumes go
through TorchIO itself. A patch gets the same deformation model (:func:`elastic_patch`: TorchIO's
control-point distribution and border locking, SimpleITK's cubic B-spline) on a virtual 128 mm
field centred on it (control-point spacing 18 mm > twice the 8 mm displacement, TorchIO's
no-folding condition), evaluated on the patch voxels only: deforming a whole 128^3 region with
TorchIO for every 64^3 patch cost more than the training step itself.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
import torch

from .intensity import normalize, robust_range
from .simulate import ScannerProfile, apply_profile, robust_max

__all__ = ["TrainImage", "VolumeStore", "PairSampler", "Prefetcher", "build_simulated"]

_ELASTIC_FIELD_MM = 128.0  # virtual field of a patch deformation: 16 mm grid > 2 x 8 mm
_ELASTIC_MARGIN = 9


@dataclass(frozen=True)
class TrainImage:
    """One training image: file and scanner label (and a profile for simulated domains)."""

    path: str
    scanner: str
    profile: ScannerProfile | None = None
    subject: str = ""


def build_simulated(
    paths: list[str], profiles: list[ScannerProfile], assign: str = "all"
) -> list[TrainImage]:
    """Turn clean images into K simulated scanner domains (see the module docstring)."""
    if assign not in ("all", "split"):
        raise ValueError("assign must be 'all' or 'split'")
    if assign == "split" and len(paths) < len(profiles):
        raise ValueError(f"assign='split' needs >= {len(profiles)} images, got {len(paths)}")
    out = []
    for i, p in enumerate(paths):
        for k, prof in enumerate(profiles):
            if assign == "all" or i % len(profiles) == k:
                out.append(TrainImage(str(p), prof.name, prof))
    return out


@dataclass
class _Volume:
    data: np.ndarray  # float16; clean / robust max for simulated use, else raw normalized
    voxel_size: tuple[float, float, float]
    centres: np.ndarray  # (N, 3) head voxels to centre patches on
    lo: float = -1.0
    hi: float = 1.0
    sim_ranges: dict = field(default_factory=dict)


class VolumeStore:
    """Loads each image once, keeps it in memory as float16 (about 14 MB per 1 mm head)."""

    def __init__(self, clip_max: float = 1.0) -> None:
        self.clip_max = clip_max
        self._cache: dict[tuple[str, bool], _Volume] = {}
        self._lock = threading.Lock()

    def get(self, path: str, simulated: bool) -> _Volume:
        key = (path, simulated)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        img = nib.load(path)
        if len(img.shape) != 3:
            raise ValueError(f"{path}: training images must be 3D, got shape {img.shape}")
        raw = np.asarray(img.dataobj, dtype=np.float32)
        vs = tuple(float(v) for v in img.header.get_zooms()[:3])
        if simulated:
            data = raw / robust_max(raw)  # the simulator's working range
            fg = data > 0.1
        else:
            lo, hi = robust_range(raw)
            data = normalize(raw, lo, hi, self.clip_max)
            fg = data > -0.8
        idx = np.argwhere(fg[::4, ::4, ::4]) * 4
        if len(idx) == 0:
            idx = np.array([[s // 2 for s in data.shape]])
        vol = _Volume(data.astype(np.float16), vs, idx)
        with self._lock:
            self._cache[key] = vol
        return vol

    def sim_range(self, vol: _Volume, profile: ScannerProfile) -> tuple[float, float]:
        """Robust range of the whole simulated volume, estimated on a 1-in-3 subsample."""
        if profile.name not in vol.sim_ranges:
            sub = vol.data[::3, ::3, ::3].astype(np.float32)
            sim = apply_profile(sub, profile, voxel_size_mm=tuple(3 * v for v in vol.voxel_size))
            vol.sim_ranges[profile.name] = robust_range(sim)
        return vol.sim_ranges[profile.name]


def _seeded_elastic():
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


def _cut(data: np.ndarray, start, size) -> np.ndarray:
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


class PairSampler:
    """Draws (x_a, x_b, label_a, label_b): two different scanners, one random image each."""

    def __init__(
        self,
        images: list[TrainImage],
        scanners: list[str],
        *,
        patch_size: int | None = 64,
        elastic_p: float = 0.7,
        clip_max: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.scanners = list(scanners)
        self.by_scanner = {s: [im for im in images if im.scanner == s] for s in self.scanners}
        empty = [s for s, v in self.by_scanner.items() if not v]
        if empty:
            raise ValueError(f"no training images for scanner(s): {', '.join(empty)}")
        if len(self.scanners) < 2:
            raise ValueError("training needs images from at least two scanners")
        self.patch_size = patch_size
        self.elastic_p = elastic_p
        self.clip_max = clip_max
        self.store = VolumeStore(clip_max)
        self.rng = np.random.default_rng(seed)
        self._elastic = None

    def _elastic_tf(self):
        if self._elastic is None:
            self._elastic = _seeded_elastic()
        return self._elastic

    def load(self, im: TrainImage, rng: np.random.Generator, size=None) -> np.ndarray:
        """One normalized sample of ``im``: a patch (``size``) or the whole volume."""
        vol = self.store.get(im.path, im.profile is not None)
        shape = vol.data.shape
        deform = rng.random() < self.elastic_p
        margin_d = _ELASTIC_MARGIN if deform and size is not None else 0
        if size is None:
            start, box = (0, 0, 0), shape
        else:
            # a deformed patch is resampled from a box 2 x 9 voxels larger (8 mm displacement)
            box = (size + 2 * margin_d,) * 3
            centre = vol.centres[rng.integers(len(vol.centres))] + rng.integers(0, 4, 3)
            start = tuple(int(c) - b // 2 for c, b in zip(centre, box, strict=True))
        if im.profile is None:
            x = _cut(vol.data, start, box).astype(np.float32)
        else:
            prof = im.profile
            margin = int(math.ceil(prof.blur_fwhm_mm * 0.43 * 3 / min(vol.voxel_size))) + 1
            region = _cut(vol.data, [s - margin for s in start], [b + 2 * margin for b in box])
            sim = apply_profile(
                region.astype(np.float32),
                prof,
                voxel_size_mm=vol.voxel_size,
                seed=int(rng.integers(2**31)),
                origin_vox=tuple(s - margin for s in start),
                full_shape=shape,
            )
            sim = sim[margin:-margin, margin:-margin, margin:-margin]
            lo, hi = self.store.sim_range(vol, prof)
            x = normalize(sim, lo, hi, self.clip_max)
        t = torch.from_numpy(np.ascontiguousarray(x))[None]
        if deform and size is None:  # whole volumes: TorchIO itself
            tf = self._elastic_tf()
            tf.rng = rng
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = tf(t).float()
        elif deform:  # patches: the same deformation model, evaluated on the patch only
            t = elastic_patch(t, size, margin_d, vol.voxel_size, rng)
        return t.contiguous()

    def sample(self, rng: np.random.Generator | None = None):
        """-> (x_a (1, 1, ...), x_b, label index a, label index b)."""
        rng = rng or self.rng
        ka, kb = rng.choice(len(self.scanners), 2, replace=False)
        xs = []
        shape = None
        for k in (ka, kb):
            pool = self.by_scanner[self.scanners[k]]
            im = pool[rng.integers(len(pool))]
            x = self.load(im, rng, self.patch_size)
            if shape is not None and x.shape != shape:
                raise ValueError(
                    "whole-volume training needs all images on one grid; got "
                    f"{tuple(shape[1:])} and {tuple(x.shape[1:])} (use patches)"
                )
            shape = x.shape
            xs.append(x[None])
        return xs[0], xs[1], int(ka), int(kb)


class Prefetcher:
    """Prepares the next samples in a background thread while the networks compute."""

    def __init__(self, sampler: PairSampler, depth: int = 2) -> None:
        self.sampler = sampler
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.sampler.sample()
            except Exception as exc:  # handed to the consumer
                item = exc
            while not self._stop.is_set():
                try:
                    self.q.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return

    def next(self):
        item = self.q.get()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
