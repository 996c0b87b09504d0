"""``disarm-harmonize``: harmonize one NIfTI image with a trained DISARM model.

Writes the harmonized image and a JSON sidecar beside it (both written to temporary files in
the output folder, then renamed into place). Exit codes: 0 done, 64 usage error (bad option,
unknown target scanner), 66 input image or model missing/unreadable, 16 input image unusable
(not 3D...), 73 output cannot be written, 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.atomic import atomic_path, write_json_atomic
from pipeline.bids import sidecar_of
from pipeline.cli.parser import UsageParser
from pipeline.exitcodes import ExitCode, UserError


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="disarm-harmonize",
        description="Harmonize one T1w NIfTI image with DISARM (image on the model's template "
        "grid, e.g. a desc-preproc output of disarm-pipeline).",
    )
    p.add_argument("in_file", type=Path, help="input 3D NIfTI image")
    p.add_argument("out_file", type=Path, help="output NIfTI (.nii or .nii.gz); a .json beside")
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory from disarm-train (default: the shipped model)",
    )
    g.add_argument(
        "--mode",
        choices=["scanner-free", "target", "reference"],
        default="scanner-free",
        help="default: %(default)s",
    )
    g.add_argument(
        "--target",
        default=None,
        help="training scanner name (mode target; optional label in mode reference)",
    )
    g.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="3D image whose scanner to imitate (mode reference)",
    )
    g.add_argument(
        "--space",
        default=None,
        help="the input's template space (default: its space- entity); an image on another "
        "MNI grid than the model's is harmonized on the model's grid and resampled back",
    )
    g.add_argument(
        "--intensity-scale",
        choices=["fixed", "input"],
        default="fixed",
        help="output scale: fixed 0-1000 range, or the input's robust range",
    )
    g = p.add_argument_group("execution")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--seed", type=int, default=0, help="random seed (recorded)")
    g.add_argument("--nthreads", type=int, default=None, help="torch CPU threads")
    return p  # fmt: skip


def _load(path: Path, what: str):
    import nibabel as nib

    if not path.is_file():
        raise UserError(f"{what} not found: {path}", ExitCode.NO_INPUT)
    try:
        img = nib.load(str(path))
        img.get_fdata(dtype="float32")  # reads the data: catches truncated files here
    except Exception as exc:  # nibabel raises many types for bad files
        raise UserError(f"cannot read {what} {path}: {exc}", ExitCode.NO_INPUT) from None
    return img


def run(args: argparse.Namespace) -> Path:
    import nibabel as nib
    import torch

    from models.checkpoint import CheckpointError
    from models.harmonize import HarmonizeError, Harmonizer
    from pipeline.cli.train_inputs import preprocessing_of
    from pipeline.provenance import TORCH_THREADS_NOTE

    if not str(args.out_file).endswith((".nii", ".nii.gz")):
        raise UserError("out_file must end in .nii or .nii.gz", ExitCode.USAGE)
    if args.mode == "target" and not args.target:
        raise UserError("--mode target needs --target NAME", ExitCode.USAGE)
    if args.mode == "reference" and args.reference is None:
        raise UserError("--mode reference needs --reference IMAGE", ExitCode.USAGE)
    if args.mode == "scanner-free" and (args.target or args.reference):
        raise UserError("--mode scanner-free takes no --target or --reference", ExitCode.USAGE)
    if args.nthreads:
        torch.set_num_threads(max(1, args.nthreads))
    img = _load(args.in_file, "input image")
    ref = _load(args.reference, "reference image") if args.reference else None
    try:
        harmonizer = Harmonizer.from_dir(args.model, device=args.device)
    except CheckpointError as exc:
        raise UserError(str(exc), ExitCode.NO_INPUT) from None
    except HarmonizeError as exc:
        raise UserError(str(exc), ExitCode.USAGE) from None
    if args.target is not None and args.target not in harmonizer.scanners:
        raise UserError(
            f"unknown target scanner {args.target!r}; known: {', '.join(harmonizer.scanners)}",
            ExitCode.USAGE,
        )
    if args.mode == "target" and args.target not in (harmonizer.card.get("scanner_codes") or {}):
        raise UserError(
            f"the model stores no mean scanner code for {args.target!r} (an imported reference "
            "model): use --mode reference --reference IMAGE",
            ExitCode.USAGE,
        )
    domain = preprocessing_of(args.in_file)  # space- entity, sidecar's Preprocessing
    try:
        out, meta = harmonizer.harmonize(
            img, mode=args.mode, target=args.target, reference=ref, seed=args.seed,
            intensity_scale=args.intensity_scale,
            space=args.space or domain["template_space"], preprocessing=domain["preprocessing"],
        )  # fmt: skip
    except HarmonizeError as exc:
        raise UserError(str(exc), ExitCode.INVALID_BIDS) from None
    meta["Sources"] = [str(args.in_file)]
    meta["NumThreads"] = torch.get_num_threads()  # the image's last bits depend on it
    meta["NumThreadsNote"] = TORCH_THREADS_NOTE
    for warning in meta.get("warnings", []) + meta.get("ModelDomainWarnings", []):
        print(f"disarm-harmonize: warning: {warning}", file=sys.stderr)

    out_file = args.out_file
    sidecar = sidecar_of(out_file)
    try:
        suffix = ".nii.gz" if out_file.name.endswith(".gz") else ".nii"
        with atomic_path(out_file, suffix=suffix) as tmp:
            nib.save(out, str(tmp))
        write_json_atomic(sidecar, meta, sort_keys=False)
    except OSError as exc:
        raise UserError(f"cannot write {out_file}: {exc}", ExitCode.CANT_CREATE) from None
    return out_file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except UserError as err:
        print(f"disarm-harmonize: error: {err}", file=sys.stderr)
        return int(err.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
