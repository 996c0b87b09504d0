"""Writers of the BIDS-Derivatives outputs of one T1w image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from models.domain import BIAS_CORRECTION
from pipeline.bids import T1wInput
from pipeline.interfaces.bids import DerivativesDataSink
from pipeline.provenance import ITK_THREADS_NOTE, software_versions

#: What each backend did, for the sidecars (the flags are those of METHOD.md for fsl).
PREPROC_STEPS = {
    "fsl": [
        "fslreorient2std",
        "fast -t 1 -n 3 -H 0.1 -I 4 -l 20.0 --nopve -B (restored image)",
        "flirt -bins 256 -cost corratio -searchrx -90 90 -searchry -90 90 -searchrz -90 90 "
        "-dof 12 -interp trilinear",
    ],
    "ants": [
        "reorientation to the FSL standard orientation (nibabel, no resampling)",
        "N4 bias-field correction (antspyx)",
        "brain extraction (brainextractor) to drive the registration only",
        "affine registration of the brain to the template brain (antspyx), applied to the "
        "whole head, linear interpolation",
    ],
}
XFM_FORMAT = {"fsl": "FSL FLIRT 4x4 matrix (.mat)", "ants": "ITK affine transform, text (.txt)"}


def _with_threads(
    metadata: dict,
    thread_counts: dict | None = None,
    steps: list | None = None,
    note: str = "",
    alignment_ncc: float | None = None,
) -> dict:
    """``metadata`` with the thread counts of the ``steps`` that made its file (``NumThreads``)
    and the ``AlignmentNCC`` when given: in its ``Preprocessing`` when it has one."""
    metadata = dict(metadata)
    extra: dict = {} if alignment_ncc is None else {"AlignmentNCC": alignment_ncc}
    counts = {k: v for k, v in (thread_counts or {}).items() if steps is None or k in steps}
    if counts:
        extra.update(NumThreads=counts, NumThreadsNote=note)
    if "Preprocessing" in metadata:
        metadata["Preprocessing"] = {**metadata["Preprocessing"], **extra}
    else:
        metadata.update(extra)
    return metadata


def source_voxel_size(t1w: T1wInput) -> list[float]:
    """The raw T1w's voxel size in mm (header only)."""
    import nibabel as nb

    zooms = nb.load(str(t1w.path)).header.get_zooms()[:3]
    return [round(float(z), 4) for z in zooms]


def coarse_source_note(voxel: list[float], resolution: float) -> str | None:
    """A note when the source is coarser than the template grid along some axis: the image on
    the template grid then holds interpolated, not measured, detail along it."""
    axes = [f"{'ijk'[i]} {v:g} mm" for i, v in enumerate(voxel) if v > 1.25 * resolution]
    if not axes:
        return None
    return (
        f"The source is coarser than the {resolution:g} mm template grid along "
        f"{', '.join(axes)}: detail along that axis on this grid is interpolated, not measured "
        "(thick slices also leave partial-volume blur that no step here removes)."
    )


def fine_source_note(voxel: list[float], resolution: float) -> str | None:
    """A note for native-space outputs of a source finer than the template grid."""
    if min(voxel) >= 0.8 * resolution:
        return None
    return (
        f"The harmonized image was computed on the {resolution:g} mm template grid and "
        f"resampled to this {min(voxel):g} mm grid: detail finer than {resolution:g} mm is "
        "interpolated (the image went through two resamplings), not the source's own."
    )


def preprocessing_summary(backend: str, space: str, template_source: str) -> dict:
    """What the preprocessing did, the same for every image of a run: backend, bias
    correction, steps and template (the sidecar's ``Preprocessing``; what DISARM compares with
    its model card)."""
    return {
        "Backend": backend,
        "BiasCorrection": BIAS_CORRECTION[backend],
        "Steps": PREPROC_STEPS[backend],
        "Template": space,
        "TemplateSource": template_source,
    }


def preproc_metadata(
    t1w: T1wInput, backend: str, space: str, template_source: str, resolution: float = 1.0
) -> dict:
    """Sidecar of the preprocessed T1w: sources, scanner fields of the raw, steps, versions,
    the source's voxel size (and a note when it is coarser than the template grid)."""
    voxel = source_voxel_size(t1w)
    note = coarse_source_note(voxel, resolution)
    return {
        "Description": "Bias-corrected whole head, affinely registered to the template grid",
        "Sources": [f"bids:raw:{t1w.relpath}"],
        "SkullStripped": False,
        **t1w.scanner_metadata,
        "Preprocessing": {
            **preprocessing_summary(backend, space, template_source),
            "SourceVoxelSizeMM": voxel,
            **({"SourceResolutionNote": note} if note else {}),
        },
        "PipelineVersions": software_versions(backend),
    }


