"""``disarm-import``: bring your own DISARM, a checkpoint of the reference implementation.

Converts a ``.pth`` file written by the reference code (github.com/luca2245/DISARM_Harmonization,
``DISARM.save``) into a model directory that ``disarm-harmonize --model`` and
``disarm-pipeline --model`` read (see :mod:`models.import_reference`). The checkpoint is read
with ``torch.load(weights_only=True)``: tensors only, never pickled code.

Exit codes: 0 done, 64 usage error (bad option, model directory exists without --force),
66 checkpoint not found, 1 the checkpoint does not map onto the reference architecture (an
unknown or missing key, a wrong shape: one line names it) or is not a checkpoint of tensors,
73 the model directory cannot be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.parser import UsageParser
from pipeline.exitcodes import ExitCode, UserError


def build_parser() -> argparse.ArgumentParser:
    p = UsageParser(
        prog="disarm-import",
        description="Convert a checkpoint of the reference DISARM code (.pth of DISARM.save) "
        "into a model directory for disarm-harmonize and disarm-pipeline.",
    )
    p.add_argument("checkpoint", type=Path, help="reference checkpoint (.pth, e.g. last.pth)")
    p.add_argument("model_dir", type=Path, help="model directory to write")
    p.add_argument(
        "--scanners",
        nargs="+",
        default=None,
        metavar="NAME",
        help="training scanner names in label order (the reference's trainA, trainB, ...); "
        "default: scanner-1 .. scanner-N, N read from the weights",
    )
    p.add_argument("--name", default=None, help="model name (default: the checkpoint's stem)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    return p


def run(args: argparse.Namespace) -> Path:
    from models.import_reference import import_reference

    if not args.checkpoint.is_file():
        raise UserError(f"checkpoint not found: {args.checkpoint}", ExitCode.NO_INPUT)
    if args.model_dir.exists() and not args.force:
        raise UserError(f"{args.model_dir} exists (--force replaces it)", ExitCode.USAGE)
    try:
        return import_reference(args.checkpoint, args.model_dir, args.scanners, args.name)
    except ValueError as exc:
        raise UserError(f"{args.checkpoint}: {exc}", ExitCode.FAILURE) from None
    except OSError as exc:
        raise UserError(f"cannot write {args.model_dir}: {exc}", ExitCode.CANT_CREATE) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = run(args)
    except UserError as err:
        print(f"disarm-import: error: {err}", file=sys.stderr)
        return int(err.code)
    print(f"disarm-import: wrote {out} (E_b, E_s, G imported; discriminators not imported)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
