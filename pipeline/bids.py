"""BIDS input (pybids queries, input checks), BIDS-Derivatives naming and metadata, and the
pybids index that reads the derivatives back."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.atomic import write_json_atomic
from pipeline import __version__
from pipeline.exitcodes import ExitCode, UserError

#: Raw-sidecar fields carried into the derivatives: the scanner label comes from them.
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "DeviceSerialNumber",
    "StationName",
    "InstitutionName",
    "SoftwareVersions",
)

#: Entities of a T1w file that identify it, in BIDS filename order, with their key (every
#: entity BIDS allows on an anatomical T1w: multi-echo, magnitude/phase parts, chunks).
SOURCE_ENTITIES = (
    ("subject", "sub"),
    ("session", "ses"),
    ("task", "task"),
    ("acquisition", "acq"),
    ("ceagent", "ce"),
    ("reconstruction", "rec"),
    ("run", "run"),
    ("echo", "echo"),
    ("part", "part"),
    ("chunk", "chunk"),
)
#: Derivative entities.
DERIVATIVE_ENTITIES = (
    ("from", "from"),
    ("to", "to"),
    ("mode", "mode"),
    ("space", "space"),
    ("res", "res"),
    ("desc", "desc"),
)
#: Every entity of an output name, in the order of the BIDS entity table (space comes before
#: chunk there; transforms' from/to/mode after the source entities, as fMRIPrep names them).
NAME_ORDER = (
    "subject", "session", "task", "acquisition", "ceagent", "reconstruction", "run", "echo",
    "part", "from", "to", "mode", "space", "chunk", "res", "desc",
)  # fmt: skip


@dataclass(frozen=True)
class T1wInput:
    """One T1w image selected for processing."""

    path: Path
    relpath: str  # path inside the dataset, as used in ``Sources`` (bids:raw:<relpath>)
    entities: dict[str, str]  # SOURCE_ENTITIES present in the file name
    metadata: dict[str, Any] = field(default_factory=dict)  # sidecar (inheritance applied)

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def scanner_metadata(self) -> dict[str, Any]:
        return {k: self.metadata[k] for k in SCANNER_FIELDS if k in self.metadata}

    @property
    def ident(self) -> str:
        """A Nipype-safe identifier of the image, e.g. ``sub_01_ses_a_run_1``."""
        return "_".join(
            f"{key}_{self.entities[name]}"
            for name, key in SOURCE_ENTITIES
            if name in self.entities
        )


def load_layout(bids_dir: Path):
    """Index ``bids_dir`` with pybids (in memory: nothing is written inside it)."""
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    if not bids_dir.is_dir():
        raise UserError(
            f"bids_dir {bids_dir} does not exist or is not a folder", ExitCode.NO_INPUT
        )
    description = bids_dir / "dataset_description.json"
    try:
        json.loads(description.read_text())
    except OSError:
        raise UserError(
            f"{bids_dir} is not a BIDS dataset: it has no dataset_description.json",
            ExitCode.INVALID_BIDS,
        ) from None
    except ValueError as err:
        raise UserError(
            f"{bids_dir} is not a BIDS dataset: dataset_description.json is not JSON ({err})",
            ExitCode.INVALID_BIDS,
        ) from None
    try:
        # validate=False: tolerate files the validator does not know, as fMRIPrep does.
        return BIDSLayout(str(bids_dir), validate=False)
    except (BIDSValidationError, ValueError) as err:
        raise UserError(
            f"{bids_dir} is not a BIDS dataset: {err}", ExitCode.INVALID_BIDS
        ) from None


def nifti_stem(path: Path | str) -> str:
    """The file name without its ``.nii.gz`` or ``.nii`` (else without its last suffix)."""
    path = Path(path)
    for ext in (".nii.gz", ".nii"):
        if path.name.endswith(ext):
            return path.name[: -len(ext)]
    return path.stem


def sidecar_of(image: Path | str) -> Path:
    """The JSON sidecar beside a NIfTI image."""
    return Path(image).with_name(nifti_stem(image) + ".json")


def load_derivatives(root: Path, subjects: Iterable[str] | None = None, *, whole_tree=False):
    """Index a BIDS-Derivatives folder with pybids, to read outputs back by their entities.

    Entities come from pybids' ``bids`` and ``derivatives`` configurations (``space``, ``res``,
    ``desc``, ``from``/``to``/``mode``, ...). The index is in memory, without metadata
    (sidecars are read directly) and without validation: ``dataset_description.json`` may be
    missing or unreadable, as in a folder of outputs copied elsewhere.

    By default only the ``sub-<label>`` folders of ``root`` are indexed (those of ``subjects``,
    labels without ``sub-``, when given), without their report ``figures``: where the
    participant level writes, so a report of one participant indexes one folder.
    ``whole_tree`` indexes every folder pybids indexes by default instead (not ``derivatives/``,
    ``code/``, ``models/``, ``sourcedata/``, ``stimuli/`` at the top, nor hidden folders).
    """
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    root = Path(root)
    ignore = None
    if not whole_tree:
        keep = None if subjects is None else {f"sub-{s}" for s in subjects}
        skip = []
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            selected = entry.name.startswith("sub-") and (keep is None or entry.name in keep)
            skip.append(f"{entry.name}/figures" if selected else entry.name)
        # pybids matches ignore patterns against "/<path inside root>"; its string patterns are
        # prefixes (sub-1 would hide sub-10), hence exact, escaped patterns of folder paths
        ignore = [re.compile("^/" + re.escape(rel) + "$") for rel in skip]
    # config instead of is_derivative=True: pybids then reads dataset_description.json only
    # when it is valid JSON (is_derivative=True raises on a broken one)
    return BIDSLayout(
        str(root),
        validate=False,
        config=["bids", "derivatives"],
        indexer=BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore),
    )


def collect_t1w(
    layout,
    participant_label: Iterable[str] = (),
    session_label: Iterable[str] = (),
    bids_filters: Mapping[str, Any] | None = None,
) -> list[T1wInput]:
    """Every T1w image of the selected participants and sessions, with its sidecar metadata."""
    participant_label, session_label = list(participant_label), list(session_label)
    all_subjects = layout.get_subjects()
    query: dict[str, Any] = {
        "datatype": "anat",
        "suffix": "T1w",
        "extension": [".nii", ".nii.gz"],
        "return_type": "object",
    }
    filters = dict((bids_filters or {}).get("t1w", bids_filters or {}))
    query.update(filters)
    if not layout.get(**{**query, "return_type": "filename"}) and not (
        participant_label or session_label or filters
    ):
        raise UserError(f"no T1w image found in {layout.root}", ExitCode.NO_INPUT)
    if participant_label:
        missing = sorted(set(participant_label) - set(all_subjects))
        if missing:
            raise UserError(
                "participant(s) not found in the dataset: "
                + ", ".join(f"sub-{m}" for m in missing),
                ExitCode.NO_MATCH,
            )
        query["subject"] = participant_label
    if session_label:
        query["session"] = session_label
    try:
        files = layout.get(**query)
    except (ValueError, TypeError) as err:  # unknown entity in a filter file
        raise UserError(f"invalid BIDS filter: {err}", ExitCode.USAGE) from None
    inputs = [
        T1wInput(
            path=Path(f.path),
            relpath=Path(f.path).relative_to(layout.root).as_posix(),
            entities={
                name: str(f.entities[name]) for name, _ in SOURCE_ENTITIES if name in f.entities
            },
            metadata=dict(f.get_metadata()),
        )
        for f in sorted(files, key=lambda f: f.path)
    ]
    if not inputs:
        what = [f"participant(s) {', '.join(participant_label)}"] if participant_label else []
        what += [f"session(s) {', '.join(session_label)}"] if session_label else []
        what += [f"filters {json.dumps(filters)}"] if filters else []
        raise UserError(f"no T1w image matches {' and '.join(what)}", ExitCode.NO_MATCH)
    without = sorted(set(participant_label) - {i.subject for i in inputs})
    if without:
        raise UserError(
            "no T1w image for " + ", ".join(f"sub-{s}" for s in without), ExitCode.NO_MATCH
        )
    return inputs


def check_t1w_image(path: Path) -> None:
    """Refuse an image the pipeline cannot use: unreadable, not 3D, NaN/inf or empty."""
    import nibabel as nb
    import numpy as np

    name = path.name
    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for a broken file
        raise UserError(f"{name}: cannot read the image ({err})", ExitCode.INVALID_BIDS) from None
    shape = data.shape
    if len(shape) == 4 and shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise UserError(
            f"{name}: a T1w image must be 3D, this one has shape {shape}", ExitCode.INVALID_BIDS
        )
    if min(data.shape) < 8:
        raise UserError(f"{name}: image too small ({shape})", ExitCode.INVALID_BIDS)
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise UserError(f"{name}: {bad} voxels are NaN or infinite", ExitCode.INVALID_BIDS)
    if not np.any(data):
        raise UserError(f"{name}: the image is empty (all zeros)", ExitCode.INVALID_BIDS)
    if np.linalg.matrix_rank(img.affine[:3, :3]) < 3:
        raise UserError(f"{name}: the header's affine is degenerate", ExitCode.INVALID_BIDS)


def derivative_name(
    entities: Mapping[str, str], *, suffix: str, extension: str, **derived: str | int | None
) -> str:
    """BIDS-Derivatives file name,
    e.g. ``sub-01_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz``.

    ``derived`` holds the derivative entities (space, desc, from, to, mode, res).
    """
    unknown = set(derived) - {name for name, _ in DERIVATIVE_ENTITIES}
    if unknown:
        raise ValueError(f"unknown derivative entities {sorted(unknown)}")
    keys = dict(SOURCE_ENTITIES + DERIVATIVE_ENTITIES)
    values = {n: entities.get(n) for n, _ in SOURCE_ENTITIES} | dict(derived)
    parts = [f"{keys[n]}-{values[n]}" for n in NAME_ORDER if values.get(n) not in (None, "")]
    return "_".join([*parts, suffix]) + extension


def derivative_dir(entities: Mapping[str, str], datatype: str = "anat") -> Path:
    """``sub-<label>[/ses-<label>]/<datatype>`` of an output."""
    path = Path(f"sub-{entities['subject']}")
    if entities.get("session"):
        path /= f"ses-{entities['session']}"
    return path / datatype


def container_info() -> dict[str, str] | None:
    """The container we run in, as BIDS GeneratedBy.Container wants it (set in docker/)."""
    if os.getenv("DISARM_CONTAINER_TYPE"):
        info = {"Type": os.environ["DISARM_CONTAINER_TYPE"]}
        if os.getenv("DISARM_CONTAINER_TAG"):
            info["Tag"] = os.environ["DISARM_CONTAINER_TAG"]
        return info
    for var in ("APPTAINER_NAME", "SINGULARITY_NAME"):
        if os.getenv(var):
            return {"Type": "singularity", "URI": os.environ[var]}
    return None


def write_dataset_description(output_dir: Path, bids_dir: Path) -> dict[str, Any]:
    """``dataset_description.json`` of the derivatives: GeneratedBy, SourceDatasets, links."""
    generated_by: dict[str, Any] = {
        "Name": "disarm-pipeline",
        "Version": __version__,
        "Description": "Reorientation, bias-field correction, affine registration to MNI152 and "
        "DISARM scanner harmonization of T1w images.",
    }
    container = container_info()
    if container:
        generated_by["Container"] = container
    raw_description = {}
    try:
        raw_description = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        pass
    source = {"URL": bids_dir.resolve().as_uri()}
    if raw_description.get("DatasetDOI"):
        source["DOI"] = raw_description["DatasetDOI"]
    content = {
        "Name": f"disarm-pipeline derivatives of {raw_description.get('Name', bids_dir.name)}",
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": bids_dir.resolve().as_uri()},
    }
    if raw_description.get("License"):
        content["License"] = raw_description["License"]
    write_json_atomic(output_dir / "dataset_description.json", content)
    readme = output_dir / "README.md"
    if not readme.exists():
        readme.write_text(
            "# disarm-pipeline derivatives\n\nMade by disarm-pipeline from the BIDS dataset in "
            "SourceDatasets: bias-corrected T1w heads affinely registered to an MNI template "
            "(desc-preproc), DISARM-harmonized heads (desc-harmonized*), the affine transforms "
            "and bias fields, with per-participant HTML reports and group-level statistics.\n"
        )
    return content
