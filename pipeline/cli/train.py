"""``disarm-train``: train a DISARM model on preprocessed T1w images.

Inputs (``input``):

* a BIDS-Derivatives folder of disarm-pipeline outputs: every
  ``*_space-*_desc-preproc_T1w.nii.gz`` with its JSON sidecar; the scanner label is the
  sidecar field ``--scanner-field`` (default ``ManufacturersModelName``), or the column
  ``--scanner-column`` of a participants.tsv (``--participants``, default
  ``INPUT/participants.tsv``);
* or a TSV file with columns ``path`` (absolute or relative to the TSV) and ``scanner``.

``--simulate-scanners default|PROFILES.json`` ignores the images' own scanners and makes K
synthetic scanner domains with :mod:`models.simulate` (every image in every domain, or
``--simulate-assign split``: image i in domain i mod K). This is how the default model is
trained. Under ``torchrun`` (``WORLD_SIZE`` > 1) the processes train data-parallel.

Exit codes: 0 done, 64 usage error, 66 input missing or holding no usable image, 16 an input
image or sidecar is unusable, 73 output folder cannot be written, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from pipeline.cli.train_inputs import (
    check_images,
    collect_bids,
    collect_tsv,
    participant_ages,
    preprocessing_of,
    simulator_brain_mask,
    subject_of,
)
from pipeline.cli.train_parser import build_parser
from pipeline.exitcodes import ExitCode, UserError

__all__ = ["build_parser", "main", "run"]


def _loss_weights(items: list[str]) -> dict[str, float]:
    """``--loss-weight NAME=VALUE`` items -> overrides of :class:`models.losses.LossWeights`."""
    from dataclasses import fields

    from models.losses import LossWeights

    known = {f.name for f in fields(LossWeights)}
    out: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in known:
            raise UserError(
                f"--loss-weight: unknown loss {name!r}; known: {', '.join(sorted(known))}",
                ExitCode.USAGE,
            )
        try:
            out[name] = float(value)
        except ValueError:
            raise UserError(f"--loss-weight {item}: not NAME=NUMBER", ExitCode.USAGE) from None
    return out


def run(args: argparse.Namespace) -> Path:
    import torch

    from models.checkpoint import CheckpointError
    from models.data import TrainImage, build_simulated
    from models.devices import DeviceError, resolve_device
    from models.simulate import resolve_profiles
    from models.train import TrainingError, TrainOptions, train

    if not args.input.exists():
        raise UserError(f"input not found: {args.input}", ExitCode.NO_INPUT)
    for name in ("steps", "checkpoint_every", "keep_checkpoints", "code_images", "code_windows"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1", ExitCode.USAGE)
    if args.patch_size is not None and args.patch_size not in range(0, 1025):
        raise UserError("--patch-size must be between 0 and 1024", ExitCode.USAGE)
    if args.patch_size and args.patch_size < 16:
        raise UserError("--patch-size must be 0 (whole volumes) or >= 16", ExitCode.USAGE)
    if not 0 <= args.elastic_p <= 1:
        raise UserError("--elastic-p must be within [0, 1]", ExitCode.USAGE)
    if args.nthreads:
        torch.set_num_threads(max(1, args.nthreads))
    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        raise UserError(str(exc), ExitCode.USAGE) from None

    pairs = collect_tsv(args) if args.input.is_file() else collect_bids(args)
    if args.participant_label:
        keep = {s if s.startswith("sub-") else f"sub-{s}" for s in args.participant_label}
        pairs = [pr for pr in pairs if subject_of(pr[0]) in keep]
    if args.exclude_participant_label:
        drop = {s if s.startswith("sub-") else f"sub-{s}" for s in args.exclude_participant_label}
        pairs = [pr for pr in pairs if subject_of(pr[0]) not in drop]
    if not pairs:
        raise UserError("the participant selection left no image", ExitCode.NO_INPUT)
    check_images(pairs)

    summary = {"source": str(args.input.resolve()), "n_source_images": len(pairs)}
    if args.simulate_scanners:
        try:
            profiles = resolve_profiles(args.simulate_scanners)
            mask = simulator_brain_mask(args.brain_mask, pairs[0][0])
            images = build_simulated(
                [str(p) for p, _ in pairs], profiles, args.simulate_assign, mask
            )
        except ValueError as exc:
            raise UserError(str(exc), ExitCode.USAGE) from None
        scanners = [p.name for p in profiles]
        summary.update(simulated=str(args.simulate_scanners), assign=args.simulate_assign)
        summary["brain_mask"] = mask
    else:
        ages = participant_ages(args) if args.age_window is not None else {}
        images = [
            TrainImage(str(p), s, None, subject_of(p), age=ages.get(subject_of(p)))
            for p, s in pairs
        ]
        scanners = sorted({s for _, s in pairs})
        src = f"participants column {args.scanner_column}" if args.scanner_column else (
            f"sidecar field {args.scanner_field}")  # fmt: skip
        summary["scanner_label"] = src if args.input.is_dir() else "TSV column scanner"
        if len(scanners) < 2:
            raise UserError(
                f"training needs >= 2 scanners, found {scanners} (or use --simulate-scanners)",
                ExitCode.INVALID_BIDS,
            )
    summary["images_per_scanner"] = dict(Counter(im.scanner for im in images))
    summary["subjects"] = sorted({subject_of(p) for p, _ in pairs if subject_of(p)})
    summary.update(preprocessing_of(pairs[0][0]))

    patch = args.patch_size
    if patch is None:
        patch = 0 if device.type == "cuda" else 96
    opts = TrainOptions(
        out_dir=args.out,
        config=args.config,
        steps=args.steps,
        patch_size=patch or None,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        elastic_p=args.elastic_p,
        content_d_every=args.content_d_every,
        code_images=args.code_images,
        code_windows=args.code_windows,
        randomize=not args.no_randomize,
        paired=not args.no_travelling_heads,
        age_window=args.age_window,
        progress=not args.no_progress,
        name=args.name,
        loss_weights=_loss_weights(args.loss_weight),
    )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {args.out}: {exc}", ExitCode.CANT_CREATE) from None
    try:
        return train(images, scanners, opts, resume=args.resume, data_summary=summary)
    except (TrainingError, CheckpointError) as exc:
        raise UserError(str(exc), ExitCode.USAGE) from None
    except ValueError as exc:  # data problems found while sampling (e.g. mixed grids)
        raise UserError(str(exc), ExitCode.INVALID_BIDS) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f"disarm-train: error: {err}", file=sys.stderr)
        return int(err.code)
    except KeyboardInterrupt:
        print("disarm-train: interrupted; resume with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
