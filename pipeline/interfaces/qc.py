"""Nipype interface of the alignment-quality check that both backends run.

The score itself is :func:`pipeline.qc.alignment_ncc` (plain functions, no Nipype).
"""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _AlignmentQualityInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image on the template grid")
    template_brain = File(exists=True, mandatory=True, desc="template brain T1w")
    template_mask = File(exists=True, mandatory=True, desc="template brain mask")


class _AlignmentQualityOutputSpec(TraitedSpec):
    ncc = traits.Float(desc="smoothed NCC inside the dilated template brain mask")


class AlignmentQuality(SimpleInterface):
    """Score an alignment to the template (``pipeline.qc.alignment_ncc``); either backend."""

    input_spec = _AlignmentQualityInputSpec
    output_spec = _AlignmentQualityOutputSpec

    def _run_interface(self, runtime):
        from pipeline.qc import alignment_ncc_files

        self._results["ncc"] = alignment_ncc_files(
            self.inputs.in_file, self.inputs.template_brain, self.inputs.template_mask
        )
        return runtime


__all__ = ["AlignmentQuality"]
