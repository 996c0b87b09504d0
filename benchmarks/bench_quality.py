"""Harmonization quality of DISARM against simple baselines, on simulated travelling heads.

Real heads, preprocessed by this pipeline (``--deriv``: an existing derivatives folder; else
the pipeline is run with ``--harmonize none`` into ``--work``), are "acquired" on K simulated
scanners (:mod:`models.simulate`; default: the held-out profiles, never seen in training).
Every simulated image is then harmonized by each method:

* ``none``: the simulated image as it is;
* ``zscore``: (x - mean) / sd inside the brain mask (intensity-normalization);
* ``histmatch``: ``skimage.exposure.match_histograms`` of the whole volume to one reference
  image: the reference head simulated on the target scanner (below);
* ``nyul``: Nyul & Udupa piecewise-linear landmark standardization (intensity-normalization),
  standard scale learned from the reference head simulated on every training scanner;
* ``whitestripe``: WhiteStripe (Shinohara et al. 2014; intensity-normalization, T1 mode):
  z-score by the normal-appearing white-matter stripe, inside the brain mask;
* ``disarm-free`` / ``disarm-target``: :class:`models.harmonize.Harmonizer`, scanner-free
  mode and target mode (target = the first training scanner of the model card).

Metrics, all inside the template brain mask (``pipeline.reports.template_mask``: the brain
mask of the derivatives' template space, resampled to their grid if needed):

* travelling-head consistency: mean SSIM and mean absolute difference (MAD) over all pairs of
  the K harmonized versions of one head. Common scale: per method and head, the 1st and 99th
  percentiles of the K outputs pooled inside the mask go to 0 and 1 (one map for all K, so
  gain/offset differences between scanners still count, while methods' units do not);
* anatomy kept: SSIM between the clean head and each harmonized version, each mapped by its own
  1st/99th mask percentiles to 0/1 (a pure rescaling costs nothing);
* scanner signal left, on a per-method scale (1st/99th percentiles of all that method's outputs
  pooled, heads never used): the k-sample Anderson-Darling test across the K scanners
  (``scipy.stats.anderson_ksamp``, permutation p) on two per-image summaries, the median and
  the interquartile range of the brain intensities (level and spread/contrast); and the
  accuracy of a logistic regression predicting the scanner from the 32-bin brain histogram,
  cross-validated with ``GroupKFold`` by head (a head is never in train and test; chance 1/K);
* downstream consistency (``GM CoV``, ``WM CoV``): per head, the coefficient of variation
  (sample sd / mean) of its grey- and white-matter fractions of the brain mask across its K
  harmonized versions, averaged over heads (row ``none``: before harmonization);
* biology kept: ``GM r clean``, the Pearson r across heads between the GM fraction of the
  harmonized versions and that of the clean head, per scanner, averaged over scanners; and
  ``GM~age r``, the Pearson r of GM fraction with age (``participants.tsv``) pooled over every
  version of every head with a known age. Row ``clean``: the clean heads, the reference r;
* ``target hit`` (``disarm-target`` only): the fraction of versions whose brain-intensity
  distribution is nearest to that of the same head simulated on the target scanner, among all
  the model's training scanners (:func:`nearest_distribution`: 1-D Wasserstein distance of the
  brain quantiles, each image mapped by its own 1st/99th percentiles to 0/1, since DISARM
  writes its output on a fixed scale that says nothing of the target's gain; chance about 1/S);
* ``checkerboard``: :func:`models.evaluate.checkerboard_ratio` of each output to its input,
  inside the mask (energy of the period-2 pattern a stride-2 up-sampling leaves; about 1 for a
  clean output, above 1.05 is an artefact).

Tissue fractions come from one segmentation, the same for every method and the clean head
(:func:`tissue_fractions`): 3-class k-means (``sklearn.cluster.KMeans``; centres started at
the intensity tercile means, one deterministic run; CSF < GM < WM by centre) of the brain
intensities, each image first mapped by its 1st/99th brain percentiles to 0/1 (so an affine
method, z-score or WhiteStripe, gets exactly its input's segmentation), fitted to 1000 evenly
spaced brain quantiles (a stratified sample of the intensities) and labelling every brain
voxel. Measured on the 2-core development machine while busy (load 2-6), on the 1 mm template
brain simulated on one scanner (1.9 M brain voxels, 151x187x158 box):

* Atropos (``ants.atropos``, ``kmeans[3]`` start, MRF 0.1, 3 iterations), the first choice:
  42 s at 1 mm and 3.3 s on a 2 mm copy (``ants.kmeans_segmentation``: 3.5 s at 2 mm); with
  24 heads x 4 scanners x 7 methods (672 images, plus the clean heads) that is 40 min or more;
* a 3-class Gaussian mixture (``sklearn``, tercile start), the planned fallback: 7.5 s at 1 mm,
  1.4 s at 2 mm with sklearn's default tolerance, where it stops after 6-10 EM iterations far
  from convergence (GM 0.35-0.49 depending on the voxel sample); run to convergence (300-1800
  iterations; 0.8 s on 1000 quantiles) it is still unstable on these images, whose simulated
  GM/WM contrast often leaves one broad peak: over 8 scanners x 2 noise seeds GM ranged
  0.41-0.93 with per-class variances (a broad component swallowing the others) and 0.00-0.93
  with one shared variance, and moved by up to 0.45 with the noise seed alone: segmentation
  noise that the CoV would count as scanner effect;
* k-means (the start Atropos itself uses): GM 0.38-0.56, WM 0.25-0.49 over the same 16
  images, within 0.04 between noise seeds, 0.2 s per image.

    python benchmarks/bench_quality.py --deriv /work/scratch/ixi-deriv \
        --model /work/scratch/train-default/model --out bench-out

Default heads: with a model card that lists its training subjects, the first ``--n-heads``
participants (sorted) that are not among them; ``--participant-label`` picks them explicitly.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BIDS = REPO.parent / "shared" / "data" / "ixi-hh"
METHODS = ("none", "zscore", "histmatch", "nyul", "whitestripe", "disarm-free", "disarm-target")
DISARM_METHODS = ("disarm-free", "disarm-target")
#: Percentiles of the brain voxels kept per image (every 0.1%): enough for the summaries,
#: the histograms and the pooled per-method scale, without keeping the images.
QUANTILES = np.linspace(0.0, 100.0, 1001)
HIST_BINS, HIST_RANGE = 32, (-0.25, 1.25)
N_PERMUTATIONS = 2000
#: Brain quantiles the tissue k-means is fitted to (a stratified sample of the intensities).
N_SEGMENTATION_POINTS = 1000
NAN = float("nan")

Volume = np.ndarray
MethodFn = Callable[[Volume, np.ndarray], Volume]  # (image, brain mask) -> harmonized image


class BenchError(Exception):
    """A user mistake: printed as one line, exit code 1."""


@dataclass
class Head:
    label: str  #: participant label, no ``sub-``
    item: object  #: pipeline.reports.ImageOutputs of its preprocessed image


@dataclass
class Plan:
    """What to evaluate, settled from the command line and the model card."""

    args: argparse.Namespace
    profiles: list  #: simulated evaluation scanners (ScannerProfile)
    methods: list[str]
    harmonizer: object | None
    target: str | None  #: DISARM target scanner (first of the card)
    train_profiles: list  #: the model's training scanners (Nyul population, reference)
    heads: list[str]
    reference: str  #: participant whose head makes the histmatch reference and Nyul population


# --------------------------------------------------------------------------- inputs


def _label(text: str) -> str:
    return text[4:] if text.startswith("sub-") else text


def bids_participants(bids_dir: Path) -> list[str]:
    """Sorted participant labels (folders ``sub-*``) of a BIDS dataset."""
    if not bids_dir.is_dir():
        raise BenchError(f"BIDS folder not found: {bids_dir}")
    labels = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if not labels:
        raise BenchError(f"no sub-* folder in {bids_dir}")
    return labels


def participant_ages(bids_dir: Path) -> dict[str, float]:
    """``{label: age}`` from ``participants.tsv``; participants without a numeric age are left
    out (and so is everything when the file or its ``age`` column is missing)."""
    import pandas as pd

    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
    if not {"participant_id", "age"} <= set(table.columns):
        return {}
    ages = pd.to_numeric(table["age"], errors="coerce")  # "n/a" and the like -> NaN
    return {
        _label(pid): float(age)
        for pid, age in zip(table["participant_id"], ages, strict=True)
        if np.isfinite(age)
    }


def preprocessed(deriv: Path) -> dict[str, object]:
    """``{label: ImageOutputs}``: the first preprocessed T1w of each participant in ``deriv``."""
    from pipeline.reports import collect_outputs

    found: dict[str, object] = {}
    for item in collect_outputs(deriv):
        found.setdefault(item.subject, item)
    return found


def choose_heads(
    labels: list[str],
    n_heads: int,
    explicit: list[str] | None,
    exclude: list[str],
) -> list[str]:
    """Explicit labels, else the first ``n_heads`` of ``labels`` not in ``exclude``."""
    if explicit:
        missing = [x for x in explicit if x not in labels]
        if missing:
            raise BenchError(f"participant(s) not found: {', '.join(missing)}")
        return list(explicit)
    chosen = [x for x in labels if x not in set(exclude)][:n_heads]
    if len(chosen) < 2:
        raise BenchError(
            f"need at least 2 heads, found {len(chosen)} (after excluding {len(exclude)} "
            "training participant(s))"
        )
    return chosen


def run_preprocessing(bids: Path, labels: list[str], work: Path, resolution: int) -> Path:
    """Run ``disarm-pipeline ... --harmonize none`` on ``labels``; return the derivatives."""
    out = work / "deriv"
    cmd = [
        sys.executable, "-m", "pipeline.cli.run", str(bids), str(out), "participant",
        "-w", str(work / "nipype"), "--harmonize", "none", "--no-reports",
        "--backend", "ants", "--output-resolution", str(resolution),
        "--nprocs", "2", "--omp-nthreads", "1", "--participant-label", *labels,
    ]  # fmt: skip
    print(f"# preprocessing {len(labels)} head(s) with disarm-pipeline", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BenchError(f"preprocessing failed (exit {proc.returncode}): {tail}")
    return out


def load_head(head: Head):
    """(nibabel image, float32 data, boolean brain mask on its grid)."""
    import nibabel as nib

    from pipeline.reports import template_mask

    img = nib.load(str(head.item.preproc))
    data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32)).reshape(img.shape[:3])
    mask_img, _ = template_mask(head.item, img)
    mask = np.asarray(mask_img.dataobj) > 0
    if mask.sum() < 100:
        raise BenchError(f"the template brain mask is (almost) empty on {head.item.preproc}")
    return img, data, mask


def brain_box(mask: np.ndarray, margin: int = 3) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (half the SSIM window)."""
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
        for i, n in zip(idx, mask.shape, strict=True)
    )


