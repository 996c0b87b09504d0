"""Output: the summary table, its markdown, the CSV and settings files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from .common import NAN

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
