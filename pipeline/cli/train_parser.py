"""Argument parser of ``disarm-train`` (:mod:`pipeline.cli.train`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli.parser import UsageParser

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``disarm-train`` parser (usage errors exit 64)."""
    p = UsageParser(
        prog="disarm-train",
        description="Train a DISARM harmonization model on preprocessed T1w images.",
    )
    p.add_argument("input", type=Path, help="BIDS-Derivatives folder or TSV (path, scanner)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model in OUT/model)")
    g = p.add_argument_group("scanner labels")
    g.add_argument(
        "--scanner-field",
        default="ManufacturersModelName",
        help="sidecar field naming the scanner (default: %(default)s)",
    )
    g.add_argument("--scanner-column", default=None, help="participants.tsv column instead")
    g.add_argument("--participants", type=Path, default=None, help="participants.tsv to use")
    g.add_argument("--participant-label", nargs="+", default=None, help="use only these subjects")
    g.add_argument(
        "--exclude-participant-label", nargs="+", default=None, help="leave these subjects out"
    )
    g.add_argument(
        "--simulate-scanners",
        default=None,
        metavar="default|PROFILES.json",
        help="make synthetic scanner domains with the simulator (held-out profiles skipped)",
    )
    g.add_argument("--simulate-assign", choices=["all", "split"], default="all")
    g.add_argument(
        "--brain-mask",
        default="auto",
        metavar="auto|none|FILE",
        help="brain mask on the images' grid, for the simulator's tissue contrast (auto: the "
        "template mask of the images' space)",
    )
    g.add_argument(
        "--no-randomize",
        action="store_true",
        help="simulated scanners: use each named profile as it is (no draw from its family)",
    )
    g.add_argument(
        "--no-travelling-heads",
        action="store_true",
        help="simulated scanners: unpaired samples only, no travelling-head losses",
    )
    g.add_argument(
        "--age-window",
        type=float,
        default=None,
        metavar="YEARS",
        help="real scanners: pair images of participants within YEARS of age "
        "(participants.tsv column --age-column)",
    )
    g.add_argument("--age-column", default="age", help="participants.tsv age column")
    g = p.add_argument_group("model and optimisation")
    g.add_argument(
        "--config",
        choices=[
            "fast",
            "curves",
            "window-curves",
            "head-curves",
            "landmark-curves",
            "restoring-curves",
            "reference",
        ],
        default="fast",
    )
    g.add_argument("--name", default="disarm", help="model name written to the model card")
    g.add_argument("--steps", type=int, default=3000)
    g.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="cubic patch side in voxels; 0 = whole volumes (default: 0 on CUDA, 96 on CPU)",
    )
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--elastic-p", type=float, default=0.7, help="elastic augmentation prob.")
    g.add_argument(
        "--content-d-every",
        type=int,
        default=2,
        help="D_b alone on N-1 of every N batches (reference: 2); 1 = D_b on every batch",
    )
    g.add_argument(
        "--loss-weight",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one loss weight (repeatable), e.g. anchor=20; names as in the card",
    )
    g.add_argument("--amp", action="store_true", help="bf16 autocast")
    g = p.add_argument_group("execution")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--nthreads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--checkpoint-every", type=int, default=500)
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--code-images", type=int, default=4, help="images per scanner for codes")
    g.add_argument(
        "--code-windows", type=int, default=8, help="training-size windows per image for codes"
    )
    g.add_argument("--resume", action="store_true", help="continue from OUT/latest.json")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p
