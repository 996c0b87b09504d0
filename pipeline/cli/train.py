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
import json
import sys
from collections import Counter
from pathlib import Path

from pipeline.cli.parser import UsageParser
from pipeline.exitcodes import ExitCode, UserError

PREPROC_GLOB = "*_space-*_desc-preproc_T1w.nii*"


def build_parser() -> argparse.ArgumentParser:
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
        "--config", choices=["fast", "curves", "window-curves", "reference"], default="fast"
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


def _subject(path: Path) -> str:
    for part in path.name.split("_"):
        if part.startswith("sub-"):
            return part
    return ""


def _read_participants(path: Path, column: str) -> dict[str, str]:
    import pandas as pd

    if not path.is_file():
        raise UserError(f"participants file not found: {path}", ExitCode.NO_INPUT)
    df = pd.read_csv(path, sep="\t", dtype=str)
    if "participant_id" not in df or column not in df:
        raise UserError(
            f"{path} needs columns participant_id and {column!r}; has {', '.join(df.columns)}",
            ExitCode.INVALID_BIDS,
        )
    return {str(r.participant_id): str(r[column]) for _, r in df.iterrows() if r.notna()[column]}


def _ages(args) -> dict[str, float]:
    """Participant ages from participants.tsv (``--age-column``), for age-matched pairs."""
    path = args.participants
    if path is None and args.input.is_dir():
        path = args.input / "participants.tsv"
    if path is None:
        raise UserError("--age-window with a TSV input needs --participants", ExitCode.USAGE)
    raw = _read_participants(path, args.age_column)
    try:
        return {k: float(v) for k, v in raw.items()}
    except ValueError as exc:
        raise UserError(
            f"{path}: column {args.age_column!r}: {exc}", ExitCode.INVALID_BIDS
        ) from None


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


def _space(path: Path) -> str | None:
    """The ``space-`` entity of a derivative's file name."""
    return next((p[6:] for p in path.name.split("_") if p.startswith("space-")), None)


def _preprocessing(first: Path) -> dict:
    """Template space and preprocessing of the training images, from the first image's name
    (``space-`` entity) and sidecar (``Preprocessing``), so that the model card says which
    space and which preprocessing its inputs must come from."""
    space = _space(first)
    sidecar = first.with_name(first.name.split(".nii")[0] + ".json")
    try:
        prep = json.loads(sidecar.read_text()).get("Preprocessing") or {}
    except (OSError, ValueError):
        prep = {}
    keep = ("Backend", "Template", "TemplateSource", "Steps")
    return {"template_space": space, "preprocessing": {k: prep[k] for k in keep if k in prep}}


def _brain_mask(spec: str, first: Path) -> str | None:
    """The brain mask for the simulator: a file, none, or the template mask of ``first``'s
    space (``space-`` entity) at its voxel size; ``None`` when it cannot be told."""
    if spec == "none":
        return None
    if spec != "auto":
        if not Path(spec).is_file():
            raise UserError(f"brain mask not found: {spec}", ExitCode.NO_INPUT)
        return str(Path(spec).resolve())
    import nibabel as nib

    from pipeline.templates import FSL_SPACE, NILEARN_SPACE, TemplateError, get_template

    space = _space(first)
    backend = {NILEARN_SPACE: "ants", FSL_SPACE: "fsl"}.get(space or "")
    res = round(float(nib.load(first).header.get_zooms()[0]))
    if backend is None or res not in (1, 2):
        return None
    try:
        mask = get_template(backend, res).mask
    except TemplateError:
        return None
    same_grid = nib.load(mask).shape[:3] == nib.load(first).shape[:3]
    return str(mask) if same_grid else None