# --------------------------------------------------------------------------- profiles, model


def eval_profiles(spec: str, n_scanners: int | None):
    from models.simulate import load_profiles, training_profiles, unseen_profiles

    if spec == "unseen":
        profiles = unseen_profiles()
    elif spec == "training":
        profiles = training_profiles()
    else:
        try:
            profiles = load_profiles(spec)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
    if n_scanners:
        profiles = profiles[:n_scanners]
    if len(profiles) < 2:
        raise BenchError("need at least 2 scanner profiles")
    return profiles


def card_training_profiles(card: dict | None):
    """Training scanner profiles of the model (card's simulated profiles, else the defaults)."""
    from models.simulate import ScannerProfile, training_profiles

    if card:
        info = card.get("scanner_info") or {}
        profs = [info.get(s, {}).get("profile") for s in card.get("scanners", [])]
        if profs and all(profs):
            return [ScannerProfile.from_dict(p) for p in profs]
    return training_profiles()


def card_subjects(card: dict | None) -> list[str]:
    subjects = ((card or {}).get("training") or {}).get("data", {}).get("subjects") or []
    return [_label(s) for s in subjects]


# --------------------------------------------------------------------------- methods


def build_methods(
    names: list[str],
    reference: Volume,
    population: list[Volume],
    ref_mask: np.ndarray,
    harmonizer,
    target: str | None,
    affine: np.ndarray,
) -> dict[str, MethodFn]:
    """One callable per method; the population methods are fitted here, once."""
    import nibabel as nib
    from intensity_normalization import NyulNormalizer, WhiteStripeNormalizer, ZScoreNormalizer
    from intensity_normalization.adapters.images import NumpyImageAdapter as Adapter
    from skimage.exposure import match_histograms

    def mask_image(mask: np.ndarray) -> Adapter:
        return Adapter(mask.astype(np.float32))

    def zscore(x: Volume, mask: np.ndarray) -> Volume:
        norm, m = ZScoreNormalizer(), mask_image(mask)
        return norm.fit_transform(Adapter(x), m).get_data()

    def whitestripe(x: Volume, mask: np.ndarray) -> Volume:
        norm, m = WhiteStripeNormalizer(), mask_image(mask)
        return norm.fit_transform(Adapter(x), m).get_data()

    nyul_norm = None
    if "nyul" in names:
        nyul_norm = NyulNormalizer()
        nyul_norm.fit_population(
            [Adapter(v) for v in population], [mask_image(ref_mask)] * len(population)
        )

    def nyul(x: Volume, mask: np.ndarray) -> Volume:
        return nyul_norm.transform(Adapter(x), mask_image(mask)).get_data()

    def histmatch(x: Volume, mask: np.ndarray) -> Volume:
        return match_histograms(x, reference)

    def disarm(mode: str) -> MethodFn:
        def run(x: Volume, mask: np.ndarray) -> Volume:
            out, _ = harmonizer.harmonize(
                nib.Nifti1Image(x, affine), mode=mode, target=target if mode == "target" else None
            )
            return np.asarray(out.dataobj, dtype=np.float32)

        return run

    table: dict[str, MethodFn] = {
        "none": lambda x, mask: x,
        "zscore": zscore,
        "histmatch": histmatch,
        "nyul": nyul,
        "whitestripe": whitestripe,
        "disarm-free": disarm("scanner-free"),
        "disarm-target": disarm("target"),
    }
    return {n: table[n] for n in names}


