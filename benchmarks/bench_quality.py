"""Harmonization quality of DISARM against simple baselines, on simulated travelling heads.

Real heads, preprocessed by this pipeline (``--deriv``: an existing derivatives folder; else
the pipeline is run with ``--harmonize none`` into ``--work``), are "acquired" on K simulated
scanners (:mod:`models.simulate`; default: the held-out profiles, never seen in training).
Every simulated image is then harmonized by each method:

* ``none``: the simulated image as it is;
* ``zscore``: (x - mean) / sd inside the brain mask (intensity-normalization);
* ``histmatch``: ``skimage.exposure.match_histograms`` of the whole volume to one reference
  image: the reference head simulated on the target scanner (below);
* ``nyul``: Nyul & Udupa piecewise-linear landmark standardization (intensity-normalization),
  standard scale learned from the reference head simulated on every training scanner;
* ``whitestripe``: WhiteStripe (Shinohara et al. 2014; intensity-normalization, T1 mode):
  z-score by the normal-appearing white-matter stripe, inside the brain mask;
* ``disarm-free`` / ``disarm-target``: :class:`models.harmonize.Harmonizer`, scanner-free
  mode and target mode (target = the first training scanner of the model card).

Metrics, all inside the template brain mask (``pipeline.reports.template_mask``: the brain
mask of the derivatives' template space, resampled to their grid if needed):

* travelling-head consistency: mean SSIM and mean absolute difference (MAD) over all pairs of
  the K harmonized versions of one head. Common scale: per method and head, the 1st and 99th
  percentiles of the K outputs pooled inside the mask go to 0 and 1 (one map for all K, so
  gain/offset differences between scanners still count, while methods' units do not);
* anatomy kept: SSIM between the clean head and each harmonized version, each mapped by its own
  1st/99th mask percentiles to 0/1 (a pure rescaling costs nothing);
* scanner signal left, on a per-method scale (1st/99th percentiles of all that method's outputs
  pooled, heads never used): the k-sample Anderson-Darling test across the K scanners
  (``scipy.stats.anderson_ksamp``, permutation p) on two per-image summaries, the median and
  the interquartile range of the brain intensities (level and spread/contrast); and the
  accuracy of a logistic regression predicting the scanner from the 32-bin brain histogram,
  cross-validated with ``GroupKFold`` by head (a head is never in train and test; chance 1/K);
* downstream consistency (``GM CoV``, ``WM CoV``): per head, the coefficient of variation
  (sample sd / mean) of its grey- and white-matter fractions of the brain mask across its K
  harmonized versions, averaged over heads (row ``none``: before harmonization);
* biology kept: ``GM r clean``, the Pearson r across heads between the GM fraction of the
  harmonized versions and that of the clean head, per scanner, averaged over scanners; and
  ``GM~age r``, the Pearson r of GM fraction with age (``participants.tsv``) pooled over every
  version of every head with a known age. Row ``clean``: the clean heads, the reference r;
* ``target hit`` (``disarm-target`` only): the fraction of versions whose brain-intensity
  distribution is nearest to that of the same head simulated on the target scanner, among all
  the model's training scanners (:func:`nearest_distribution`: 1-D Wasserstein distance of the
  brain quantiles, each image mapped by its own 1st/99th percentiles to 0/1, since DISARM
  writes its output on a fixed scale that says nothing of the target's gain; chance about 1/S);
* ``checkerboard``: :func:`models.evaluate.checkerboard_ratio` of each output to its input,
  inside the mask (energy of the period-2 pattern a stride-2 up-sampling leaves; about 1 for a
  clean output, above 1.05 is an artefact).

Tissue fractions come from one segmentation, the same for every method and the clean head
(:func:`tissue_fractions`): 3-class k-means (``sklearn.cluster.KMeans``; centres started at
the intensity tercile means, one deterministic run; CSF < GM < WM by centre) of the brain
intensities, each image first mapped by its 1st/99th brain percentiles to 0/1 (so an affine
method, z-score or WhiteStripe, gets exactly its input's segmentation), fitted to 1000 evenly
spaced brain quantiles (a stratified sample of the intensities) and labelling every brain
voxel. Measured on the 2-core development machine while busy (load 2-6), on the 1 mm template
brain simulated on one scanner (1.9 M brain voxels, 151x187x158 box):

* Atropos (``ants.atropos``, ``kmeans[3]`` start, MRF 0.1, 3 iterations), the first choice:
  42 s at 1 mm and 3.3 s on a 2 mm copy (``ants.kmeans_segmentation``: 3.5 s at 2 mm); with
  24 heads x 4 scanners x 7 methods (672 images, plus the clean heads) that is 40 min or more;
* a 3-class Gaussian mixture (``sklearn``, tercile start), the planned fallback: 7.5 s at 1 mm,
  1.4 s at 2 mm with sklearn's default tolerance, where it stops after 6-10 EM iterations far
  from convergence (GM 0.35-0.49 depending on the voxel sample); run to convergence (300-1800
  iterations; 0.8 s on 1000 quantiles) it is still unstable on these images, whose simulated
  GM/WM contrast often leaves one broad peak: over 8 scanners x 2 noise seeds GM ranged
  0.41-0.93 with per-class variances (a broad component swallowing the others) and 0.00-0.93
  with one shared variance, and moved by up to 0.45 with the noise seed alone: segmentation
  noise that the CoV would count as scanner effect;
* k-means (the start Atropos itself uses): GM 0.38-0.56, WM 0.25-0.49 over the same 16
  images, within 0.04 between noise seeds, 0.2 s per image.

    python benchmarks/bench_quality.py --deriv /work/scratch/ixi-deriv \
        --model /work/scratch/train-default/model --out bench-out

Default heads: with a model card that lists its training subjects, the first ``--n-heads``
participants (sorted) that are not among them; ``--participant-label`` picks them explicitly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The pieces live in the ``quality`` package next to this script (benchmarks/quality/); every
# name is re-exported here, so ``import bench_quality`` keeps working for tests and scripts.
from quality.common import (
    DEFAULT_BIDS,
    DISARM_METHODS,
    HIST_BINS,
    HIST_RANGE,
    METHODS,
    N_PERMUTATIONS,
    N_SEGMENTATION_POINTS,
    NAN,
    ORACLES,
    QUANTILES,
    REPO,
    BenchError,
    Head,
    MethodFn,
    Plan,
    Volume,
    _label,
)
from quality.evaluation import evaluate
from quality.inputs import (
    bids_participants,
    brain_box,
    card_subjects,
    card_training_profiles,
    choose_heads,
    eval_profiles,
    load_head,
    participant_ages,
    preprocessed,
    run_preprocessing,
)
from quality.methods import build_methods
from quality.metrics import (
    SSIM_WINDOW,
    SSIMStats,
    anderson_p,
    biology,
    coefficient_of_variation,
    head_metrics,
    head_tissue,
    masked_ssim,
    nearest_distribution,
    pearson,
    scanner_quantiles,
    scanner_signal,
    to_unit,
    unit_quantiles,
)
from quality.runner import evaluate_and_report, run
from quality.segmentation import tissue_fractions
from quality.tables import COLUMNS, PER_HEAD_KEYS, _fmt, markdown, summarize, write_outputs

__all__ = [
    "COLUMNS", "DEFAULT_BIDS", "DISARM_METHODS", "HIST_BINS", "HIST_RANGE", "METHODS", "ORACLES",
    "N_PERMUTATIONS", "N_SEGMENTATION_POINTS", "NAN", "PER_HEAD_KEYS", "QUANTILES", "REPO",
    "SSIM_WINDOW", "BenchError", "Head", "MethodFn", "Plan", "SSIMStats", "Volume", "_fmt",
    "_label", "anderson_p", "bids_participants", "biology", "brain_box", "build_methods",
    "build_parser", "card_subjects", "card_training_profiles", "choose_heads",
    "coefficient_of_variation", "eval_profiles", "evaluate", "evaluate_and_report",
    "head_metrics", "head_tissue", "load_head", "main", "markdown", "masked_ssim",
    "nearest_distribution", "participant_ages", "pearson", "preprocessed", "run",
    "run_preprocessing", "scanner_quantiles", "scanner_signal", "summarize",
    "tissue_fractions", "to_unit", "unit_quantiles", "write_outputs",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench_quality.py", description=__doc__.splitlines()[0])
    p.add_argument("bids_dir", nargs="?", type=Path, default=DEFAULT_BIDS, help="BIDS dataset")
    p.add_argument("--deriv", type=Path, help="existing disarm-pipeline derivatives to reuse")
    p.add_argument("--model", type=Path, help="DISARM model folder (default: the shipped one)")
    p.add_argument(
        "--profiles",
        default="unseen",
        help="simulated scanners: 'unseen' (held-out defaults), 'training', or a JSON file",
    )
    p.add_argument("--n-scanners", type=int, default=None, help="use the first K profiles only")
    p.add_argument("--n-heads", type=int, default=6, help="heads to evaluate (default 6)")
    p.add_argument("--participant-label", nargs="+", type=_label, help="heads to evaluate")
    p.add_argument(
        "--exclude-participant-label",
        nargs="+",
        type=_label,
        default=None,
        help="never evaluate these (default: the training subjects in the model card)",
    )
    p.add_argument("--reference-participant", type=_label, help="head for histmatch and Nyul")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS + ORACLES,
        default=list(METHODS),
        help="oracle-curve and oracle-landmarks (bounds, not methods: each version "
        "histogram-matched to its own clean head, or mapped to it through 16 head quantiles) "
        "run only when named",
    )
    p.add_argument("--resolution", type=int, choices=(1, 2), default=1, help="when preprocessing")
    p.add_argument("--work", type=Path, help="work folder when preprocessing (default: temp)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write quality.md/.csv here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench_quality.py: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
