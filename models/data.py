"""Training data: images with scanner labels, scanner-pair sampling, simulation, patches.

Two kinds of scanner domain:

* **real**: the images of one acquired scanner (``TrainImage.profile is None``);
* **simulated**: a :class:`~models.simulate.ScannerProfile` applied on the fly to a clean
  image (``TrainImage.profile`` set). With ``assign="all"`` (the default model) every clean
  image belongs to every simulated domain, with a fresh simulation seed per draw, so the K
  domains differ only by their scanner effects; ``assign="split"`` gives image i to domain
  i mod K only (disjoint subjects per scanner, like real multi-site data).

Each sample draws two different scanners uniformly, then one random image of each (the
reference draws a random scanner, then a random image of it). Simulated domains can be
randomised (each draw a new scanner of the profile's family) and paired (one head on both
scanners, voxel-aligned, with the clean head as a target: a travelling head). Real domains
with ages can be paired by age. On CPU a random patch
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

import queue
import threading
import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch

from .intensity import normalize, robust_range
from .scanners import ScannerProfile, sample_profile
from .simulate import apply_profile, blur_margin, robust_max
from .tissue import TissueModel, fit_tissue_model, soft_brain, tissue_weights

__all__ = ["TrainImage", "VolumeStore", "PairSampler", "Prefetcher", "build_simulated"]

_ELASTIC_FIELD_MM = 128.0  # virtual field of a patch deformation: 16 mm grid > 2 x 8 mm
_ELASTIC_MARGIN = 9


@dataclass(frozen=True)
class TrainImage:
    """One training image: file and scanner label (and a profile for simulated domains).

    ``brain_mask``: a brain mask on the image's grid (the template's, for images in template
    space): the simulator changes CSF, GM and WM inside it and non-brain tissue outside.
    ``age``: the participant's age when known (age-matched pair sampling of real domains).
    """

    path: str
    scanner: str
    profile: ScannerProfile | None = None
    subject: str = ""
    brain_mask: str | None = None
    age: float | None = None


def build_simulated(
    paths: list[str],
    profiles: list[ScannerProfile],
    assign: str = "all",
    brain_mask: str | None = None,
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
                out.append(TrainImage(str(p), prof.name, prof, brain_mask=brain_mask))
    return out


@dataclass
class _Volume:
    data: np.ndarray  # float16; clean / robust max for simulated use, else raw normalized
    voxel_size: tuple[float, float, float]
    centres: np.ndarray  # (N, 3) head voxels to centre patches on
    clean_range: tuple[float, float] = (0.0, 1.0)  # robust range of ``data`` (clean target)
    tissue: TissueModel | None = None  # simulated use: CSF/GM/WM mixture of the clean head
    brain: np.ndarray | None = None  # soft brain weight on the grid (shared), or None
    sub_weights: np.ndarray | None = None  # tissue weights of the 1-in-4 subsample


_SIM_MARGIN = 8  # voxels simulated around a patch: blur up to ~3.4 mm FWHM at 1 mm, smoothing
_SUB = 4  # subsampling of the whole-volume intensity range estimate of a simulated draw


class VolumeStore:
    """Loads each image once, keeps it in memory as float16 (about 14 MB per 1 mm head)."""

    def __init__(self, clip_max: float = 1.0) -> None:
        self.clip_max = clip_max
        self._cache: dict[tuple[str, bool], _Volume] = {}
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

    def get(self, path: str, simulated: bool, brain_mask: str | None = None) -> _Volume:
        key = (path, simulated)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        img = nib.load(path)
        if len(img.shape) != 3:
            raise ValueError(f"{path}: training images must be 3D, got shape {img.shape}")
        raw = np.asarray(img.dataobj, dtype=np.float32)
        vs = tuple(float(v) for v in img.header.get_zooms()[:3])
        vol = _Volume(raw, vs, np.zeros((0, 3), int))
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

    def sim_range(self, vol: _Volume, profile: ScannerProfile) -> tuple[float, float]:
        """Robust range of the whole simulated volume, estimated on a 1-in-4 subsample (each
        randomised draw is a new scanner, so nothing is cached)."""
        sub = vol.data[::_SUB, ::_SUB, ::_SUB].astype(np.float32)
        tissue = None if vol.tissue is None else (vol.sub_weights.astype(np.float32), vol.tissue)
        vs = tuple(_SUB * v for v in vol.voxel_size)
        return robust_range(apply_profile(sub, profile, voxel_size_mm=vs, tissue=tissue))


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


@dataclass
class Pair:
    """One training sample: images of scanners ``ka`` and ``kb`` ((1, 1, ...) tensors each);
    ``clean``: for a travelling head (both simulated from one head, same patch, same
    deformation), that head itself, normalized by its own robust range; else ``None``."""

    xa: torch.Tensor
    xb: torch.Tensor
    ka: int
    kb: int
    clean: torch.Tensor | None = None


class PairSampler:
    """Draws :class:`Pair` samples: two different scanners, one random image each.

    ``randomize``: a simulated image whose profile names a family gets a fresh scanner of that
    family at every draw (domain randomisation; the label stays the family's).
    ``paired``: when both scanners simulate the same clean heads, a pair is one head on both
    scanners (a travelling head), voxel-aligned, with the clean head as ``Pair.clean``.
    ``age_window``: for real domains with ages (``TrainImage.age``), the second image is drawn
    among those within this many years of the first (when there are any), so that an age
    difference between sites is not learned as their scanner.
    """

    def __init__(
        self,
        images: list[TrainImage],
        scanners: list[str],
        *,
        patch_size: int | None = 64,
        elastic_p: float = 0.7,
        clip_max: float = 1.0,
        seed=0,
        randomize: bool = False,
        paired: bool = False,
        age_window: float | None = None,
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
        self.randomize = randomize
        self.age_window = age_window
        self.paired = paired and self._travelling()
        self._elastic = None

    def _travelling(self) -> bool:
        """True when every scanner simulates the same set of clean images."""
        paths = [
            {im.path for im in pool if im.profile is not None} for pool in self.by_scanner.values()
        ]
        sizes = [len(pool) for pool in self.by_scanner.values()]
        return all(p == paths[0] and len(p) == n for p, n in zip(paths, sizes, strict=True))

    def _elastic_tf(self):
        if self._elastic is None:
            self._elastic = _seeded_elastic()
        return self._elastic

    def _profile(self, im: TrainImage, rng: np.random.Generator) -> ScannerProfile | None:
        prof = im.profile
        if prof is not None and self.randomize and prof.family:
            return sample_profile(prof.family, rng)
        return prof

    def _box(self, vol: _Volume, rng: np.random.Generator, size: int | None, deform: bool):
        """(start, box): the whole volume, or a patch (2 x 9 voxels larger when deformed: it is
        resampled with displacements of up to 8 mm) centred near a random head voxel."""
        if size is None:
            return (0, 0, 0), vol.data.shape
        box = (size + 2 * (_ELASTIC_MARGIN if deform else 0),) * 3
        centre = vol.centres[rng.integers(len(vol.centres))] + rng.integers(0, 4, 3)
        return tuple(int(c) - b // 2 for c, b in zip(centre, box, strict=True)), box

    def _render(
        self, vol: _Volume, prof: ScannerProfile | None, start, box, seed: int, cache=None
    ) -> np.ndarray:
        """The normalized box of ``vol``: as recorded by ``prof``, or clean (``None``).

        ``cache``: a dict shared by the renders of one travelling head (same box), so the
        region and its tissue weights are cut and computed once.
        """
        if vol.tissue is None:  # a real domain: stored normalized
            return _cut(vol.data, start, box).astype(np.float32)
        if prof is None:  # the clean head (travelling-head target)
            lo, hi = vol.clean_range
            return normalize(_cut(vol.data, start, box).astype(np.float32), lo, hi, self.clip_max)
        m = max(blur_margin(prof, vol.voxel_size) + 2, _SIM_MARGIN)  # + the tissue smoothing
        cache = {} if cache is None else cache
        if cache.get("margin") != m:
            r_start = [s - m for s in start]
            region = _cut(vol.data, r_start, [b + 2 * m for b in box]).astype(np.float32)
            brain = None if vol.brain is None else _cut(vol.brain, r_start, region.shape)
            brain = None if brain is None else brain.astype(np.float32)
            weights = tissue_weights(region, vol.tissue, brain)
            cache.update(margin=m, r_start=tuple(r_start), region=region, weights=weights)
        sim = apply_profile(
            cache["region"],
            prof,
            voxel_size_mm=vol.voxel_size,
            seed=seed,
            origin_vox=cache["r_start"],
            full_shape=vol.data.shape,
            tissue=(cache["weights"], vol.tissue),
        )[m:-m, m:-m, m:-m]
        lo, hi = self.store.sim_range(vol, prof)
        return normalize(sim, lo, hi, self.clip_max)

    def _deform(self, x: np.ndarray, vol: _Volume, size, deform_seed: int | None) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))[None]
        if deform_seed is None:
            return t.contiguous()
        rng = np.random.default_rng(deform_seed)
        if size is None:  # whole volumes: TorchIO itself
            tf = self._elastic_tf()
            tf.rng = rng
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return tf(t).float().contiguous()
        # patches: the same deformation model, evaluated on the patch only
        return elastic_patch(t, size, _ELASTIC_MARGIN, vol.voxel_size, rng).contiguous()

    def load(
        self,
        im: TrainImage,
        rng: np.random.Generator,
        size=None,
        deform: bool | None = None,
        profile: ScannerProfile | None = None,
    ) -> torch.Tensor:
        """One normalized sample of ``im``: a patch (``size``) or the whole volume.

        ``deform``: elastic augmentation (default: with probability ``elastic_p``);
        ``profile``: the scanner to simulate (default: ``im``'s, randomised if asked).
        """
        vol = self.store.get(im.path, im.profile is not None, im.brain_mask)
        if deform is None:
            deform = bool(rng.random() < self.elastic_p)
        start, box = self._box(vol, rng, size, deform)
        prof = profile or self._profile(im, rng)
        x = self._render(vol, prof, start, box, int(rng.integers(2**31)))
        return self._deform(x, vol, size, int(rng.integers(2**31)) if deform else None)

    def _partner(self, pool: list[TrainImage], first: TrainImage, rng) -> TrainImage:
        if self.age_window is not None and first.age is not None:
            near = [
                im
                for im in pool
                if im.age is not None and abs(im.age - first.age) <= self.age_window
            ]
            if near:
                return near[rng.integers(len(near))]
        return pool[rng.integers(len(pool))]

    def sample(self, rng: np.random.Generator | None = None) -> Pair:
        rng = rng or self.rng
        ka, kb = (int(k) for k in rng.choice(len(self.scanners), 2, replace=False))
        pool_a = self.by_scanner[self.scanners[ka]]
        pool_b = self.by_scanner[self.scanners[kb]]
        im_a = pool_a[rng.integers(len(pool_a))]
        if self.paired:
            return self._travelling_pair(im_a, pool_b, ka, kb, rng)
        im_b = self._partner(pool_b, im_a, rng)
        xa = self.load(im_a, rng, self.patch_size)
        xb = self.load(im_b, rng, self.patch_size)
        if xa.shape != xb.shape:
            raise ValueError(
                "whole-volume training needs all images on one grid; got "
                f"{tuple(xa.shape[1:])} and {tuple(xb.shape[1:])} (use patches)"
            )
        return Pair(xa[None], xb[None], ka, kb)

    def _travelling_pair(self, im_a, pool_b, ka, kb, rng) -> Pair:
        im_b = next(im for im in pool_b if im.path == im_a.path)
        vol = self.store.get(im_a.path, True, im_a.brain_mask)
        deform = bool(rng.random() < self.elastic_p)
        start, box = self._box(vol, rng, self.patch_size, deform)
        deform_seed = int(rng.integers(2**31)) if deform else None
        out, cache = [], {}
        for prof in (self._profile(im_a, rng), self._profile(im_b, rng), None):
            x = self._render(vol, prof, start, box, int(rng.integers(2**31)), cache)
            out.append(self._deform(x, vol, self.patch_size, deform_seed)[None])
        return Pair(out[0], out[1], ka, kb, out[2])


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
