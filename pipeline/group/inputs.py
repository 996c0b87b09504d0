"""Group level, inputs: the scanner of each image, ages, and the stage images.

The stage images are the participant-level outputs (``pipeline.reports.collect_outputs``)
normalized inside the template brain mask, loaded once and kept in a small cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import nibabel as nb
import numpy as np

from pipeline import figures as figs
from pipeline.exitcodes import ExitCode, UserError
from pipeline.reports import ImageOutputs, template_mask

BEFORE = "preproc"


def scanner_labels(
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


def participant_age(row: Mapping[str, str]) -> float:
    """``age`` of a participants.tsv row, NaN when absent or not a number."""
    try:
        return float(row.get("age", "nan"))
    except ValueError:  # "n/a"
        return math.nan


class StageImages:
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
