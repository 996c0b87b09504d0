"""Group level, statistics: grey-level histograms, Anderson-Darling, SSIM, age regression.

Each ``*_table`` function builds one of the group tables from the per-image values that
:func:`pipeline.group.run_group_level` gathers (methods: the ``pipeline.group`` module
documentation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline import figures as figs
from pipeline.group.inputs import BEFORE, StageImages

#: Random pairs of different subjects for the SSIM floor (the paper used 100).
N_RANDOM_PAIRS = 100
#: Voxels drawn per image for the voxel-sample Anderson-Darling test.
VOXELS_PER_IMAGE = 1000
#: Permutations of the image-level Anderson-Darling test.
N_PERMUTATIONS = 9999


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two images on the same grid (data range: max - min over the pair)."""
    from skimage.metrics import structural_similarity

    data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return float(structural_similarity(a, b, data_range=data_range or 1.0))


def anderson(groups: Mapping[str, np.ndarray], permutations: bool, seed: int):
    """(statistic, p, note) of the k-sample AD test; NaN with a note when undefined."""
    from scipy import stats

    if len(groups) < 2:
        return math.nan, math.nan, "fewer than 2 scanners with >= 2 images: test undefined"
    samples = [np.asarray(v, dtype=float) for v in groups.values()]
    if np.unique(np.concatenate(samples)).size < 2:
        return 0.0, 1.0, "all values identical: no difference between scanners"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "p-value capped/floored"
        if permutations:
            method = stats.PermutationMethod(
                n_resamples=N_PERMUTATIONS, rng=np.random.default_rng(seed)
            )
            result = stats.anderson_ksamp(samples, method=method)
        else:
            result = stats.anderson_ksamp(samples)
    return float(result.statistic), float(result.pvalue), ""


def regression(table: pd.DataFrame) -> dict[str, Any]:
    """OLS ``age ~ tgv * C(scanner)``: interaction F-test, in-sample and LOO RMSE."""
    import statsmodels.formula.api as smf

    out: dict[str, Any] = {
        "n_images": len(table),
        "n_scanners": table["scanner"].nunique(),
        "interaction_F": math.nan,
        "interaction_df": math.nan,
        "interaction_p": math.nan,
        "rmse_insample": math.nan,
        "rmse_loocv": math.nan,
        "r2": math.nan,
        "note": "",
    }
    notes = []
    counts = table["scanner"].value_counts()
    small = sorted(counts[counts < 2].index)
    if small:
        notes.append(f"left out (fewer than 2 images with an age): {', '.join(small)}")
        table = table[~table["scanner"].isin(small)]
        out.update(n_images=len(table), n_scanners=table["scanner"].nunique())
    several = table["scanner"].nunique() >= 2
    formula = "age ~ tgv * C(scanner)" if several else "age ~ tgv"
    out["formula"] = formula
    n_params = 2 * table["scanner"].nunique() if several else 2
    if len(table) <= n_params:
        notes.append(f"{len(table)} images for {n_params} parameters: model undefined")
        out["note"] = "; ".join(notes)
        return out
    full = smf.ols(formula, data=table).fit()
    out["rmse_insample"] = float(np.sqrt(np.mean(full.resid**2)))
    out["r2"] = float(full.rsquared)
    leverage = full.get_influence().hat_matrix_diag
    ok = leverage < 1 - 1e-8
    if not ok.all():
        notes.append(f"{int((~ok).sum())} image(s) with leverage 1 left out of the LOO RMSE")
    if ok.any():
        loo = full.resid.to_numpy()[ok] / (1 - leverage[ok])
        out["rmse_loocv"] = float(np.sqrt(np.mean(loo**2)))
    if several:
        reduced = smf.ols("age ~ tgv + C(scanner)", data=table).fit()
        f_value, p_value, df_diff = full.compare_f_test(reduced)
        out.update(
            interaction_F=float(f_value), interaction_p=float(p_value), interaction_df=df_diff
        )
    else:
        notes.append("one scanner: no interaction to test")
    out["note"] = "; ".join(notes)
    return out


