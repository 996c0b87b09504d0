"""Group level, reports: the Markdown summary (:func:`format_summary`) and ``group.html``."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import figures as figs
from pipeline.group.inputs import BEFORE
from pipeline.reports import render_page


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


def write_html(
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
