"""Group level: the DISARM paper's evaluation on the participant-level outputs.

Images are grouped by scanner (a sidecar field, ``ManufacturersModelName`` by default, or a
``participants.tsv`` column of that name). Each *stage* is one kind of image: ``preproc``
(before harmonization) and every ``harmonized*`` desc found (after). Per stage:

* **Grey levels.** Intensities inside the template brain mask, each image divided by its own
  99th percentile there (``pipeline.figures.normalize_in_mask``), histogrammed on fixed bins
  (0 to 1.25, 125 bins; higher values dropped) and averaged per scanner (the paper's
  Fig. 2/3) -> ``group_intensity.tsv``, ``group_intensity.svg``.
* **k-sample Anderson-Darling test across scanners** (``scipy.stats.anderson_ksamp``).
  Main sample ``image_median``: one value per image, the normalized median brain intensity,
  so images are the independent units; p-value by permutation (9999 resamples, exact when
  fewer partitions exist, seeded). Secondary sample ``voxels``: 1000 normalized brain voxels
  drawn per image (seeded) and pooled per scanner; its p-value is scipy's interpolation,
  capped to [0.001, 0.25], and voxels are not independent (read it as a distance, not a test).
  Scanners with fewer than 2 images are left out; with fewer than 2 scanners left: NaN.
  -> ``group_anderson_darling.tsv``.
* **SSIM** (``skimage.metrics.structural_similarity``, whole 3D grid, 7-voxel window,
  data_range = max - min over the pair) between each preprocessed image and its harmonized
  version, and between random pairs of preprocessed images of different subjects (at most
  100 pairs, seeded) as the floor; both images normalized as above first, so the gain of
  the harmonized output does not count. -> ``group_ssim.tsv``, ``group_ssim.svg``.
* **Total grey-matter volume (TGV)**, when ``participants.tsv`` has ``age``: 3-class Atropos
  segmentation (k-means start, MRF 0.1, 3 iterations; at 2 mm, coarser images untouched,
  finer ones resampled) inside the template brain mask; TGV = sum of the grey-matter
  posterior (the middle class) x voxel volume, in template space, then times the affine's
  Jacobian to native mL (:func:`native_volume_factor`). -> ``group_tgv.tsv``.
* **Age regression** (statsmodels OLS) ``age ~ TGV * C(scanner)``: F-test of the
  TGV x scanner interaction against ``age ~ TGV + C(scanner)``, and RMSE of the full model,
  in-sample and leave-one-out (exact, from the hat matrix). Scanners with fewer than 2 images
  with an age are left out. -> ``group_regression.tsv``, ``group_tgv.svg``.

``group_images.tsv`` lists every image and stage with its scanner and summary values;
``group.html`` shows everything. :func:`format_summary` gives the key numbers as Markdown.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
import pandas as pd

from pipeline import figures as figs
from pipeline.exitcodes import ExitCode, UserError
from pipeline.reports import (
    ImageOutputs,
    collect_outputs,
    read_participants,
    render_page,
    template_mask,
    write_bidsignore,
)

BEFORE = "preproc"
#: Random pairs of different subjects for the SSIM floor (the paper used 100).
N_RANDOM_PAIRS = 100
#: Voxels drawn per image for the voxel-sample Anderson-Darling test.
VOXELS_PER_IMAGE = 1000
#: Permutations of the image-level Anderson-Darling test.
N_PERMUTATIONS = 9999
#: Grid (mm) the segmentation runs on: finer images are resampled (< 5 s per image).
SEGMENTATION_MM = 2.0

TABLES = ("intensity", "anderson_darling", "ssim", "tgv", "regression", "images")


# --------------------------------------------------------------------------- inputs


def _scanner_labels(
    outputs: list[ImageOutputs], participants: dict[str, dict[str, str]], field: str
) -> list[str]:
    """Scanner label of each image: the sidecar field, else a participants.tsv column."""
    labels, missing = [], []
    for item in outputs:
        value = item.preproc_meta.get(field)
        if value in (None, ""):
            value = participants.get(item.subject, {}).get(field)
        if value in (None, "", "n/a"):
            missing.append(item.preproc.name)
        labels.append(str(value))
    if missing:
        known = sorted(
            {
                k
                for o in outputs
                for k, v in o.preproc_meta.items()
                if isinstance(v, str | int | float) and not isinstance(v, bool)
            }
            - {"Sources"}
        )
        raise UserError(
            f"scanner field {field!r} is missing for {len(missing)} of {len(outputs)} image(s) "
            f"(e.g. {missing[0]}); choose a sidecar field ({', '.join(known) or 'none'}) or a "
            "participants.tsv column",
            ExitCode.USAGE,
        )
    return labels


def native_volume_factor(xfm: Path | None) -> float:
    """Native volume / template volume, from the affine's 3x3 linear part (NaN if unknown).

    * ITK text (``.txt``, ants backend): the first 9 numbers of ``Parameters:`` are the matrix
      (row-major) mapping template points to subject points: factor = |det|.
    * FLIRT (``.mat``, fsl backend): a 4x4 matrix mapping native mm to template mm:
      factor = 1 / |det|.
    """
    if xfm is None:
        return math.nan
    try:
        text = xfm.read_text()
    except OSError:
        return math.nan
    try:
        if xfm.suffix == ".txt":
            line = next(s for s in text.splitlines() if s.startswith("Parameters:"))
            matrix = np.array(line.split(":", 1)[1].split()[:9], dtype=float).reshape(3, 3)
            return float(abs(np.linalg.det(matrix)))
        matrix = np.array(text.split(), dtype=float).reshape(4, 4)[:3, :3]
        return float(1.0 / abs(np.linalg.det(matrix)))
    except (StopIteration, ValueError, ZeroDivisionError):
        return math.nan


def grey_matter_ml(data: np.ndarray, mask: np.ndarray, zooms: np.ndarray) -> float:
    """Grey-matter volume (mL, on the image's grid) from a 3-class Atropos segmentation."""
    import ants

    # Atropos' k-means start fails on tiny intensity ranges (e.g. max 0.01): rescale first
    scaled = figs.normalize_in_mask(np.asarray(data, dtype=np.float32), mask) * 100.0
    img = ants.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32), spacing=tuple(zooms))
    msk = ants.from_numpy(mask.astype(np.float32), spacing=tuple(zooms))
    if min(zooms) < SEGMENTATION_MM - 1e-3:
        target = (SEGMENTATION_MM,) * 3
        img = ants.resample_image(img, target, use_voxels=False, interp_type=0)
        msk = ants.resample_image(msk, target, use_voxels=False, interp_type=1)
    seg = ants.atropos(
        a=img, x=msk, i="kmeans[3]", m="[0.1,1x1x1]", c="[3,0.01]", priorweight=0.0, verbose=0
    )
    # k-means classes come sorted by mean intensity: CSF < GM < WM on a T1w image
    gm = seg["probabilityimages"][1].numpy() * (msk.numpy() > 0.5)
    return float(gm.sum() * np.prod(img.spacing) / 1000.0)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    data_range = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return float(structural_similarity(a, b, data_range=data_range or 1.0))