# --------------------------------------------------------------------------- metrics


def to_unit(x: Volume, lo: float, hi: float) -> Volume:
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


SSIM_WINDOW = 7  #: skimage's default: a 7-voxel uniform window, sample covariances


class SSIMStats:
    """One volume's local means and variances for SSIM, computed once and reused for every
    pair it is in (skimage's ``structural_similarity`` recomputes them on each call: five
    uniform filters per pair where one, of the product, is new). Same formula as skimage
    (uniform 7-voxel window, ``data_range`` 1, K1 0.01, K2 0.03, sample covariances,
    reflected borders), in float32.
    """

    def __init__(self, x: Volume) -> None:
        from scipy.ndimage import uniform_filter

        self.x = np.asarray(x, dtype=np.float32)
        self.mean = uniform_filter(self.x, SSIM_WINDOW)
        n = SSIM_WINDOW**3
        self.var = (uniform_filter(self.x * self.x, SSIM_WINDOW) - self.mean**2) * (n / (n - 1))

    def ssim(self, other: SSIMStats, mask: np.ndarray) -> float:
        """SSIM map of the two volumes (unit scale), averaged inside ``mask``."""
        from scipy.ndimage import uniform_filter

        n = SSIM_WINDOW**3
        cov = uniform_filter(self.x * other.x, SSIM_WINDOW) - self.mean * other.mean
        cov *= n / (n - 1)
        c1, c2 = 0.01**2, 0.03**2
        num = (2 * self.mean * other.mean + c1) * (2 * cov + c2)
        den = (self.mean**2 + other.mean**2 + c1) * (self.var + other.var + c2)
        return float((num[mask] / den[mask]).mean(dtype=np.float64))


