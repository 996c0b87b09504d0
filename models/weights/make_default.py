"""Build the shipped default model (``default/``) from run ``train-r1``'s final model.

    python models/weights/make_default.py [--src models/weights/runs/train-r1/model]
        [--dest models/weights/default]

``train-r1`` was trained as ``restoring-curves``: the landmark curves of ``landmark-curves``
plus R, a small restorer of the scanner-free output. Measured on the evaluation heads, R
smooths rather than restores (docs/training.md), so the default is the same weights with R's
tensors (``gen.restorer.*``) left out and the card's configuration set to
``landmark-curves`` (``restore_channels`` 0); nothing else changes. The card gains a
``description``, ``limitations`` and ``derived_from`` (the source card's name and weights'
sha256) and keeps everything disarm-train recorded (training data, grid, preprocessing,
scanner codes). Deterministic: the same source gives the same ``model.safetensors``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.checkpoint import load_weights, read_card, write_model_dir

HERE = Path(__file__).resolve().parent

DESCRIPTION = (
    "Default DISARM model of disarm-pipeline, landmark-curves configuration: for each head one "
    "monotone intensity curve with its knots at the head's own 16 quantiles (a learned Nyul "
    "standardization, read by a small network from the quantiles, the scanner label and code), "
    "and a gain per 64^3 window blended into a smooth field (what is left of a bias field); the "
    "curve never blurs or moves anatomy. Trained (run train-r1, 1500 iterations of 64^3 "
    "patches, 1 CPU thread, 62 min) on 36 real IXI-HH heads (Philips Intera 3T, 2 mm, 8-bit; "
    "CC BY-SA 3.0), preprocessed by disarm-pipeline's ants backend onto the 1 mm ICBM 2009a "
    "symmetric template grid (MNI152NLin2009aSym), each acquired on randomized SIMULATED "
    "scanners (tissue-based sequence simulator; four named training scanners for target mode) "
    "with travelling-head losses; no real multi-scanner data was used. Trained with a restorer "
    "of the scanner-free output, left out of this model (it smoothed rather than restored)."
)

LIMITATIONS = (
    "On four simulated scanner families it never saw and 24 heads it never saw "
    "(benchmarks/bench_quality.py, scanner-free) it makes the versions of one head more alike "
    "than every baseline (pair SSIM {pair_ssim:.3f}; z-score 0.761, Nyul 0.738) and keeps "
    "each head's anatomy better (SSIM to the clean head {ssim_clean:.3f}; at most 0.809) and "
    "its grey-matter fraction (r with the clean head {gm_r:.3f}; Nyul 0.686), but a "
    "segmentation still sees the scanner (GM fraction CoV across one head's versions "
    "{gm_cov:.3f}, unharmonized 0.149, Nyul 0.011) and the age effect is weakened "
    "(GM~age r {gm_age:.3f}, clean heads -0.764), and the scanner stays recognisable from "
    "the histograms (accuracy "
    "{scanner_acc:.2f}, chance 0.25): a curve cannot undo blur and noise. Target mode is weak. "
    "One real scanner only: retrain on real multi-scanner data before relying on it (see "
    "benchmarks/README.md and docs/training.md)."
)

#: bench_quality.py, 24 evaluation heads, unseen families, scanner-free (benchmarks/README.md)
MEASURED = {
    "pair_ssim": 0.787,
    "ssim_clean": 0.854,
    "gm_r": 0.749,
    "gm_cov": 0.149,
    "gm_age": -0.502,
    "scanner_acc": 0.89,
}


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=HERE / "runs" / "train-r1" / "model")
    p.add_argument("--dest", type=Path, default=HERE / "default")
    args = p.parse_args(argv)
    card = read_card(args.src)
    weights = {
        k: v for k, v in load_weights(args.src, card).items() if not k.startswith("gen.restorer.")
    }
    source = {"name": card["name"], "weights_sha256": card["weights_sha256"]}
    card = dict(
        card,
        name="disarm-default-ixi-landmarks",
        config=dict(card["config"], name="landmark-curves", restore_channels=0),
        derived_from=dict(source, change="restorer (gen.restorer.*) left out"),
        description=DESCRIPTION,
        limitations=LIMITATIONS.format(**MEASURED),
    )
    return write_model_dir(args.dest, weights, card)


if __name__ == "__main__":
    print(main())
