"""Constants, shared types and the user-error exception of the quality benchmark."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_BIDS = REPO.parent / "shared" / "data" / "ixi-hh"
METHODS = ("none", "zscore", "histmatch", "nyul", "whitestripe", "disarm-free", "disarm-target")
DISARM_METHODS = ("disarm-free", "disarm-target")
#: Not harmonizers: bounds that read the clean head (run only when named).
ORACLES = ("oracle-curve", "oracle-landmarks")
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
#: an oracle's callable also takes the clean head: (image, brain mask, clean) -> image


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


def _label(text: str) -> str:
    return text[4:] if text.startswith("sub-") else text