def init_ds_preproc_wf(
    *,
    output_dir: Path,
    t1w: T1wInput,
    backend: str,
    space: str,
    resolution: int,
    template_source: str,
    name: str = "ds_preproc_wf",
) -> pe.Workflow:
    """Store the preprocessing outputs of one T1w image as BIDS-Derivatives.

    Writes ``<source>_space-<space>_desc-preproc_T1w.nii.gz`` (+ JSON), the affine
    ``<source>_from-T1w_to-<space>_mode-image_xfm.<mat|txt>`` (+ JSON) and the bias field
    ``<source>_desc-biasfield_T1w.nii.gz`` (in the reoriented input's space, + JSON).

    Inputs (``inputnode``)
    ----------------------
    t1w_preproc
        bias-corrected head on the template grid
    xfm
        affine transform file, input (reoriented) to template
    bias_field
        estimated bias field
    alignment_ncc
        registration quality (NCC to the template inside its brain mask)
    thread_counts
        thread counts of the steps that made the outputs (``init_preproc_wf``'s
        ``thread_counts``): ``NumThreads`` in the preproc, xfm and bias-field sidecars

    Outputs (``outputnode``)
    ------------------------
    t1w_preproc, xfm, bias_field
        paths of the stored derivatives
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["t1w_preproc", "xfm", "bias_field", "alignment_ncc", "thread_counts"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["t1w_preproc", "xfm", "bias_field"]), name="outputnode"
    )
    base: dict[str, Any] = {
        "base_directory": str(output_dir),
        "source_entities": t1w.entities,
    }
    res = str(resolution) if resolution != 1 else None
    sources = [f"bids:raw:{t1w.relpath}"]

    def _metadata_node(node_name: str, metadata: dict, steps: list | None) -> pe.Node:
        node = pe.Node(
            niu.Function(
                function=_with_threads,
                input_names=["metadata", "thread_counts", "steps", "note", "alignment_ncc"],
                output_names=["metadata"],
            ),
            name=node_name,
        )
        node.inputs.metadata = metadata
        node.inputs.note = ITK_THREADS_NOTE
        if steps is not None:
            node.inputs.steps = steps
        return node

    preproc_meta = _metadata_node(
        "preproc_metadata",
        preproc_metadata(t1w, backend, space, template_source, float(resolution)),
        None,
    )
    xfm_meta = _metadata_node(
        "xfm_metadata",
        {
            "Sources": sources,
            "Format": XFM_FORMAT[backend],
            "Software": "FLIRT" if backend == "fsl" else "ANTs (antspyx)",
        },
        None,
    )
    bias_meta = _metadata_node(
        "bias_field_metadata",
        {
            "Sources": sources,
            "SkullStripped": False,
            "Description": "Estimated multiplicative bias field of the input, in its reoriented "
            "space",
        },
        ["N4"],  # made by N4 alone
    )
    ds_preproc = pe.Node(
        DerivativesDataSink(space=space, desc="preproc", suffix="T1w", **base),
        name="ds_t1w_preproc",
        run_without_submitting=True,
    )
    if res:
        ds_preproc.inputs.res = res
    ds_xfm = pe.Node(
        DerivativesDataSink(
            from_="T1w",
            to=space,
            mode="image",
            suffix="xfm",
            **base,
            extension=".mat" if backend == "fsl" else ".txt",
        ),
        name="ds_xfm",
        run_without_submitting=True,
    )
    ds_bias = pe.Node(
        DerivativesDataSink(
            desc="biasfield",
            suffix="T1w",
            **base,
        ),
        name="ds_bias_field",
        run_without_submitting=True,
    )
    # fmt: off
    workflow.connect([
        (inputnode, preproc_meta, [("alignment_ncc", "alignment_ncc"),
                                   ("thread_counts", "thread_counts")]),
        (inputnode, xfm_meta, [("thread_counts", "thread_counts")]),
        (inputnode, bias_meta, [("thread_counts", "thread_counts")]),
        (preproc_meta, ds_preproc, [("metadata", "metadata")]),
        (xfm_meta, ds_xfm, [("metadata", "metadata")]),
        (bias_meta, ds_bias, [("metadata", "metadata")]),
        (inputnode, ds_preproc, [("t1w_preproc", "in_file")]),
        (inputnode, ds_xfm, [("xfm", "in_file")]),
        (inputnode, ds_bias, [("bias_field", "in_file")]),
        (ds_preproc, outputnode, [("out_file", "t1w_preproc")]),
        (ds_xfm, outputnode, [("out_file", "xfm")]),
        (ds_bias, outputnode, [("out_file", "bias_field")]),
    ])
    # fmt: on
    return workflow


def harmonized_desc(mode: str, target: str | None) -> str:
    """``harmonized`` for the scanner-free space, ``harmonizedTo<Target>`` for a target scanner."""
    if mode == "target" and target:
        return "harmonizedTo" + "".join(ch for ch in target.title() if ch.isalnum())
    return "harmonized"


def _harmonized_metadata(harmonization: dict, sources: list) -> dict:
    harmonization = dict(harmonization)
    versions = harmonization.pop("SoftwareVersions", {})
    return {
        "Description": "DISARM-harmonized whole head (mode "
        f"{harmonization.get('mode', harmonization.get('Mode', '?'))})",
        "Sources": sources,
        "SkullStripped": False,
        "Harmonization": harmonization,
        "PipelineVersions": versions,
    }


def init_ds_harmonized_wf(
    *,
    output_dir: Path,
    t1w: T1wInput,
    space: str,
    resolution: int,
    desc: str,
    native: bool,
    name: str = "ds_harmonized_wf",
) -> pe.Workflow:
    """Store the harmonized image of one T1w input (and its native-space version).

    Writes ``<source>_space-<space>_desc-<desc>_T1w.nii.gz`` (+ JSON), and with ``native``
    ``<source>_space-T1w_desc-<desc>_T1w.nii.gz`` (+ JSON).

    Inputs (``inputnode``)
    ----------------------
    harmonized
        harmonized image on the template grid
    harmonized_native
        (``native`` only) the same, resampled to the input's (reoriented) grid
    metadata
        provenance of the harmonization (from ``DisarmHarmonize``)
    preproc_file
        the stored desc-preproc derivative it was made from

    Outputs (``outputnode``)
    ------------------------
    harmonized, harmonized_native
        paths of the stored derivatives
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(
            fields=["harmonized", "harmonized_native", "metadata", "preproc_file"]
        ),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["harmonized", "harmonized_native"]), name="outputnode"
    )

    def _sources(preproc_file: str, output_dir: str, raw_source: str) -> list:
        from pathlib import Path

        return [f"bids::{Path(preproc_file).relative_to(output_dir).as_posix()}", raw_source]

    sources = pe.Node(
        niu.Function(
            function=_sources,
            input_names=["preproc_file", "output_dir", "raw_source"],
            output_names=["sources"],
        ),
        name="sources",
    )
    sources.inputs.output_dir = str(output_dir)
    sources.inputs.raw_source = f"bids:raw:{t1w.relpath}"
    metadata = pe.Node(
        niu.Function(
            function=_harmonized_metadata,
            input_names=["harmonization", "sources"],
            output_names=["metadata"],
        ),
        name="metadata",
    )
    ds_harmonized = pe.Node(
        DerivativesDataSink(
            base_directory=str(output_dir),
            source_entities=t1w.entities,
            space=space,
            desc=desc,
            suffix="T1w",
        ),
        name="ds_harmonized",
        run_without_submitting=True,
    )
    if resolution != 1:
        ds_harmonized.inputs.res = str(resolution)
    # fmt: off
    workflow.connect([
        (inputnode, sources, [("preproc_file", "preproc_file")]),
        (inputnode, metadata, [("metadata", "harmonization")]),
        (sources, metadata, [("sources", "sources")]),
        (metadata, ds_harmonized, [("metadata", "metadata")]),
        (inputnode, ds_harmonized, [("harmonized", "in_file")]),
        (ds_harmonized, outputnode, [("out_file", "harmonized")]),
    ])
    # fmt: on
    if native:
        ds_native = pe.Node(
            DerivativesDataSink(
                base_directory=str(output_dir),
                source_entities=t1w.entities,
                space="T1w",
                desc=desc,
                suffix="T1w",
                spatial_reference=f"bids:raw:{t1w.relpath}",
            ),
            name="ds_harmonized_native",
            run_without_submitting=True,
        )
        note = fine_source_note(source_voxel_size(t1w), float(resolution))
        if note:
            ds_native.inputs.extra_metadata = {"ResolutionNote": note}
        # fmt: off
        workflow.connect([
            (metadata, ds_native, [("metadata", "metadata")]),
            (inputnode, ds_native, [("harmonized_native", "in_file")]),
            (ds_native, outputnode, [("out_file", "harmonized_native")]),
        ])
        # fmt: on
    return workflow
