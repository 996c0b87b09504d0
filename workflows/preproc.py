"""Preprocessing of one T1w image: standard orientation, bias correction, affine to MNI."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from pipeline.templates import Template

#: Output fields of :func:`init_preproc_wf` (the contract with ``workflows.base``).
OUTPUT_FIELDS = [
    "t1w_preproc",
    "xfm",
    "xfm_reoriented",
    "bias_field",
    "t1w_reoriented",
    "alignment_ncc",
    "template_space",
    "thread_counts",
]


def init_preproc_wf(
    *, backend: str, template: Template, omp_nthreads: int = 1, name: str = "preproc_wf"
) -> pe.Workflow:
    """Reorient, bias-correct and affinely register a raw T1w image to an MNI template.

    Workflow Graph (fsl)
        Reorient2Std -> FAST (bias correction) -> FLIRT (12 dof, to the 1 mm head)
    Workflow Graph (ants)
        Reorient2Std -> N4 -> BrainExtraction -> AffineToTemplate (brain to template brain,
        applied to the whole N4 head)

    Parameters
    ----------
    backend
        ``"fsl"`` (the reference command lines of METHOD.md) or ``"ants"`` (no FSL needed).
        Resolve ``"auto"`` first with :func:`pipeline.templates.resolve_backend`.
    template
        From :func:`pipeline.templates.get_template`. The fsl backend needs ``template.head``.
    omp_nthreads
        Threads for N4 and the registration (ITK).
    name
        Workflow name.

    Inputs
    ------
    in_file
        Raw T1w image (3D NIfTI).

    Outputs
    -------
    t1w_preproc
        Bias-corrected whole head, resampled (trilinear) on the template grid.
    xfm
        Affine from the raw T1w to the template: FLIRT ``.mat`` for fsl (in the raw image's
        FSL coordinates, :class:`pipeline.interfaces.fsl.MatFromRaw`); ITK affine text
        ``.txt`` for ants (LPS world coordinates, the same for the raw and the reoriented
        image; maps template points to T1w points, usable with ``antsApplyTransforms`` and
        :class:`pipeline.interfaces.ants.ApplyInverseAffine`).
    xfm_reoriented
        The same affine for ``t1w_reoriented`` (FLIRT's own matrix for fsl; ``xfm`` for ants).
    bias_field
        Multiplicative bias field on the reoriented T1w grid.
    t1w_reoriented
        The raw image in FSL standard (LAS) voxel order, data unchanged.
    alignment_ncc
        Float, :func:`pipeline.qc.alignment_ncc` of ``t1w_preproc`` (> 0.8 is a good fit).
    template_space
        BIDS space label of ``template`` (e.g. ``MNI152NLin6Asym``).
    thread_counts
        ants: ``{"N4": n, "Registration": m}``, the ITK threads N4 and the registration ran
        with (their results change in the last bits with it; from the nodes' results, so a
        cached rerun with another ``omp_nthreads`` reports the count that made the outputs).
        Not named ``num_threads``: Nipype reads a node input of that name as its thread count.
        fsl: ``{}`` (FAST and FLIRT take no thread count).
    """
    from pipeline.interfaces.qc import AlignmentQuality

    if backend not in ("fsl", "ants"):
        raise ValueError(f"backend must be 'fsl' or 'ants' (resolve 'auto' first): {backend!r}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=OUTPUT_FIELDS), name="outputnode")
    outputnode.inputs.template_space = template.space

    quality = pe.Node(
        AlignmentQuality(template_brain=str(template.brain), template_mask=str(template.mask)),
        name="alignment_quality",
    )
    if backend == "fsl":
        _connect_fsl(workflow, inputnode, outputnode, quality, template)
        outputnode.inputs.thread_counts = {}
    else:
        _connect_ants(workflow, inputnode, outputnode, quality, template, omp_nthreads)
    workflow.connect(quality, "ncc", outputnode, "alignment_ncc")
    return workflow


def _thread_counts(n4=None, registration=None):
    """The ITK thread counts of the nodes whose results depend on them (an undefined count,
    from a result cached by an older version, is left out)."""
    counts = {"N4": n4, "Registration": registration}
    return {step: int(n) for step, n in counts.items() if n is not None}


def _first(in_list):
    """FAST returns lists of files; the pipeline has one image."""
    return in_list[0] if isinstance(in_list, list | tuple) else in_list


def _connect_fsl(workflow, inputnode, outputnode, quality, template: Template) -> None:
    from nipype.interfaces import fsl

    from pipeline.interfaces.fsl import FAST, FAST_REFERENCE, FLIRT_REFERENCE, MatFromRaw

    if template.head is None:
        raise ValueError("the fsl backend registers to a whole-head template (FSL's MNI152)")
    reorient = pe.Node(fsl.Reorient2Std(output_type="NIFTI_GZ"), name="reorient")
    fast = pe.Node(
        FAST(out_basename="t1w", output_type="NIFTI_GZ", **FAST_REFERENCE),
        name="fast",
        mem_gb=3,
    )
    flirt = pe.Node(
        fsl.FLIRT(
            reference=str(template.head),
            out_file="t1w_space-template.nii.gz",
            out_matrix_file="from-T1w_to-template_mode-image_xfm.mat",
            output_type="NIFTI_GZ",
            **FLIRT_REFERENCE,
        ),
        name="flirt",
        mem_gb=2,
    )
    # FLIRT's matrix is in the reoriented copy's FSL coordinates: re-express it for the raw T1w
    mat_from_raw = pe.Node(MatFromRaw(reference=str(template.head)), name="mat_from_raw")
    # fmt: off
    workflow.connect([
        (inputnode, reorient, [("in_file", "in_file")]),
        (reorient, fast, [("out_file", "in_files")]),
        (fast, flirt, [(("restored_image", _first), "in_file")]),
        (flirt, quality, [("out_file", "in_file")]),
        (reorient, outputnode, [("out_file", "t1w_reoriented")]),
        (fast, outputnode, [(("bias_field", _first), "bias_field")]),
        (inputnode, mat_from_raw, [("in_file", "raw")]),
        (reorient, mat_from_raw, [("out_file", "reoriented")]),
        (flirt, mat_from_raw, [("out_matrix_file", "in_matrix")]),
        (flirt, outputnode, [("out_file", "t1w_preproc"),
                             ("out_matrix_file", "xfm_reoriented")]),
        (mat_from_raw, outputnode, [("out_file", "xfm")]),
    ])
    # fmt: on


def _connect_ants(
    workflow, inputnode, outputnode, quality, template: Template, omp_nthreads: int
) -> None:
    from pipeline.interfaces.ants import (
        AffineToTemplate,
        BrainExtraction,
        N4BiasCorrection,
        Reorient2Std,
    )

    reorient = pe.Node(Reorient2Std(), name="reorient")
    n4 = pe.Node(
        N4BiasCorrection(num_threads=omp_nthreads), name="n4", n_procs=omp_nthreads, mem_gb=2
    )
    brain = pe.Node(BrainExtraction(), name="brain_extraction", mem_gb=2)
    affine = pe.Node(
        AffineToTemplate(
            num_threads=omp_nthreads,
            template_brain=str(template.brain),
            template_grid=str(template.grid),
        ),
        name="affine",
        n_procs=omp_nthreads,
        mem_gb=2,
    )
    threads = pe.Node(
        niu.Function(
            function=_thread_counts,
            input_names=["n4", "registration"],
            output_names=["thread_counts"],
        ),
        name="thread_counts",
    )
    # fmt: off
    workflow.connect([
        (inputnode, reorient, [("in_file", "in_file")]),
        (reorient, n4, [("out_file", "in_file")]),
        (n4, brain, [("out_file", "in_file")]),
        (brain, affine, [("out_file", "in_brain")]),
        (n4, affine, [("out_file", "in_head")]),
        (affine, quality, [("out_file", "in_file")]),
        (reorient, outputnode, [("out_file", "t1w_reoriented")]),
        (n4, outputnode, [("bias_field", "bias_field")]),
        (affine, outputnode, [("out_file", "t1w_preproc"),
                              ("out_xfm", "xfm"),
                              ("out_xfm", "xfm_reoriented")]),
        (n4, threads, [("num_threads", "n4")]),
        (affine, threads, [("num_threads", "registration")]),
        (threads, outputnode, [("thread_counts", "thread_counts")]),
    ])
    # fmt: on
