"""Metrics: travelling-head SSIM/MAD, scanner signal, biology kept, target hit."""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np

from .common import HIST_BINS, HIST_RANGE, N_PERMUTATIONS, NAN, QUANTILES, Volume


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