def random_pairs(outputs, scanners, images: StageImages, rng) -> list[dict[str, Any]]:
    """SSIM of preprocessed images of random pairs of different subjects (the floor)."""
    pairs = [
        (i, j)
        for i in range(len(outputs))
        for j in range(i + 1, len(outputs))
        if outputs[i].subject != outputs[j].subject
    ]
    if not pairs:
        return []
    chosen = rng.choice(len(pairs), size=min(N_RANDOM_PAIRS, len(pairs)), replace=False)
    rows = []
    for k in sorted(chosen):
        i, j = pairs[k]
        a, b = images.load(i, BEFORE)[1], images.load(j, BEFORE)[1]
        rows.append(
            {
                "comparison": "random_pairs",
                "image_a": outputs[i].source,
                "image_b": outputs[j].source,
                "scanner_a": scanners[i],
                "scanner_b": scanners[j],
                "ssim": ssim(a, b) if a.shape == b.shape else math.nan,
            }
        )
    return rows


def intensity_table(outputs, scanners, stages, hists) -> pd.DataFrame:
    edges = figs.bin_edges()
    rows = []
    for stage in stages:
        for scanner in sorted(set(scanners)):
            curves = [
                hists[i, stage]
                for i in range(len(outputs))
                if scanners[i] == scanner and (i, stage) in hists
            ]
            if not curves:
                continue
            mean, sd = np.mean(curves, axis=0), np.std(curves, axis=0)
            for b in range(len(mean)):
                rows.append(
                    {
                        "stage": stage,
                        "scanner": scanner,
                        "n_images": len(curves),
                        "bin_start": round(float(edges[b]), 6),
                        "bin_end": round(float(edges[b + 1]), 6),
                        "density_mean": float(mean[b]),
                        "density_sd": float(sd[b]),
                    }
                )
    return pd.DataFrame(rows)


def mean_curves(intensity: pd.DataFrame, stage: str) -> dict[str, np.ndarray]:
    part = intensity[intensity["stage"] == stage]
    return {
        f"{scanner} (n={int(g['n_images'].iloc[0])})": g["density_mean"].to_numpy()
        for scanner, g in part.groupby("scanner", sort=True)
    }


def anderson_table(image_table, outputs, scanners, stages, voxels, seed) -> pd.DataFrame:
    rows = []
    for stage in stages:
        part = image_table[image_table["stage"] == stage]
        counts = part["scanner"].value_counts()
        kept = sorted(counts[counts >= 2].index)
        dropped = sorted(counts[counts < 2].index)
        medians = {
            s: part.loc[part["scanner"] == s, "brain_median_normalized"].to_numpy() for s in kept
        }
        pooled = {
            s: np.concatenate(
                [
                    voxels[i, stage]
                    for i in range(len(outputs))
                    if scanners[i] == s and (i, stage) in voxels
                ]
            )
            for s in kept
        }
        for sample, groups, perm in (("image_median", medians, True), ("voxels", pooled, False)):
            statistic, p_value, note = anderson(groups, perm, seed)
            if dropped:
                note = "; ".join(filter(None, [f"left out (1 image): {', '.join(dropped)}", note]))
            rows.append(
                {
                    "stage": stage,
                    "sample": sample,
                    "n_scanners": len(groups),
                    "n_values": int(sum(len(v) for v in groups.values())),
                    "statistic": statistic,
                    "p_value": p_value,
                    "p_method": (
                        f"permutation ({N_PERMUTATIONS}, seed {seed})"
                        if perm
                        else "interpolated, capped to [0.001, 0.25]"
                    ),
                    "note": note,
                }
            )
    return pd.DataFrame(rows)


def regression_data(tgv: pd.DataFrame, stage: str) -> pd.DataFrame:
    part = tgv[tgv["stage"] == stage][["age", "tgv_ml", "scanner"]].rename(
        columns={"tgv_ml": "tgv"}
    )
    return part.dropna().reset_index(drop=True)


def tgv_groups(tgv: pd.DataFrame, stage: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    part = regression_data(tgv, stage)
    return {
        scanner: (g["tgv"].to_numpy(), g["age"].to_numpy())
        for scanner, g in part.groupby("scanner", sort=True)
    }
