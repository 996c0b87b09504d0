"""Nipype interfaces of the ants backend (preprocessing without FSL).

Each wraps a plain function of :mod:`pipeline.ants_tools` (reorientation, N4, brain
extraction, affine to the template, inverse affine), which holds the methods and the
transform conventions. Those functions and :class:`~pipeline.interfaces.qc.AlignmentQuality`
(used by both backends) are importable from here too, as before.
"""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.ants_tools import (
    EXTRACTION_SPACING_MM,
    FOV_MM,
    REGISTRATION_SEED,
    REGISTRATION_SPACING_MM,
    affine_to_template,
    apply_inverse_affine,
    check_volume,
    extract_brain,
    itk_threads,
    n4_bias_correct,
    reorient_to_std,
)
from pipeline.bids import nifti_stem

# The specs too: work directories of earlier versions pickled them under this module.
from pipeline.interfaces.qc import (  # noqa: F401
    AlignmentQuality,
    _AlignmentQualityInputSpec,
    _AlignmentQualityOutputSpec,
)


def _out_path(out_dir: Path | str, in_file: Path | str, suffix: str) -> Path:
    return Path(out_dir) / f"{nifti_stem(in_file)}_{suffix}.nii.gz"


class _ThreadsInputSpec(BaseInterfaceInputSpec):
    # nohash, as Nipype's own ANTs interfaces: a rerun with another thread count reuses the cache
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


def _num_threads_output():
    # N4's and the registration's results change in their last bits with the ITK thread count
    # (multi-threaded sums); an output, so a cached result keeps the count that computed it
    return traits.Int(desc="ITK threads this node computed its outputs with")


class _Reorient2StdInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw 3D T1w image")


class _Reorient2StdOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="same voxels stored in LAS order")


class Reorient2Std(SimpleInterface):
    """fslreorient2std without FSL: LAS voxel order, data kept exactly."""

    input_spec = _Reorient2StdInputSpec
    output_spec = _Reorient2StdOutputSpec

    def _run_interface(self, runtime):
        out = _out_path(runtime.cwd, self.inputs.in_file, "reoriented")
        self._results["out_file"] = str(reorient_to_std(self.inputs.in_file, out))
        return runtime


class _N4InputSpec(_ThreadsInputSpec):
    in_file = File(exists=True, mandatory=True, desc="reoriented whole head")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected head (float32)")
    bias_field = File(exists=True, desc="estimated multiplicative bias field (> 0)")
    num_threads = _num_threads_output()


