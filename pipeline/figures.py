"""Matplotlib figures of the participant reports and the group level, written reproducibly.

Every figure is built on a bare :class:`matplotlib.figure.Figure` (no pyplot: no global state,
no GUI backend) and saved as SVG with a fixed ``svg.hashsalt`` and no ``Date`` metadata, so
rerunning a report gives byte-identical files. Slices are shown in RAS+ orientation (left of
the subject on the left of the picture, radiological convention off) with the voxel aspect ratio.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nb
import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

#: Fixed salt of the SVG element ids: the default is random per process.
SVG_HASHSALT = "disarm-pipeline"
#: Per-image normalization (see :func:`normalize_in_mask`): brain intensities end near 1.
NORM_PERCENTILE = 99.0
#: Grey-level histograms: bins on the normalized scale (values above the range are dropped).
HIST_RANGE = (0.0, 1.25)
HIST_BINS = 125
VIEWS = ("sagittal", "coronal", "axial")


def save_svg(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a reproducible SVG (fixed ids, no date) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rc_context({"svg.hashsalt": SVG_HASHSALT, "svg.fonttype": "path"}):
        fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return path


def canonical(img: nb.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """3D float32 data reoriented to RAS+ (no resampling) and its voxel sizes."""
    img = nb.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return np.nan_to_num(data), np.asarray(img.header.get_zooms()[:3], dtype=float)


def normalize_in_mask(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``data`` divided by its :data:`NORM_PERCENTILE`-th percentile inside ``mask``.

    Puts images of any scanner gain on one scale (brain tissue in about [0, 1]) without
    assuming anything about the shape of the distribution.
    """
    values = data[mask]
    scale = float(np.percentile(values, NORM_PERCENTILE)) if values.size else 0.0
    return data / scale if scale > 0 else data.astype(np.float32, copy=True)


def histogram(values: np.ndarray) -> np.ndarray:
    """Density of normalized ``values`` on the fixed bins (integrates to 1 over the range)."""
    counts, _ = np.histogram(values, bins=HIST_BINS, range=HIST_RANGE)
    total = counts.sum()
    width = (HIST_RANGE[1] - HIST_RANGE[0]) / HIST_BINS
    return counts / (total * width) if total else counts.astype(float)


def bin_edges() -> np.ndarray:
    return np.linspace(*HIST_RANGE, HIST_BINS + 1)


