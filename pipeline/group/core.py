"""Group level, entry point: :func:`run_group_level` writes the tables, figures and report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import figures as figs
from pipeline.exitcodes import ExitCode, UserError
from pipeline.group import report, stats
from pipeline.group.inputs import BEFORE, StageImages, participant_age, scanner_labels
from pipeline.group.stats import VOXELS_PER_IMAGE
from pipeline.group.volume import grey_matter_ml, native_volume_factor
from pipeline.reports import collect_outputs, read_participants, write_bidsignore

TABLES = ("intensity", "anderson_darling", "ssim", "tgv", "regression", "images")


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
    scanners = scanner_labels(outputs, participants, scanner_field)
    stages = [BEFORE] + sorted({d for o in outputs for d in o.harmonized})
    ages = [participant_age(participants.get(o.subject, {})) for o in outputs]
    with_age = any(not math.isnan(a) for a in ages)
    images = StageImages(outputs)
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
                        "ssim": (
                            stats.ssim(before, norm) if before.shape == norm.shape else math.nan
                        ),
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
    ssim_rows += stats.random_pairs(outputs, scanners, images, rng)

    paths: dict[str, Path] = {}
    image_table = pd.DataFrame(rows)
    paths["images"] = _write_tsv(image_table, output_dir / "group_images.tsv")
    intensity = stats.intensity_table(outputs, scanners, stages, hists)
    paths["intensity"] = _write_tsv(intensity, output_dir / "group_intensity.tsv")
    ad = stats.anderson_table(image_table, outputs, scanners, stages, voxels, seed)
    paths["anderson_darling"] = _write_tsv(ad, output_dir / "group_anderson_darling.tsv")
    ssim = pd.DataFrame(
        ssim_rows,
        columns=["comparison", "image_a", "image_b", "scanner_a", "scanner_b", "ssim"],
    )
    paths["ssim"] = _write_tsv(ssim, output_dir / "group_ssim.tsv")
    paths["fig_intensity"] = figs.plot_histograms(
        {},
        output_dir / "group_intensity.svg",
        panels=[stats.mean_curves(intensity, stage) for stage in stages],
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
            [
                {"stage": stage, **stats.regression(stats.regression_data(tgv, stage))}
                for stage in stages
            ]
        )
        columns = ["stage", "formula", "n_images", "n_scanners", "interaction_F"]
        columns += ["interaction_df", "interaction_p", "rmse_insample", "rmse_loocv", "r2"]
        regression = regression[[*columns, "note"]]
        paths["regression"] = _write_tsv(regression, output_dir / "group_regression.tsv")
        paths["fig_tgv"] = figs.plot_tgv_age(
            [(stage, stats.tgv_groups(tgv, stage)) for stage in stages],
            output_dir / "group_tgv.svg",
        )
    notes = sorted(images.notes)
    if not with_age:
        notes.append("participants.tsv has no age column: TGV and regression not computed")
    paths["html"] = report.write_html(output_dir, paths, image_table, scanner_field, notes)
    write_bidsignore(output_dir)
    return paths


def _write_tsv(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return path