class N4BiasCorrection(SimpleInterface):
    """ANTs N4 bias-field correction of the whole head."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        out = _out_path(runtime.cwd, self.inputs.in_file, "n4")
        bias = _out_path(runtime.cwd, self.inputs.in_file, "biasfield")
        with itk_threads(self.inputs.num_threads):
            n4_bias_correct(self.inputs.in_file, out, bias)
        self._results["out_file"] = str(out)
        self._results["bias_field"] = str(bias)
        self._results["num_threads"] = max(1, self.inputs.num_threads)
        return runtime


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected whole head")
    iterations = traits.Int(1000, usedefault=True, desc="surface deformation steps")


class _BrainExtractionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="head multiplied by the brain mask")
    out_mask = File(exists=True, desc="binary brain mask")


class BrainExtraction(SimpleInterface):
    """BET-like brain extraction (``brainextractor``)."""

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    def _run_interface(self, runtime):
        out = _out_path(runtime.cwd, self.inputs.in_file, "brain")
        mask = _out_path(runtime.cwd, self.inputs.in_file, "brainmask")
        extract_brain(self.inputs.in_file, out, mask, iterations=self.inputs.iterations)
        self._results["out_file"] = str(out)
        self._results["out_mask"] = str(mask)
        return runtime


class _AffineToTemplateInputSpec(_ThreadsInputSpec):
    in_brain = File(exists=True, mandatory=True, desc="extracted brain (moving image)")
    in_head = File(exists=True, mandatory=True, desc="whole head to resample")
    template_brain = File(exists=True, mandatory=True, desc="template brain (fixed image)")
    template_grid = File(exists=True, mandatory=True, desc="image defining the output grid")
    seed = traits.Int(REGISTRATION_SEED, usedefault=True, desc="metric sampling seed")


class _AffineToTemplateOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="head resampled on the template grid (float32)")
    out_xfm = File(exists=True, desc="ITK affine, text format (.txt)")
    num_threads = _num_threads_output()


class AffineToTemplate(SimpleInterface):
    """Brain-to-brain affine registration, applied to the whole head."""

    input_spec = _AffineToTemplateInputSpec
    output_spec = _AffineToTemplateOutputSpec

    def _run_interface(self, runtime):
        out = _out_path(runtime.cwd, self.inputs.in_head, "space-template")
        xfm = Path(runtime.cwd) / "from-T1w_to-template_mode-image_xfm.txt"
        with itk_threads(self.inputs.num_threads):
            affine_to_template(
                self.inputs.in_brain,
                self.inputs.in_head,
                self.inputs.template_brain,
                self.inputs.template_grid,
                out,
                xfm,
                seed=self.inputs.seed,
            )
        self._results["out_file"] = str(out)
        self._results["out_xfm"] = str(xfm)
        self._results["num_threads"] = max(1, self.inputs.num_threads)
        return runtime


class _ApplyInverseAffineInputSpec(_ThreadsInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image in template space")
    xfm = File(exists=True, mandatory=True, desc="ITK affine .txt (T1w -> template)")
    reference = File(exists=True, mandatory=True, desc="native image giving the output grid")
    interpolation = traits.Enum("linear", "nearestNeighbor", "bSpline", usedefault=True)
    out_file = File(desc="output path (default: <in_file>_space-T1w.nii.gz in the node dir)")


class _ApplyInverseAffineOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="image on the reference (native) grid, float32")


class ApplyInverseAffine(SimpleInterface):
    """Template-space image -> native T1w space, with the inverse of the ants backend's xfm.

    For the fsl backend's FLIRT ``.mat`` (which needs the FLIRT source and reference images
    to be interpreted) use FSL itself::

        convert_xfm -omat inverse.mat -inverse xfm.mat
        flirt -in in_template.nii.gz -ref t1w_reoriented.nii.gz -applyxfm -init inverse.mat \
              -out out_native.nii.gz

    (``nipype.interfaces.fsl.ConvertXFM(invert_xfm=True)`` + ``fsl.FLIRT(apply_xfm=True)``).
    This interface refuses ``.mat`` files with a clear error.
    """

    input_spec = _ApplyInverseAffineInputSpec
    output_spec = _ApplyInverseAffineOutputSpec

    def _run_interface(self, runtime):
        if not str(self.inputs.xfm).endswith(".txt"):
            raise ValueError(
                f"ApplyInverseAffine takes the ants backend's ITK .txt affine, not "
                f"{self.inputs.xfm}; invert FLIRT .mat files with convert_xfm + flirt"
            )
        out = self.inputs.out_file
        if not isdefined(out):
            out = _out_path(runtime.cwd, self.inputs.in_file, "space-T1w")
        with itk_threads(self.inputs.num_threads):
            apply_inverse_affine(
                self.inputs.in_file,
                self.inputs.xfm,
                self.inputs.reference,
                out,
                interpolation=self.inputs.interpolation,
            )
        self._results["out_file"] = str(Path(out).absolute())
        return runtime


__all__ = [
    "AffineToTemplate",
    "AlignmentQuality",
    "ApplyInverseAffine",
    "BrainExtraction",
    "N4BiasCorrection",
    "Reorient2Std",
    "EXTRACTION_SPACING_MM",
    "FOV_MM",
    "REGISTRATION_SEED",
    "REGISTRATION_SPACING_MM",
    "affine_to_template",
    "apply_inverse_affine",
    "check_volume",
    "extract_brain",
    "itk_threads",
    "n4_bias_correct",
    "reorient_to_std",
]
