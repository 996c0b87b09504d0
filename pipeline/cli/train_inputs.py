"""Training inputs of ``disarm-train``: the (image, scanner) list of a derivatives folder or a
TSV, participants.tsv columns (scanner, age), the simulator's brain mask and the template space
and preprocessing recorded in the model card."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.bids import sidecar_of
from pipeline.exitcodes import ExitCode, UserError

__all__ = [
    "PREPROC_GLOB",
    "check_images",
    "collect_bids",
    "collect_tsv",
    "participant_ages",
    "preproc_images",
    "preprocessing_of",
    "read_participants",
    "simulator_brain_mask",
    "space_of",
    "subject_of",
]

#: The training images of a derivatives folder, as the error messages name them (they are
#: found by a pybids query, :func:`preproc_images`).
PREPROC_GLOB = "*_space-*_desc-preproc_T1w.nii*"


def subject_of(path: Path) -> str:
    """The ``sub-`` entity of a file name (``""`` when it has none)."""
    for part in path.name.split("_"):
        if part.startswith("sub-"):
            return part
    return ""


def read_participants(path: Path, column: str) -> dict[str, str]:
    """participant_id -> ``column`` of a participants.tsv (participants without a value left
    out)."""
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


def participant_ages(args: argparse.Namespace) -> dict[str, float]:
    """Participant ages from participants.tsv (``--age-column``), for age-matched pairs."""
    path = args.participants
    if path is None and args.input.is_dir():
        path = args.input / "participants.tsv"
    if path is None:
        raise UserError("--age-window with a TSV input needs --participants", ExitCode.USAGE)
    raw = read_participants(path, args.age_column)
    try:
        return {k: float(v) for k, v in raw.items()}
    except ValueError as exc:
        raise UserError(
            f"{path}: column {args.age_column!r}: {exc}", ExitCode.INVALID_BIDS
        ) from None


def space_of(path: Path) -> str | None:
    """The ``space-`` entity of a derivative's file name."""
    return next((p[6:] for p in path.name.split("_") if p.startswith("space-")), None)


def preprocessing_of(first: Path) -> dict:
    """Template space and preprocessing of the training images, from the first image's name
    (``space-`` entity) and sidecar (``Preprocessing``), so that the model card says which
    space and which preprocessing its inputs must come from."""
    space = space_of(first)
    sidecar = sidecar_of(first)
    try:
        prep = json.loads(sidecar.read_text()).get("Preprocessing") or {}
    except (OSError, ValueError):
        prep = {}
    from models.domain import bias_correction

    keep = ("Backend", "BiasCorrection", "Template", "TemplateSource", "Steps")
    kept = {k: prep[k] for k in keep if k in prep}
    bias = bias_correction(kept)  # sidecars written before BiasCorrection: the backend's
    if bias:
        kept["BiasCorrection"] = bias
    return {"template_space": space, "preprocessing": kept}


def simulator_brain_mask(spec: str, first: Path) -> str | None:
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

    space = space_of(first)
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


def preproc_images(root: Path) -> list[Path]:
    """The ``desc-preproc`` T1w images (with a ``space``) of a derivatives folder, sorted.

    A pybids query (:func:`pipeline.bids.load_derivatives`) over the whole folder: images of
    pipeline outputs gathered in subfolders are found; pybids skips ``derivatives/``,
    ``code/``, ``models/``, ``sourcedata/``, ``stimuli/`` and hidden folders.
    """
    from bids.layout import Query

    from pipeline.bids import load_derivatives

    layout = load_derivatives(root, whole_tree=True)
    found = layout.get(
        suffix="T1w", desc="preproc", space=Query.REQUIRED, extension=[".nii", ".nii.gz"]
    )
    return sorted(Path(root) / f.relpath for f in found)


def collect_bids(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """(image, scanner) pairs of a derivatives folder (scanner '' under --simulate)."""
    files = preproc_images(args.input)
    if not files:
        hint = ""
        if (args.input / "derivatives").is_dir():
            hint = " (derivatives/ inside it is not searched: give the pipeline's folder there)"
        raise UserError(f"no {PREPROC_GLOB} images under {args.input}{hint}", ExitCode.NO_INPUT)
    by_subject = None
    if args.scanner_column and not args.simulate_scanners:
        by_subject = read_participants(
            args.participants or args.input / "participants.tsv", args.scanner_column
        )
    out = []
    for f in files:
        if args.simulate_scanners:
            out.append((f, ""))
            continue
        if by_subject is not None:
            sub = subject_of(f)
            if sub not in by_subject:
                raise UserError(
                    f"{f.name}: {sub or 'no subject'} has no {args.scanner_column!r} value",
                    ExitCode.INVALID_BIDS,
                )
            out.append((f, by_subject[sub]))
            continue
        sidecar = sidecar_of(f)
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


def collect_tsv(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """(image, scanner) pairs of a TSV (columns ``path``, ``scanner``; scanner '' under
    --simulate)."""
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


def check_images(pairs: list[tuple[Path, str]]) -> None:
    """Every image can be read and is 3D."""
    import nibabel as nib

    for p, _ in pairs:
        try:
            shape = nib.load(str(p)).shape
        except Exception as exc:
            raise UserError(f"cannot read image {p}: {exc}", ExitCode.INVALID_BIDS) from None
        if len(shape) != 3:
            raise UserError(f"{p.name} is not 3D (shape {shape})", ExitCode.INVALID_BIDS)
