"""Bringing template-space outputs back to the input's native (T1w) space."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe


def init_to_native_wf(
    *, backend: str, omp_nthreads: int = 1, name: str = "to_native_wf"
) -> pe.Workflow:
    """Resample an image from template space to the T1w grid through the inverse affine.

    ``fsl``: ``convert_xfm -inverse`` then ``flirt -applyxfm`` (trilinear);
    ``ants``: the inverse of the ITK affine, linear interpolation.

    Inputs (``inputnode``)
    ----------------------
    in_file
        image on the template grid
    xfm
        the preprocessing affine (T1w -> template): FLIRT ``.mat`` or ITK ``.txt``
    reference
        the reoriented T1w image, whose grid the output takes

    Outputs (``outputnode``)
    ------------------------
    out_file
        the image in native T1w space
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["in_file", "xfm", "reference"]), name="inputnode"
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_file"]), name="outputnode")
    if backend == "fsl":
        from nipype.interfaces import fsl

        invert = pe.Node(fsl.ConvertXFM(invert_xfm=True), name="invert_xfm")
        resample = pe.Node(fsl.FLIRT(apply_xfm=True, interp="trilinear"), name="resample")
        # fmt: off
        workflow.connect([
            (inputnode, invert, [("xfm", "in_file")]),
            (inputnode, resample, [("in_file", "in_file"), ("reference", "reference")]),
            (invert, resample, [("out_file", "in_matrix_file")]),
            (resample, outputnode, [("out_file", "out_file")]),
        ])
        # fmt: on
    else:
        from pipeline.interfaces.ants import ApplyInverseAffine

        resample = pe.Node(
            ApplyInverseAffine(num_threads=omp_nthreads), name="resample", n_procs=omp_nthreads
        )
        # fmt: off
        workflow.connect([
            (inputnode, resample, [("in_file", "in_file"), ("xfm", "xfm"),
                                   ("reference", "reference")]),
            (resample, outputnode, [("out_file", "out_file")]),
        ])
        # fmt: on
    return workflow