def masked_ssim(a: Volume, b: Volume, mask: np.ndarray) -> float:
    """SSIM map of two volumes on the unit scale (data_range 1), averaged inside ``mask``."""
    return SSIMStats(a).ssim(SSIMStats(b), mask)


def head_metrics(clean: Volume, outputs: dict[str, list[Volume]], mask: np.ndarray) -> dict:
    """Travelling-head consistency and anatomy kept of every method for one (cropped) head."""
    lo, hi = np.percentile(clean[mask], [1, 99])
    clean_u = SSIMStats(to_unit(clean, lo, hi))
    result = {}
    for method, vols in outputs.items():
        pooled = np.concatenate([v[mask] for v in vols])
        plo, phi = np.percentile(pooled, [1, 99])
        common = [SSIMStats(to_unit(v, plo, phi)) for v in vols]
        pairs = list(combinations(range(len(vols)), 2))
        own = []
        for v in vols:
            vlo, vhi = np.percentile(v[mask], [1, 99])
            own.append(clean_u.ssim(SSIMStats(to_unit(v, vlo, vhi)), mask))
        ssims = [common[a].ssim(common[b], mask) for a, b in pairs]
        mads = [np.abs(common[a].x - common[b].x)[mask].mean() for a, b in pairs]
        result[method] = {
            "pair_ssim": float(np.mean(ssims)),
            "pair_mad": float(np.mean(mads)),
            "clean_ssim": float(np.mean(own)),
        }
    return result


