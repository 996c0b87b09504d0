"""Inputs: participants, ages, preprocessed heads, scanner profiles, the model card."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from .common import REPO, BenchError, Head, _label


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
        if len(set(explicit)) < 2:
            # scanner accuracy is cross-validated across heads: one head has no fold
            raise BenchError("need at least 2 heads (--participant-label gives one)")
        return list(dict.fromkeys(explicit))
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