class _Images:
    """Loads stage images of the outputs, normalized in the template mask (small cache)."""

    def __init__(self, outputs: list[ImageOutputs]):
        self.outputs = outputs
        self.notes: set[str] = set()
        self.load = lru_cache(maxsize=8)(self._load)

    def path(self, index: int, stage: str) -> Path:
        item = self.outputs[index]
        return item.preproc if stage == BEFORE else item.harmonized[stage]

    def _load(self, index: int, stage: str):
        """(raw data, normalized data, mask, zooms) of one image."""
        item = self.outputs[index]
        img = nb.load(str(self.path(index, stage)))
        mask_img, note = template_mask(item, img)
        if note:
            self.notes.add(note)
        data = np.nan_to_num(np.asarray(img.dataobj, dtype=np.float32)).reshape(img.shape[:3])
        mask = np.asarray(mask_img.dataobj) > 0
        zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
        return data, figs.normalize_in_mask(data, mask), mask, zooms


# --------------------------------------------------------------------------- statistics


def _anderson(groups: Mapping[str, np.ndarray], permutations: bool, seed: int):
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


def _regression(table: pd.DataFrame) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- entry point


def run_group_level(
    output_dir: Path,
    bids_dir: Path,
    *,
    scanner_field: str = "ManufacturersModelName",
    participant_label: list[str] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Compute the group-level tables, figures and ``group.html`` in ``output_dir``.

    Returns ``{"intensity", "anderson_darling", "ssim", "tgv", "regression", "images",
    "html", "fig_intensity", "fig_ssim", "fig_tgv"}`` -> path, for the files written
    (``tgv``, ``regression`` and ``fig_tgv`` only when ``participants.tsv`` has ``age``).
    Raises :class:`UserError`: ``NO_INPUT`` without ``desc-preproc`` outputs, ``USAGE``
    when ``scanner_field`` is missing.
    """
    output_dir = Path(output_dir)
    outputs = collect_outputs(output_dir, participant_label)
    if not outputs:
        who = f" for {', '.join(participant_label)}" if participant_label else ""
        raise UserError(
            f"no participant-level outputs (desc-preproc T1w){who} in {output_dir}: run the "
            "participant level first",
            ExitCode.NO_INPUT,
        )
    participants = read_participants(bids_dir)
    scanners = _scanner_labels(outputs, participants, scanner_field)
    stages = [BEFORE] + sorted({d for o in outputs for d in o.harmonized})
    ages = [_age(participants.get(o.subject, {})) for o in outputs]
    with_age = any(not math.isnan(a) for a in ages)
    images = _Images(outputs)
    rng = np.random.default_rng(seed)

    rows, hists, voxels, ssim_rows, tgv_rows = [], {}, {}, [], []
    for index, item in enumerate(outputs):
        factor = native_volume_factor(item.xfm)
        for stage in stages:
            if stage != BEFORE and stage not in item.harmonized:
                continue
            data, norm, mask, zooms = images.load(index, stage)
            values = norm[mask]
            hists[index, stage] = figs.histogram(values)
            voxels[index, stage] = rng.choice(values, min(VOXELS_PER_IMAGE, values.size), False)
            rows.append(
                {
                    "source": item.source,
                    "subject": item.subject,
                    "scanner": scanners[index],
                    "stage": stage,
                    "file": images.path(index, stage).relative_to(output_dir).as_posix(),
                    "brain_p99": float(np.percentile(data[mask], figs.NORM_PERCENTILE)),
                    "brain_median_normalized": float(np.median(values)),
                    "alignment_ncc": item.preproc_meta.get("Preprocessing", {}).get(
                        "AlignmentNCC", math.nan
                    ),
                }
            )
            if stage != BEFORE:
                before = images.load(index, BEFORE)[1]
                ssim_rows.append(
                    {
                        "comparison": f"{BEFORE}_vs_{stage}",
                        "image_a": item.source,
                        "image_b": item.source,
                        "scanner_a": scanners[index],
                        "scanner_b": scanners[index],
                        "ssim": _ssim(before, norm) if before.shape == norm.shape else math.nan,
                    }
                )
            if with_age:
                tgv_template = grey_matter_ml(data, mask, zooms)
                tgv_rows.append(
                    {
                        "source": item.source,
                        "subject": item.subject,
                        "scanner": scanners[index],
                        "age": ages[index],
                        "stage": stage,
                        "tgv_ml_template": tgv_template,
                        "native_volume_factor": factor,
                        "tgv_ml": tgv_template * factor,
                    }
                )
    ssim_rows += _random_pairs(outputs, scanners, images, rng)

    paths: dict[str, Path] = {}
    image_table = pd.DataFrame(rows)
    paths["images"] = _write_tsv(image_table, output_dir / "group_images.tsv")
    intensity = _intensity_table(outputs, scanners, stages, hists)
    paths["intensity"] = _write_tsv(intensity, output_dir / "group_intensity.tsv")
    ad = _anderson_table(image_table, outputs, scanners, stages, voxels, seed)
    paths["anderson_darling"] = _write_tsv(ad, output_dir / "group_anderson_darling.tsv")
    ssim = pd.DataFrame(
        ssim_rows,
        columns=["comparison", "image_a", "image_b", "scanner_a", "scanner_b", "ssim"],
    )
    paths["ssim"] = _write_tsv(ssim, output_dir / "group_ssim.tsv")
    paths["fig_intensity"] = figs.plot_histograms(
        {},
        output_dir / "group_intensity.svg",
        panels=[_mean_curves(intensity, stage) for stage in stages],
        ax_titles=stages,
    )
    paths["fig_ssim"] = figs.plot_ssim(
        {k: g["ssim"].dropna().to_numpy() for k, g in ssim.groupby("comparison", sort=False)},
        output_dir / "group_ssim.svg",
    )
    regression = None
    if with_age:
        tgv = pd.DataFrame(tgv_rows)
        paths["tgv"] = _write_tsv(tgv, output_dir / "group_tgv.tsv")
        regression = pd.DataFrame(
            [{"stage": stage, **_regression(_regression_data(tgv, stage))} for stage in stages]
        )
        columns = ["stage", "formula", "n_images", "n_scanners", "interaction_F"]
        columns += ["interaction_df", "interaction_p", "rmse_insample", "rmse_loocv", "r2"]
        regression = regression[[*columns, "note"]]
        paths["regression"] = _write_tsv(regression, output_dir / "group_regression.tsv")
        paths["fig_tgv"] = figs.plot_tgv_age(
            [(stage, _tgv_groups(tgv, stage)) for stage in stages],
            output_dir / "group_tgv.svg",
        )
    notes = sorted(images.notes)
    if not with_age:
        notes.append("participants.tsv has no age column: TGV and regression not computed")
    paths["html"] = _write_html(output_dir, paths, image_table, scanner_field, notes)
    write_bidsignore(output_dir)
    return paths


def _age(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("age", "nan"))
    except ValueError:  # "n/a"
        return math.nan


def _random_pairs(outputs, scanners, images: _Images, rng) -> list[dict[str, Any]]:
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
                "ssim": _ssim(a, b) if a.shape == b.shape else math.nan,
            }
        )
    return rows


def _intensity_table(outputs, scanners, stages, hists) -> pd.DataFrame:
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


def _mean_curves(intensity: pd.DataFrame, stage: str) -> dict[str, np.ndarray]:
    part = intensity[intensity["stage"] == stage]
    return {
        f"{scanner} (n={int(g['n_images'].iloc[0])})": g["density_mean"].to_numpy()
        for scanner, g in part.groupby("scanner", sort=True)
    }


def _anderson_table(image_table, outputs, scanners, stages, voxels, seed) -> pd.DataFrame:
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
            statistic, p_value, note = _anderson(groups, perm, seed)
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


def _regression_data(tgv: pd.DataFrame, stage: str) -> pd.DataFrame:
    part = tgv[tgv["stage"] == stage][["age", "tgv_ml", "scanner"]].rename(
        columns={"tgv_ml": "tgv"}
    )
    return part.dropna().reset_index(drop=True)


def _tgv_groups(tgv: pd.DataFrame, stage: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    part = _regression_data(tgv, stage)
    return {
        scanner: (g["tgv"].to_numpy(), g["age"].to_numpy())
        for scanner, g in part.groupby("scanner", sort=True)
    }


def _write_tsv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return path


# --------------------------------------------------------------------------- summaries


def _read(paths: Mapping[str, Path], key: str) -> pd.DataFrame | None:
    path = paths.get(key)
    if path is None or not Path(path).is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _num(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "NaN" if math.isnan(value) else f"{value:.{digits}g}"


def format_summary(paths: Mapping[str, Path]) -> str:
    """The key numbers of a group run as Markdown (AD p, SSIM mean +- sd, regression)."""
    lines = ["## disarm-pipeline group level", ""]
    images = _read(paths, "images")
    if images is not None:
        before = images[images["stage"] == BEFORE]
        counts = before["scanner"].value_counts().sort_index()
        lines.append(
            f"{len(before)} images, {len(counts)} scanners: "
            + ", ".join(f"{k} ({v})" for k, v in counts.items())
        )
        lines.append("")
    ad = _read(paths, "anderson_darling")
    if ad is not None:
        lines += ["Anderson-Darling across scanners (p):", ""]
        lines += ["| stage | image medians | voxels | note |", "|---|---|---|---|"]
        for stage, g in ad.groupby("stage", sort=False):
            p = dict(zip(g["sample"], g["p_value"], strict=True))
            note = "; ".join(sorted({str(n) for n in g["note"].dropna() if n}))
            lines.append(
                f"| {stage} | {_num(p.get('image_median'))} | {_num(p.get('voxels'))} | {note} |"
            )
        lines.append("")
    ssim = _read(paths, "ssim")
    if ssim is not None and len(ssim):
        lines += ["SSIM (mean +- sd, n):", ""]
        for comparison, g in ssim.groupby("comparison", sort=False):
            values = g["ssim"].dropna()
            sd = values.std(ddof=1) if len(values) > 1 else math.nan
            lines.append(
                f"- {comparison}: {_num(values.mean())} +- {_num(sd, 2)} (n={len(values)})"
            )
        lines.append("")
    regression = _read(paths, "regression")
    if regression is not None:
        lines += ["Age ~ TGV * C(scanner) (OLS; RMSE in years):", ""]
        lines += [
            "| stage | n | interaction p | RMSE in-sample | RMSE LOO | note |",
            "|---|---|---|---|---|---|",
        ]
        for _, row in regression.iterrows():
            note = row["note"] if isinstance(row["note"], str) else ""
            lines.append(
                f"| {row['stage']} | {row['n_images']} | {_num(row['interaction_p'])} "
                f"| {_num(row['rmse_insample'])} | {_num(row['rmse_loocv'])} | {note} |"
            )
        lines.append("")
    return "\n".join(lines)


def _table_html(table: pd.DataFrame | None) -> str:
    if table is None or table.empty:
        return "<p>(empty)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for value in row:
            if isinstance(value, float | np.floating):
                cells.append(f'<td class="num">{_num(value, 4)}</td>')
            else:
                cells.append(f"<td>{html.escape('' if value is None else str(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _write_html(
    output_dir: Path,
    paths: Mapping[str, Path],
    images: pd.DataFrame,
    scanner_field: str,
    notes: list[str],
) -> Path:
    def fig(key: str, caption: str) -> str:
        if key not in paths:
            return ""
        src = html.escape(Path(paths[key]).name)
        return (
            f'<figure><img src="{src}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    before = images[images["stage"] == BEFORE]
    scanners = (
        before.groupby("scanner").size().rename("images").reset_index()
        if not before.empty
        else None
    )
    ssim = _read(paths, "ssim")
    ssim_summary = None
    if ssim is not None and len(ssim):
        ssim_summary = (
            ssim.groupby("comparison", sort=False)["ssim"]
            .agg(["count", "mean", "std", "min", "max"])
            .reset_index()
        )
    parts = [
        f"<p>{len(before)} preprocessed image(s) grouped by <code>{html.escape(scanner_field)}"
        "</code>. Methods and column definitions: <code>docs/outputs.md</code> and the "
        "<code>pipeline.group</code> module documentation.</p>",
        _table_html(scanners),
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts += [
        "<h2>Grey-level distributions</h2>",
        fig(
            "fig_intensity",
            "Mean histogram per scanner inside the template brain mask, each image divided by "
            f"its {figs.NORM_PERCENTILE:g}th percentile there; one panel per stage.",
        ),
        "<h3>k-sample Anderson-Darling test across scanners</h3>",
        _table_html(_read(paths, "anderson_darling")),
        "<h2>Structural similarity</h2>",
        fig("fig_ssim", "SSIM of each input with its harmonized image, and of random pairs."),
        _table_html(ssim_summary),
    ]
    if "regression" in paths:
        parts += [
            "<h2>Age and total grey-matter volume</h2>",
            fig("fig_tgv", "Age against native TGV, one least-squares line per scanner."),
            _table_html(_read(paths, "regression")),
        ]
    parts += [
        "<h2>Summary</h2>",
        f"<pre>{html.escape(format_summary(paths))}</pre>",
        "<h2>Files</h2><ul>",
        *(
            f'<li><a href="{html.escape(p.name)}">{html.escape(p.name)}</a></li>'
            for p in sorted(paths.values(), key=lambda p: p.name)
        ),
        "</ul>",
    ]
    path = output_dir / "group.html"
    path.write_text(render_page("disarm-pipeline group report", "\n".join(parts)))
    return path
