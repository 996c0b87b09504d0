"""Argument parser of ``disarm-pipeline``, grouped as in fMRIPrep and MRIQC."""

from __future__ import annotations

import argparse
from typing import NoReturn

from pipeline import __version__
from pipeline.exitcodes import ExitCode

NIPYPE_PLUGINS = (
    "Linear",
    "MultiProc",
    "LegacyMultiProc",
    "SLURM",
    "SLURMGraph",
    "SGE",
    "SGEGraph",
    "PBS",
    "PBSGraph",
    "LSF",
    "Condor",
    "DAGMan",
    "OAR",
    "IPython",
)


class UsageParser(argparse.ArgumentParser):
    """argparse that exits with EX_USAGE (64) on a usage error, as the BIDS-Apps draft asks
    (every command of the project: disarm-pipeline, disarm-train, disarm-harmonize)."""

    def error(self, message: str) -> NoReturn:
        # one line, as every other user mistake (``--help`` shows the usage)
        self.exit(int(ExitCode.USAGE), f"{self.prog}: error: {message}\n")


def _label(value: str) -> str:
    # "sub-01" and "01" are the same participant; BIDS labels are alphanumeric.
    label = value.removeprefix("sub-").removeprefix("ses-")
    if not label.isalnum():
        raise argparse.ArgumentTypeError(f"invalid BIDS label {value!r} (letters and digits only)")
    return label


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _harmonize(value: str) -> str:
    if value in ("scanner-free", "none") or (value.startswith("target:") and len(value) > 7):
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r}: expected scanner-free, target:<scanner name> or none"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = UsageParser(
        prog="disarm-pipeline",
        description=(
            "DISARM harmonization of T1-weighted MRI: reorientation, bias-field correction, "
            "affine registration to MNI152, removal of scanner effects by the DISARM network. "
            "A BIDS-App: bids_dir out_dir {participant,group}."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", help="the root of the input BIDS dataset (never written to)")
    parser.add_argument("output_dir", help="where the BIDS-Derivatives dataset is written")
    # Checked by hand (not `choices`) so that a wrong level gets exit code 17, not 64.
    parser.add_argument(
        "analysis_level", help="participant (per-image processing) or group (statistics)"
    )
    parser.add_argument("--version", action="version", version=f"disarm-pipeline {__version__}")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="count",
        default=0,
        help="more log output (-v: Nipype's own node log too; -vv: debug)",
    )
    talk.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only a line per image done, and errors (default: every node started/finished)",
    )

    sel = parser.add_argument_group("Selecting the inputs")
    sel.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        type=_label,
        default=[],
        metavar="LABEL",
        help="participants to process, with or without the sub- prefix (default: all)",
    )
    sel.add_argument(
        "--session-label",
        nargs="+",
        type=_label,
        default=[],
        metavar="LABEL",
        help="sessions to process, with or without the ses- prefix (default: all)",
    )
    sel.add_argument(
        "--bids-filter-file",
        metavar="FILE",
        help='JSON file of pybids entity filters for the T1w query, e.g. {"t1w": {"acquisition": '
        '"mprage"}}',
    )

    proc = parser.add_argument_group("Processing")
    proc.add_argument(
        "--backend",
        choices=("auto", "fsl", "ants"),
        default="auto",
        help="preprocessing tools: fsl (the reference: fslreorient2std, FAST, FLIRT) or ants "
        "(antspyx, no FSL needed); auto picks fsl when fast and flirt are on PATH",
    )
    proc.add_argument(
        "--output-resolution",
        type=int,
        choices=(1, 2),
        default=1,
        help="voxel size (mm) of the MNI template grid; 2 is for quick looks and tests only",
    )
    proc.add_argument(
        "--harmonize",
        type=_harmonize,
        default="scanner-free",
        metavar="{scanner-free,target:NAME,none}",
        help="harmonized output: to the scanner-free space, as if acquired on training scanner "
        "NAME, or none (preprocessing only)",
    )
    proc.add_argument(
        "--model", dest="model_dir", metavar="DIR", help="trained DISARM model (default: shipped)"
    )
    proc.add_argument(
        "--output-spaces",
        nargs="+",
        choices=("template", "T1w"),
        default=["template"],
        help="spaces of the harmonized image: the MNI template and/or the input's native "
        "T1w space",
    )
    proc.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the DISARM network runs",
    )
    proc.add_argument("--seed", type=int, default=0, help="random seed, recorded in the sidecars")
    proc.add_argument(
        "--no-reports", dest="reports", action="store_false", help="skip HTML reports"
    )

    group = parser.add_argument_group("Group level")
    group.add_argument(
        "--scanner-field",
        default="ManufacturersModelName",
        metavar="FIELD",
        help="sidecar field that names the scanner of each image",
    )

    perf = parser.add_argument_group("Resources and execution")
    perf.add_argument(
        "-w", "--work-dir", metavar="DIR", default="work", help="Nipype working directory (cache)"
    )
    perf.add_argument(
        "--nprocs",
        "--n-cpus",
        type=_positive_int,
        default=None,
        help="processes run at once (default: all cores)",
    )
    perf.add_argument(
        "--omp-nthreads",
        type=_positive_int,
        default=None,
        help="threads per process (ITK, torch; default: min(8, nprocs))",
    )
    perf.add_argument("--mem-gb", type=float, default=None, help="memory available, in GB")
    perf.add_argument(
        "--plugin",
        choices=NIPYPE_PLUGINS,
        default="MultiProc",
        help="Nipype execution plugin (SLURM, SGE... submit one job per node)",
    )
    perf.add_argument(
        "--plugin-args",
        metavar="JSON|FILE",
        help='plugin arguments as JSON text or a JSON file, e.g. {"sbatch_args": "-p short"}',
    )
    perf.add_argument("--stop-on-first-crash", action="store_true", help="stop at the first error")
    perf.add_argument(
        "--clean-workdir", action="store_true", help="remove the work directory after success"
    )
    return parser