def collect_bids(args) -> list[tuple[Path, str]]:
    """(image, scanner) pairs of a derivatives folder (scanner '' under --simulate)."""
    files = sorted(p for p in args.input.rglob(PREPROC_GLOB) if p.name.endswith((".nii", ".gz")))
    if not files:
        raise UserError(
            f"no {PREPROC_GLOB} images under {args.input}", ExitCode.NO_INPUT
        )  # fmt: skip
    by_subject = None
    if args.scanner_column and not args.simulate_scanners:
        by_subject = _read_participants(
            args.participants or args.input / "participants.tsv", args.scanner_column
        )
    out = []
    for f in files:
        if args.simulate_scanners:
            out.append((f, ""))
            continue
        if by_subject is not None:
            sub = _subject(f)
            if sub not in by_subject:
                raise UserError(
                    f"{f.name}: {sub or 'no subject'} has no {args.scanner_column!r} value",
                    ExitCode.INVALID_BIDS,
                )
            out.append((f, by_subject[sub]))
            continue
        sidecar = f.with_name(f.name.split(".nii")[0] + ".json")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(
                f"cannot read sidecar {sidecar}: {exc}", ExitCode.INVALID_BIDS
            ) from None
        if not meta.get(args.scanner_field):
            raise UserError(
                f"{sidecar.name} has no {args.scanner_field!r} field (use --scanner-field, "
                "--scanner-column or --simulate-scanners)",
                ExitCode.INVALID_BIDS,
            )
        out.append((f, str(meta[args.scanner_field])))
    return out


def collect_tsv(args) -> list[tuple[Path, str]]:
    import pandas as pd

    try:
        df = pd.read_csv(args.input, sep="\t", dtype=str)
    except Exception as exc:
        raise UserError(f"cannot read {args.input}: {exc}", ExitCode.NO_INPUT) from None
    need = ["path"] if args.simulate_scanners else ["path", "scanner"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise UserError(
            f"{args.input} lacks column(s) {', '.join(missing)}", ExitCode.INVALID_BIDS
        )  # fmt: skip
    out = []
    for _, row in df.iterrows():
        p = Path(row["path"])
        p = p if p.is_absolute() else args.input.parent / p
        if not p.is_file():
            raise UserError(f"image listed in {args.input.name} not found: {p}", ExitCode.NO_INPUT)
        out.append((p, "" if args.simulate_scanners else str(row["scanner"])))
    if not out:
        raise UserError(f"{args.input} lists no image", ExitCode.NO_INPUT)
    return out


def _check_images(pairs: list[tuple[Path, str]]) -> None:
    import nibabel as nib

    for p, _ in pairs:
        try:
            shape = nib.load(str(p)).shape
        except Exception as exc:
            raise UserError(f"cannot read image {p}: {exc}", ExitCode.INVALID_BIDS) from None
        if len(shape) != 3:
            raise UserError(f"{p.name} is not 3D (shape {shape})", ExitCode.INVALID_BIDS)


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
        pairs = [pr for pr in pairs if _subject(pr[0]) in keep]
    if args.exclude_participant_label:
        drop = {s if s.startswith("sub-") else f"sub-{s}" for s in args.exclude_participant_label}
        pairs = [pr for pr in pairs if _subject(pr[0]) not in drop]
    if not pairs:
        raise UserError("the participant selection left no image", ExitCode.NO_INPUT)
    _check_images(pairs)

    summary = {"source": str(args.input.resolve()), "n_source_images": len(pairs)}
    if args.simulate_scanners:
        try:
            profiles = resolve_profiles(args.simulate_scanners)
            mask = _brain_mask(args.brain_mask, pairs[0][0])
            images = build_simulated(
                [str(p) for p, _ in pairs], profiles, args.simulate_assign, mask
            )
        except ValueError as exc:
            raise UserError(str(exc), ExitCode.USAGE) from None
        scanners = [p.name for p in profiles]
        summary.update(simulated=str(args.simulate_scanners), assign=args.simulate_assign)
        summary["brain_mask"] = mask
    else:
        ages = _ages(args) if args.age_window is not None else {}
        images = [
            TrainImage(str(p), s, None, _subject(p), age=ages.get(_subject(p))) for p, s in pairs
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
    summary["subjects"] = sorted({_subject(p) for p, _ in pairs if _subject(p)})
    summary.update(_preprocessing(pairs[0][0]))

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
