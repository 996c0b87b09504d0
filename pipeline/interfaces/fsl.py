"""FSL interfaces whose command lines must match the reference (METHOD.md) character for character.

Nipype's ``fsl.FAST`` writes ``-H`` as ``%.2f`` (``-H 0.10``), only takes an integer ``-l``
(``-l 20``) and adds ``-S 1``; the reference script passes ``-H 0.1 -l 20.0``. Same values,
but we keep the reference's text so that a command line can be compared with it directly.
"""

from __future__ import annotations

import os

from nipype.interfaces import fsl
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.interfaces.fsl.preprocess import FASTInputSpec


class _FASTInputSpec(FASTInputSpec):
    hyper = traits.Range(low=0.0, high=1.0, argstr="-H %g", desc="segmentation smoothness")
    bias_lowpass = traits.Range(
        low=4.0, high=40.0, argstr="-l %.1f", desc="bias field smoothing (FWHM, mm)"
    )


class FAST(fsl.FAST):
    """``fsl.FAST`` printing ``-H`` and ``-l`` the way the reference script does.

    Nipype also always writes ``-S <number of channels>``; with one image that is FAST's
    default (``-S 1``), so it is left out to keep the reference command line.
    """

    input_spec = _FASTInputSpec

    def _format_arg(self, name, spec, value):
        formatted = super()._format_arg(name, spec, value)
        if name == "in_files" and len(value) == 1 and formatted.startswith("-S 1 "):
            formatted = formatted[len("-S 1 ") :]
        return formatted


#: ``fast`` options of the reference, as Nipype inputs (``-t 1 -n 3 -H 0.1 -I 4 -l 20.0
#: --nopve -B``), plus ``-b`` to keep the bias field.
FAST_REFERENCE = {
    "img_type": 1,
    "number_classes": 3,
    "hyper": 0.1,
    "bias_iters": 4,
    "bias_lowpass": 20.0,
    "no_pve": True,
    "output_biascorrected": True,
    "output_biasfield": True,
}

#: ``flirt`` options of the reference (``-bins 256 -cost corratio -searchrx -90 90 -searchry
#: -90 90 -searchrz -90 90 -dof 12 -interp trilinear``).
FLIRT_REFERENCE = {
    "bins": 256,
    "cost": "corratio",
    "searchr_x": [-90, 90],
    "searchr_y": [-90, 90],
    "searchr_z": [-90, 90],
    "dof": 12,
    "interp": "trilinear",
}


class _MatFromRawInputSpec(BaseInterfaceInputSpec):
    in_matrix = File(exists=True, mandatory=True, desc="FLIRT matrix, reoriented -> reference")
    reoriented = File(exists=True, mandatory=True, desc="the image FLIRT registered (-in)")
    raw = File(exists=True, mandatory=True, desc="the raw T1w, before fslreorient2std")
    reference = File(exists=True, mandatory=True, desc="FLIRT's reference (-ref)")


class _MatFromRawOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="FLIRT matrix, raw T1w -> reference")


class MatFromRaw(SimpleInterface):
    """Re-express a FLIRT matrix so that it maps the *raw* T1w, not its reoriented copy.

    A FLIRT ``.mat`` works in FSL's scaled-voxel coordinates of its input image, and FLIRT's
    input was the ``fslreorient2std`` copy, which is never saved: the matrix applied to the
    raw image would be wrong whenever the reorientation permuted or flipped axes. The world
    (scanner RAS) transform is the same for both images (fslreorient2std keeps the world
    space), so the matrix is read with the reoriented image as moving and written with the raw
    one (nitransforms' FSL conversion).
    """

    input_spec = _MatFromRawInputSpec
    output_spec = _MatFromRawOutputSpec

    def _run_interface(self, runtime):
        from nitransforms import linear

        xfm = linear.load(
            self.inputs.in_matrix,
            fmt="fsl",
            reference=self.inputs.reference,
            moving=self.inputs.reoriented,
        )
        out = os.path.join(runtime.cwd, "from-T1w_to-template_mode-image_xfm.mat")
        xfm.to_filename(out, fmt="fsl", moving=self.inputs.raw)
        self._results["out_file"] = out
        return runtime


__all__ = ["FAST", "FAST_REFERENCE", "FLIRT_REFERENCE", "MatFromRaw"]