def slice_indices(mask: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of ``mask`` (voxels), the cut of the three orthogonal views."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    centre = np.argwhere(mask).mean(axis=0)
    return tuple(int(round(c)) for c in centre)  # type: ignore[return-value]


def _cut(data: np.ndarray, view: str, index: int) -> np.ndarray:
    """One slice, transposed so that superior/anterior is up (``origin='lower'``)."""
    if view == "sagittal":
        return data[index, :, :].T
    if view == "coronal":
        return data[:, index, :].T
    return data[:, :, index].T


def _aspect(zooms: np.ndarray, view: str) -> float:
    # ratio of the row (vertical) to column (horizontal) voxel size of the cut
    horizontal, vertical = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}[view]
    return float(zooms[vertical] / zooms[horizontal])


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_registration(
    head: np.ndarray, mask: np.ndarray, zooms: np.ndarray, path: Path, title: str = ""
) -> Path:
    """Outline of the template brain mask (red) over the registered head, three views."""
    cuts = slice_indices(mask)
    low, high = np.percentile(head[head > 0], (0.5, 99.5)) if np.any(head > 0) else (0, 1)
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 3)
    for ax, view, index in zip(axes, VIEWS, cuts, strict=True):
        aspect = _aspect(zooms, view)
        ax.imshow(
            _cut(head, view, index), cmap="gray", vmin=low, vmax=high, origin="lower",
            aspect=aspect, interpolation="nearest",
        )  # fmt: skip
        ax.contour(
            _cut(mask.astype(np.float32), view, index), levels=[0.5], colors="#e4002b",
            linewidths=1.0, origin="lower",
        )  # fmt: skip
        ax.set_title(f"{view} {index}", fontsize=9)
        _bare(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_svg(fig, path)


def plot_before_after(
    before: np.ndarray,
    after: np.ndarray,
    mask: np.ndarray,
    zooms: np.ndarray,
    path: Path,
    labels: tuple[str, str] = ("preprocessed", "harmonized"),
) -> Path:
    """Normalized before/after images on the same slices and window, and their difference.

    Both images are divided by their own brain 99th percentile (:func:`normalize_in_mask`), so
    the shared window [0, 1.1] compares contrast, not the arbitrary gain of each.
    """
    cuts = slice_indices(mask)
    a, b = normalize_in_mask(before, mask), normalize_in_mask(after, mask)
    diff = b - a
    fig = Figure(figsize=(9, 9))
    axes = fig.subplots(3, 3)
    rows = ((a, labels[0], "gray", 0.0, 1.1), (b, labels[1], "gray", 0.0, 1.1))
    rows += ((diff, f"{labels[1]} - {labels[0]}", "RdBu_r", -0.3, 0.3),)
    for r, (row, (data, label, cmap, vmin, vmax)) in enumerate(zip(axes, rows, strict=True)):
        for col, (ax, view, index) in enumerate(zip(row, VIEWS, cuts, strict=True)):
            image = ax.imshow(
                _cut(data, view, index), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                aspect=_aspect(zooms, view), interpolation="nearest",
            )  # fmt: skip
            _bare(ax)
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(f"{view} {index}", fontsize=9)
        fig.colorbar(image, ax=list(row), shrink=0.8, pad=0.02)
    return save_svg(fig, path)


def plot_histograms(
    curves: Mapping[str, np.ndarray],
    path: Path,
    title: str = "",
    bands: Mapping[str, np.ndarray] | None = None,
    ax_titles: Sequence[str] | None = None,
    panels: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Step histograms on the fixed normalized bins.

    ``curves`` maps a legend label to densities (:data:`HIST_BINS` values); ``bands`` an
    optional +-sd per label, drawn shaded. ``panels`` (with ``ax_titles``) draws several
    such mappings side by side with a shared y axis instead (e.g. before | after).
    """
    panels = list(panels) if panels is not None else [curves]
    bands_list = [bands or {}] if len(panels) == 1 else [{} for _ in panels]
    if bands is not None and len(panels) > 1:
        raise ValueError("bands are only drawn with a single panel")
    edges = bin_edges()
    centres = (edges[:-1] + edges[1:]) / 2
    fig = Figure(figsize=(4.5 * len(panels), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=True)):
        for label, density in panel.items():
            line = ax.step(centres, density, where="mid", label=label, linewidth=1.2)[0]
            sd = bands_list[i].get(label)
            if sd is not None:
                ax.fill_between(
                    centres, np.clip(density - sd, 0, None), density + sd, step="mid",
                    alpha=0.2, color=line.get_color(), linewidth=0,
                )  # fmt: skip
        ax.set_xlim(*HIST_RANGE)
        ax.set_xlabel(f"intensity / brain P{NORM_PERCENTILE:g}")
        if ax_titles is not None:
            ax.set_title(ax_titles[i], fontsize=10)
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("density (template brain mask)")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_svg(fig, path)


def plot_tgv_age(
    panels: Sequence[tuple[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]], path: Path
) -> Path:
    """Scatter of age against total grey-matter volume, one colour per scanner, per stage.

    ``panels``: (title, {scanner: (tgv_ml, age)}) per stage; a least-squares line per scanner
    shows the interaction the regression tests (lines of different slopes).
    """
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, groups) in zip(axes, panels, strict=True):
        for scanner, (tgv, age) in groups.items():
            dots = ax.scatter(tgv, age, s=12, label=scanner)
            if len(tgv) >= 2 and np.ptp(tgv) > 0:
                slope, icpt = np.polyfit(tgv, age, 1)
                xs = np.array([tgv.min(), tgv.max()])
                ax.plot(xs, icpt + slope * xs, color=dots.get_facecolor()[0], linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("TGV (mL, native space)")
        ax.legend(fontsize=7, frameon=False)
    axes[0].set_ylabel("age (years)")
    return save_svg(fig, path)


def plot_ssim(values: Mapping[str, np.ndarray], path: Path) -> Path:
    """Box plot of SSIM per comparison (input vs harmonized, random pairs of subjects)."""
    fig = Figure(figsize=(1.6 + 1.4 * len(values), 3.4))
    ax = fig.subplots()
    labels = [k for k in values if len(values[k])]
    if labels:
        ax.boxplot([np.asarray(values[k], dtype=float) for k in labels], showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)  # boxplot's keyword changed in 3.9
    else:
        ax.text(0.5, 0.5, "no pairs to compare", ha="center", va="center")
    ax.set_ylabel("SSIM")
    ax.set_ylim(0, 1.02)
    ax.tick_params(axis="x", labelsize=7, rotation=15)
    return save_svg(fig, path)
