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
volumes (GPU). Elastic augmentation (probability ``elastic_p``, 0.7 as the reference) is
TorchIO's deformation model (:mod:`models.elastic`); the images are held in memory by
:class:`~models.volumes.VolumeStore`.
"""

from __future__ import annotations

import queue
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .elastic import ELASTIC_MARGIN, elastic_patch, seeded_elastic
from .intensity import HEAD_STRIDE, head_quantiles, normalize, robust_range
from .scanners import ScannerProfile, sample_profile
from .simulate import apply_profile, blur_margin
from .tissue import tissue_weights
from .volumes import Volume, VolumeStore, cut_box

__all__ = ["TrainImage", "VolumeStore", "PairSampler", "Prefetcher", "build_simulated"]

_SIM_MARGIN = 8  # voxels simulated around a patch: blur up to ~3.4 mm FWHM at 1 mm, smoothing


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
class Pair:
    """One training sample: images of scanners ``ka`` and ``kb`` ((1, 1, ...) tensors each);
    ``clean``: for a travelling head (both simulated from one head, same patch, same
    deformation), that head itself, normalized by its own robust range; else ``None``."""

    xa: torch.Tensor
    xb: torch.Tensor
    ka: int
    kb: int
    clean: torch.Tensor | None = None
    qa: torch.Tensor | None = None  #: (1, Q) quantiles of xa's whole head (head curves)
    qb: torch.Tensor | None = None
    q_clean: torch.Tensor | None = None  #: (1, Q) quantiles of the clean head


class PairSampler:
    """Draws :class:`Pair` samples: two different scanners, one random image each.

    ``randomize``: a simulated image whose profile names a family gets a fresh scanner of that
    family at every draw (domain randomisation; the label stays the family's).
    ``paired``: when both scanners simulate the same clean heads, a pair is one head on both
    scanners (a travelling head), voxel-aligned, with the clean head as ``Pair.clean``.
    ``age_window``: for real domains with ages (``TrainImage.age``), the second image is drawn
    among those within this many years of the first (when there are any), so that an age
    difference between sites is not learned as their scanner.
    ``head_quantiles``: with Q > 0, each image of a pair comes with Q quantiles of its whole
    head (of the head as this draw's scanner records it, on a 1-in-4 subsample), which a
    head-curves generator reads.
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
        head_quantiles: int = 0,
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
        self.n_quantiles = head_quantiles
        self._stored: dict[int, torch.Tensor] = {}
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
            self._elastic = seeded_elastic()
        return self._elastic

    def _profile(self, im: TrainImage, rng: np.random.Generator) -> ScannerProfile | None:
        prof = im.profile
        if prof is not None and self.randomize and prof.family:
            return sample_profile(prof.family, rng)
        return prof

    def _box(self, vol: Volume, rng: np.random.Generator, size: int | None, deform: bool):
        """(start, box): the whole volume, or a patch (2 x 9 voxels larger when deformed: it is
        resampled with displacements of up to 8 mm) centred near a random head voxel."""
        if size is None:
            return (0, 0, 0), vol.data.shape
        box = (size + 2 * (ELASTIC_MARGIN if deform else 0),) * 3
        centre = vol.centres[rng.integers(len(vol.centres))] + rng.integers(0, 4, 3)
        return tuple(int(c) - b // 2 for c, b in zip(centre, box, strict=True)), box

    def _render(
        self, vol: Volume, prof: ScannerProfile | None, start, box, seed: int, cache=None
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """The normalized box of ``vol``: as recorded by ``prof``, or clean (``None``), and
        the quantiles of that whole head (``None`` unless asked for, or for the clean head).

        ``cache``: a dict shared by the renders of one travelling head (same box), so the
        region and its tissue weights are cut and computed once.
        """
        if vol.tissue is None:  # a real domain: stored normalized
            return cut_box(vol.data, start, box).astype(np.float32), self._stored_q(vol)
        if prof is None:  # the clean head (travelling-head target)
            lo, hi = vol.clean_range
            x = normalize(cut_box(vol.data, start, box).astype(np.float32), lo, hi, self.clip_max)
            return x, self._stored_q(vol)
        m = max(blur_margin(prof, vol.voxel_size) + 2, _SIM_MARGIN)  # + the tissue smoothing
        cache = {} if cache is None else cache
        if cache.get("margin") != m:
            r_start = [s - m for s in start]
            region = cut_box(vol.data, r_start, [b + 2 * m for b in box]).astype(np.float32)
            brain = None if vol.brain is None else cut_box(vol.brain, r_start, region.shape)
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
        # the whole head as this scanner records it, on a subsample: its range normalizes the
        # patch as inference normalizes a whole image, its quantiles feed head curves
        sub = self.store.simulate_subsample(vol, prof)
        lo, hi = robust_range(sub)
        q = None
        if self.n_quantiles:
            sub_n = torch.from_numpy(normalize(sub, lo, hi, self.clip_max))[None, None]
            q = head_quantiles(sub_n, self.n_quantiles)
        return normalize(sim, lo, hi, self.clip_max), q

    def _stored_q(self, vol: Volume) -> torch.Tensor | None:
        """Head quantiles of a stored image, computed once: a real domain's (stored
        normalized) or a clean head's (normalized by its robust range)."""
        if not self.n_quantiles:
            return None
        key = id(vol)  # the store keeps every volume: ids are not reused
        if key not in self._stored:
            sub = vol.data[::HEAD_STRIDE, ::HEAD_STRIDE, ::HEAD_STRIDE].astype(np.float32)
            if vol.tissue is not None:
                sub = normalize(sub, *vol.clean_range, self.clip_max)
            self._stored[key] = head_quantiles(torch.from_numpy(sub)[None, None], self.n_quantiles)
        return self._stored[key]

    def _deform(self, x: np.ndarray, vol: Volume, size, deform_seed: int | None) -> torch.Tensor:
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
        return elastic_patch(t, size, ELASTIC_MARGIN, vol.voxel_size, rng).contiguous()

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
        return self._load(im, rng, size, deform, profile)[0]

    def _load(self, im, rng, size=None, deform=None, profile=None):
        """:meth:`load`, and the quantiles of the whole head (see :meth:`_render`)."""
        vol = self.store.get(im.path, im.profile is not None, im.brain_mask)
        if deform is None:
            deform = bool(rng.random() < self.elastic_p)
        start, box = self._box(vol, rng, size, deform)
        prof = profile or self._profile(im, rng)
        x, q = self._render(vol, prof, start, box, int(rng.integers(2**31)))
        return self._deform(x, vol, size, int(rng.integers(2**31)) if deform else None), q

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
        xa, qa = self._load(im_a, rng, self.patch_size)
        xb, qb = self._load(im_b, rng, self.patch_size)
        if xa.shape != xb.shape:
            raise ValueError(
                "whole-volume training needs all images on one grid; got "
                f"{tuple(xa.shape[1:])} and {tuple(xb.shape[1:])} (use patches)"
            )
        return Pair(xa[None], xb[None], ka, kb, None, qa, qb)

    def _travelling_pair(self, im_a, pool_b, ka, kb, rng) -> Pair:
        im_b = next(im for im in pool_b if im.path == im_a.path)
        vol = self.store.get(im_a.path, True, im_a.brain_mask)
        deform = bool(rng.random() < self.elastic_p)
        start, box = self._box(vol, rng, self.patch_size, deform)
        deform_seed = int(rng.integers(2**31)) if deform else None
        out, qs, cache = [], [], {}
        for prof in (self._profile(im_a, rng), self._profile(im_b, rng), None):
            x, q = self._render(vol, prof, start, box, int(rng.integers(2**31)), cache)
            out.append(self._deform(x, vol, self.patch_size, deform_seed)[None])
            qs.append(q)
        return Pair(out[0], out[1], ka, kb, out[2], qs[0], qs[1], qs[2])


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