def anderson_p(groups: list[np.ndarray], seed: int = 0) -> float:
    """Permutation p of the k-sample Anderson-Darling test (1.0 when all values are equal)."""
    from scipy import stats

    if np.unique(np.concatenate(groups)).size < 2:
        return 1.0
    method = stats.PermutationMethod(n_resamples=N_PERMUTATIONS, rng=np.random.default_rng(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.anderson_ksamp(groups, method=method).pvalue)


def scanner_signal(records: list[dict], n_scanners: int, seed: int = 0) -> dict:
    """AD p (median, IQR) and grouped-CV scanner accuracy from per-image brain quantiles."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    q = np.stack([r["quantiles"] for r in records])
    lo, hi = np.percentile(q, [1, 99])
    u = (q - lo) / (hi - lo if hi > lo else 1.0)
    scanners = np.array([r["scanner"] for r in records])
    heads = np.array([r["head"] for r in records])
    median = u[:, 500]
    iqr = u[:, 750] - u[:, 250]
    groups = lambda v: [v[scanners == s] for s in range(n_scanners)]  # noqa: E731
    feats = np.stack([np.histogram(row, HIST_BINS, HIST_RANGE)[0] / row.size for row in u])
    n_heads = len(set(heads.tolist()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant features, small folds
        acc = cross_val_score(
            clf, feats, scanners, groups=heads, cv=GroupKFold(n_splits=min(5, n_heads))
        )
    return {
        "ad_p_median": anderson_p(groups(median), seed),
        "ad_p_iqr": anderson_p(groups(iqr), seed),
        "scanner_acc": float(acc.mean()),
    }


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


def coefficient_of_variation(values) -> float:
    """Sample sd / mean (``scipy.stats.variation``, ddof 1); NaN if any value is NaN."""
    from scipy.stats import variation

    return float(variation(np.asarray(values, dtype=np.float64), ddof=1))


def pearson(a, b) -> float:
    """Pearson r over the pairs where both are finite; NaN with fewer than 3 or a constant side."""
    from scipy.stats import pearsonr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return NAN
    return float(pearsonr(a[ok], b[ok]).statistic)


def unit_quantiles(quantiles: np.ndarray, levels: np.ndarray = QUANTILES) -> np.ndarray:
    """Quantiles (at percentile ``levels``) mapped so the 1st/99th percentiles go to 0/1."""
    lo, hi = np.interp([1.0, 99.0], levels, quantiles)
    return (np.asarray(quantiles, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)


def nearest_distribution(
    quantiles: np.ndarray, references: dict[str, np.ndarray], levels: np.ndarray = QUANTILES
) -> str:
    """Name of the reference distribution nearest to ``quantiles``.

    All are given as quantiles at the same percentile ``levels`` and compared on their own
    unit scale (:func:`unit_quantiles`: gain and offset do not count, shape and contrast do)
    by the 1-D Wasserstein distance (``scipy.stats.wasserstein_distance`` of the quantile
    vectors, which are equal-weight samples of each distribution).
    """
    from scipy.stats import wasserstein_distance

    mine = unit_quantiles(quantiles, levels)
    distance = {
        name: wasserstein_distance(mine, unit_quantiles(q, levels))
        for name, q in references.items()
    }
    return min(distance, key=distance.get)


def scanner_quantiles(
    clean: Volume, mask: np.ndarray, box: tuple[slice, ...], profiles, vox, seed: int
) -> dict[str, np.ndarray]:
    """``{profile name: brain quantiles}`` of ``clean`` simulated on each profile."""
    from models.simulate import simulate_scanner

    found = {}
    for j, prof in enumerate(profiles):
        sim = simulate_scanner(clean, prof, voxel_size_mm=vox, seed=seed + j, brain_mask=mask)
        found[prof.name] = np.percentile(sim[box][mask[box]], QUANTILES)
    return found


def head_tissue(records: list[dict]) -> dict:
    """One head's tissue numbers for one method from its per-version records."""
    gm = [r["gm"] for r in records]
    wm = [r["wm"] for r in records]
    hits = [r["target_hit"] for r in records if "target_hit" in r]
    return {
        "gm_frac": float(np.mean(gm)),
        "wm_frac": float(np.mean(wm)),
        "gm_cov": coefficient_of_variation(gm),
        "wm_cov": coefficient_of_variation(wm),
        "checkerboard": float(np.mean([r["checkerboard"] for r in records])),
        "target_hit": float(np.mean(hits)) if hits else NAN,
    }


def biology(records: list[dict], clean_gm: np.ndarray, ages: np.ndarray) -> dict:
    """GM r to the clean head (per scanner across heads, averaged) and GM~age r (pooled).

    ``clean_gm`` and ``ages`` are indexed by head (age NaN when unknown).
    """
    head = np.array([r["head"] for r in records])
    scanner = np.array([r["scanner"] for r in records])
    gm = np.array([r["gm"] for r in records])
    per_scanner = [
        pearson(gm[scanner == k], clean_gm[head[scanner == k]]) for k in np.unique(scanner)
    ]
    finite = [r for r in per_scanner if np.isfinite(r)]
    return {
        "gm_r_clean": float(np.mean(finite)) if finite else NAN,
        "gm_age_r": pearson(gm, ages[head]),
    }


# --------------------------------------------------------------------------- main loop


def evaluate(
    heads: list[Head],
    profiles,
    methods: dict[str, MethodFn],
    seed: int,
    target_profiles: list | None = None,
) -> tuple[list[dict], dict[str, list[dict]], dict[str, float]]:
    """-> (per-head rows, per-method per-image records, seconds per image per method).

    ``target_profiles``: the model's training scanners, target first; with ``disarm-target``
    among ``methods``, each head is also simulated on each of them for the target hit.
    Per-head rows include one ``clean`` row per head (its tissue fractions).
    """
    from models.evaluate import nyquist_energy
    from models.simulate import simulate_scanner

    rows: list[dict] = []
    records: dict[str, list[dict]] = {m: [] for m in methods}
    seconds: dict[str, float] = dict.fromkeys(methods, 0.0)
    check_target = bool(target_profiles) and "disarm-target" in methods
    for i, head in enumerate(heads):
        t0 = time.perf_counter()
        img, clean, mask = load_head(head)
        vox = tuple(float(v) for v in img.header.get_zooms()[:3])
        box = brain_box(mask)
        inside = mask[box]
        gm, wm = tissue_fractions(clean[box], inside)
        rows.append({"method": "clean", "head": head.label, "gm_frac": gm, "wm_frac": wm})
        references = (
            scanner_quantiles(clean, mask, box, target_profiles, vox, seed + 1000 * i + 500)
            if check_target
            else {}
        )
        outputs: dict[str, list[Volume]] = {m: [] for m in methods}
        for k, prof in enumerate(profiles):
            sim = simulate_scanner(
                clean, prof, voxel_size_mm=vox, seed=seed + 1000 * i + k, brain_mask=mask
            )
            sim_energy = nyquist_energy(sim[box], inside)
            for name, fn in methods.items():
                t = time.perf_counter()
                out = np.asarray(fn(sim, mask), dtype=np.float32)
                seconds[name] += time.perf_counter() - t
                out = np.ascontiguousarray(out[box])
                outputs[name].append(out)
                gm, wm = tissue_fractions(out, inside)
                record = {
                    "head": i,
                    "scanner": k,
                    "quantiles": np.percentile(out[inside], QUANTILES),
                    "gm": gm,
                    "wm": wm,
                    "checkerboard": nyquist_energy(out, inside) / sim_energy
                    if sim_energy > 0
                    else NAN,
                }
                if name == "disarm-target" and references:
                    nearest = nearest_distribution(record["quantiles"], references)
                    record["target_hit"] = float(nearest == target_profiles[0].name)
                records[name].append(record)
            del sim
        metrics = head_metrics(clean[box], outputs, inside)
        for name, values in metrics.items():
            mine = [r for r in records[name] if r["head"] == i]
            rows.append({"method": name, "head": head.label, **values, **head_tissue(mine)})
        del outputs
        print(
            f"# head {i + 1}/{len(heads)} sub-{head.label}: {time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    n_images = len(heads) * len(profiles)
    return rows, records, {m: s / n_images for m, s in seconds.items()}


COLUMNS = (
    ("pair_ssim", "pair SSIM ↑"),
    ("pair_mad", "pair MAD ↓"),
    ("clean_ssim", "SSIM to clean ↑"),
    ("ad_p_median", "AD p median ↑"),
    ("ad_p_iqr", "AD p IQR ↑"),
    ("scanner_acc", "scanner acc. ↓"),
    ("gm_cov", "GM CoV ↓"),
    ("wm_cov", "WM CoV ↓"),
    ("gm_r_clean", "GM r clean ↑"),
    ("gm_age_r", "GM~age r"),
    ("target_hit", "target hit ↑"),
    ("checkerboard", "checkerboard ↓"),
    ("sec_per_image", "s/image"),
)
#: Per-head values summarized as mean and sd over heads.
PER_HEAD_KEYS = ("pair_ssim", "pair_mad", "clean_ssim", "gm_cov", "wm_cov", "checkerboard")


def summarize(
    rows: list[dict],
    signal: dict[str, dict],
    seconds: dict[str, float],
    bio: dict[str, dict],
) -> list[dict]:
    """One row per method (means, ``*_sd`` over heads), after a ``clean`` reference row."""
    keys = [k for k, _ in COLUMNS]
    clean = dict.fromkeys(keys, NAN) | {f"{k}_sd": NAN for k in PER_HEAD_KEYS}
    table = [{"method": "clean", **clean, **bio["clean"]}]
    for method in signal:
        mine = [r for r in rows if r["method"] == method]
        row: dict = {"method": method}
        for key in PER_HEAD_KEYS:
            v = np.array([r[key] for r in mine])
            row[key], row[f"{key}_sd"] = float(v.mean()), float(v.std())
        hits = [r["target_hit"] for r in mine if np.isfinite(r["target_hit"])]
        row["target_hit"] = float(np.mean(hits)) if hits else NAN
        row.update(signal[method])
        row.update(bio[method])
        row["sec_per_image"] = seconds[method]
        table.append(row)
    return table


def _fmt(row: dict, key: str) -> str:
    v = row[key]
    if math.isnan(v):
        return "n/a"
    if key == "sec_per_image":
        return f"{v:.2f}"
    if f"{key}_sd" in row:
        return f"{v:.4f} ± {row[f'{key}_sd']:.4f}"
    return f"{v:.3f}"


def markdown(table: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| method | " + " | ".join(t for _, t in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for row in table:
        lines.append(f"| {row['method']} | " + " | ".join(_fmt(row, k) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, table: list[dict], rows: list[dict], text: str, info: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(text)
    for name, found in (("quality.csv", table), ("quality_per_head.csv", rows)):
        fields = list(dict.fromkeys(k for r in found for k in r))  # clean rows have fewer
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="nan")
            writer.writeheader()
            writer.writerows(found)
    (out / "quality_settings.json").write_text(json.dumps(info, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("bids_dir", nargs="?", type=Path, default=DEFAULT_BIDS, help="BIDS dataset")
    p.add_argument("--deriv", type=Path, help="existing disarm-pipeline derivatives to reuse")
    p.add_argument("--model", type=Path, help="DISARM model folder (default: the shipped one)")
    p.add_argument(
        "--profiles",
        default="unseen",
        help="simulated scanners: 'unseen' (held-out defaults), 'training', or a JSON file",
    )
    p.add_argument("--n-scanners", type=int, default=None, help="use the first K profiles only")
    p.add_argument("--n-heads", type=int, default=6, help="heads to evaluate (default 6)")
    p.add_argument("--participant-label", nargs="+", type=_label, help="heads to evaluate")
    p.add_argument(
        "--exclude-participant-label",
        nargs="+",
        type=_label,
        default=None,
        help="never evaluate these (default: the training subjects in the model card)",
    )
    p.add_argument("--reference-participant", type=_label, help="head for histmatch and Nyul")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--resolution", type=int, choices=(1, 2), default=1, help="when preprocessing")
    p.add_argument("--work", type=Path, help="work folder when preprocessing (default: temp)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write quality.md/.csv here")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.n_heads < 2:
        raise BenchError("--n-heads must be at least 2")
    profiles = eval_profiles(args.profiles, args.n_scanners)
    labels = bids_participants(args.bids_dir)
    if args.deriv is not None and not args.deriv.is_dir():
        raise BenchError(f"derivatives folder not found: {args.deriv}")
    harmonizer, card, target = None, None, None
    methods = list(dict.fromkeys(args.methods))
    if any(m in DISARM_METHODS for m in methods):
        from models.checkpoint import CheckpointError
        from models.harmonize import Harmonizer

        try:
            harmonizer = Harmonizer.from_dir(args.model, device="cpu")
        except (CheckpointError, ValueError, OSError) as exc:
            raise BenchError(f"cannot load the DISARM model: {exc}") from None
        card = harmonizer.card
        target = harmonizer.scanners[0]
    train_profiles = card_training_profiles(card)

    exclude = args.exclude_participant_label
    if exclude is None:
        exclude = card_subjects(card)
    if args.deriv is not None:
        found = preprocessed(args.deriv)
        labels = [x for x in labels if x in found]
        if not labels:
            raise BenchError(
                f"no preprocessed T1w (desc-preproc) of {args.bids_dir} in {args.deriv}"
            )
    chosen = choose_heads(labels, args.n_heads, args.participant_label, exclude)
    ref = args.reference_participant or next(
        (x for x in labels if x in set(exclude) and x not in chosen),
        next((x for x in labels if x not in chosen), chosen[0]),
    )
    if ref not in labels:
        raise BenchError(f"reference participant not found: {ref}")
    temp = None
    if args.deriv is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench-quality-"))
        temp = None if args.work else work
        try:
            deriv = run_preprocessing(args.bids_dir, sorted({*chosen, ref}), work, args.resolution)
        except BenchError:
            if temp:
                shutil.rmtree(temp, ignore_errors=True)
            raise
        found = preprocessed(deriv)
    else:
        deriv = args.deriv
    plan = Plan(args, profiles, methods, harmonizer, target, train_profiles, chosen, ref)
    try:
        return evaluate_and_report(plan, found, deriv)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def evaluate_and_report(plan: Plan, found: dict[str, object], deriv: Path) -> int:
    """Simulate, harmonize, measure; print the table (and write it with ``--out``)."""
    args, profiles, methods = plan.args, plan.profiles, plan.methods
    harmonizer, target, ref = plan.harmonizer, plan.target, plan.reference
    missing = [x for x in {*plan.heads, ref} if x not in found]
    if missing:
        raise BenchError(f"no preprocessed image of: {', '.join(sorted(missing))}")
    target_profile = plan.train_profiles[0]
    heads = [Head(x, found[x]) for x in plan.heads]
    card = harmonizer.card if harmonizer else {}

    from models.simulate import simulate_scanner

    ref_img, ref_clean, ref_mask = load_head(Head(ref, found[ref]))
    vox = tuple(float(v) for v in ref_img.header.get_zooms()[:3])
    population = [
        simulate_scanner(
            ref_clean, p, voxel_size_mm=vox, seed=args.seed + 999_000 + j, brain_mask=ref_mask
        )
        for j, p in enumerate(plan.train_profiles)
    ]
    reference = population[0]  # the reference head on the target (first training) scanner
    fns = build_methods(
        methods, reference, population, ref_mask, harmonizer, target, ref_img.affine
    )
    del ref_clean

    rows, records, seconds = evaluate(heads, profiles, fns, args.seed, plan.train_profiles)
    signal = {m: scanner_signal(records[m], len(profiles), args.seed) for m in methods}
    known = participant_ages(args.bids_dir)
    ages = np.array([known.get(h.label, NAN) for h in heads])
    clean_gm = np.array([r["gm_frac"] for r in rows if r["method"] == "clean"])
    bio = {"clean": {"gm_age_r": pearson(clean_gm, ages)}}
    bio.update({m: biology(records[m], clean_gm, ages) for m in methods})
    table = summarize(rows, signal, seconds, bio)
    model_txt = (
        f"{harmonizer.model_dir} ({card.get('name')}, {card.get('training', {}).get('steps')} "
        f"steps, target {target})"
        if harmonizer
        else "none"
    )
    header = (
        f"## Harmonization quality: {len(heads)} heads x {len(profiles)} simulated scanners "
        f"({args.profiles}: {', '.join(p.name for p in profiles)})\n\n"
        f"Heads: {', '.join('sub-' + h.label for h in heads)} of {args.bids_dir.name} "
        f"(from {deriv}); reference head for histmatch/Nyul: sub-{ref} on "
        f"{target_profile.name}. Model: {model_txt}. Chance accuracy: {1 / len(profiles):.3f}."
        f" Ages known for {int(np.isfinite(ages).sum())} of {len(heads)} heads."
        + (
            f" Target hit: nearest of {len(plan.train_profiles)} training scanners "
            f"({', '.join(p.name for p in plan.train_profiles)}); chance "
            f"{1 / len(plan.train_profiles):.3f}."
            if "disarm-target" in methods
            else ""
        )
    )
    text = markdown(table, header)
    print(text)
    if args.out:
        info = {
            "bids_dir": str(args.bids_dir),
            "deriv": str(deriv),
            "heads": [h.label for h in heads],
            "reference": ref,
            "profiles": [p.to_dict() for p in profiles],
            "model": str(harmonizer.model_dir) if harmonizer else None,
            "target": target,
            "target_profiles": [p.name for p in plan.train_profiles],
            "ages": {h.label: known.get(h.label) for h in heads},
            "seed": args.seed,
        }
        write_outputs(args.out, table, rows, text, info)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench_quality.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
