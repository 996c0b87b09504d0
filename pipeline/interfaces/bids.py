"""Writing BIDS-Derivatives: one sink that knows the naming, and writes atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from models.atomic import atomic_path, write_json_atomic
from pipeline.bids import derivative_dir, derivative_name


def _needs_rewrite(src: Path, dest: Path) -> bool:
    """A NIfTI must be re-encoded when compression differs or its header lacks spatial units
    (the BIDS validator asks for them; some tools leave them unset)."""
    import nibabel as nb

    if src.name.endswith(".nii") != dest.name.endswith(".nii"):
        return True
    header = nb.load(str(src)).header
    return header.get_xyzt_units()[0] == "unknown"


def _copy_atomic(src: Path, dest: Path) -> None:
    """Copy through a hidden temporary file and a rename, so that an interrupted run never
    leaves a half-written output under its final name."""
    nifti = dest.name.endswith((".nii", ".nii.gz"))
    suffix = ".nii.gz" if dest.name.endswith(".gz") else ".nii" if nifti else ".tmp"
    with atomic_path(dest, suffix=suffix) as tmp:
        if nifti and _needs_rewrite(src, dest):
            import nibabel as nb

            img = nb.load(str(src))
            img.header.set_xyzt_units("mm", "sec")
            nb.save(img, str(tmp))
        else:
            shutil.copyfile(src, tmp)


class _DerivativesDataSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Directory(mandatory=True, desc="root of the derivatives dataset")
    in_file = File(exists=True, mandatory=True, desc="the file to store")
    source_entities = traits.Dict(
        mandatory=True, desc="entities of the source T1w (subject, session, run...)"
    )
    suffix = traits.Str(mandatory=True, desc="BIDS suffix, e.g. T1w or xfm")
    extension = traits.Str(desc="extension with its dot (default: that of in_file)")
    space = traits.Str(desc="space entity")
    res = traits.Str(desc="res entity")
    desc = traits.Str(desc="desc entity")
    from_ = traits.Str(desc="from entity (transforms)")
    to = traits.Str(desc="to entity (transforms)")
    mode = traits.Str(desc="mode entity (transforms)")
    metadata = traits.Dict(desc="JSON sidecar content; no sidecar when undefined")
    spatial_reference = traits.Str(desc="SpatialReference of a non-template space (e.g. T1w)")
    extra_metadata = traits.Dict(desc="fixed sidecar entries, merged over ``metadata``")


class _DerivativesDataSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored file")
    out_meta = File(desc="its JSON sidecar")


class DerivativesDataSink(SimpleInterface):
    """Store one output under its BIDS-Derivatives name (and its sidecar), atomically."""

    input_spec = _DerivativesDataSinkInputSpec
    output_spec = _DerivativesDataSinkOutputSpec
    # Always run: the outputs live outside the Nipype cache and may have been removed.
    _always_run = True

    def _run_interface(self, runtime):
        src = Path(self.inputs.in_file)
        extension = self.inputs.extension if isdefined(self.inputs.extension) else None
        if extension is None:
            extension = ".nii.gz" if src.name.endswith(".nii.gz") else src.suffix
        derived = {
            name: getattr(self.inputs, trait)
            for name, trait in (
                ("space", "space"),
                ("res", "res"),
                ("desc", "desc"),
                ("from", "from_"),
                ("to", "to"),
                ("mode", "mode"),
            )
            if isdefined(getattr(self.inputs, trait))
        }
        entities = self.inputs.source_entities
        name = derivative_name(entities, suffix=self.inputs.suffix, extension=extension, **derived)
        dest = Path(self.inputs.base_directory) / derivative_dir(entities) / name
        _copy_atomic(src, dest)
        self._results["out_file"] = str(dest)
        if isdefined(self.inputs.metadata):
            metadata = dict(self.inputs.metadata)
            if isdefined(self.inputs.spatial_reference):
                metadata["SpatialReference"] = self.inputs.spatial_reference
            if isdefined(self.inputs.extra_metadata):
                metadata.update(self.inputs.extra_metadata)
            if "res" in derived:  # BIDS requires the meaning of the res entity
                metadata.setdefault(
                    "Resolution", {derived["res"]: f"{derived['res']} mm isotropic template grid"}
                )
            sidecar = dest.with_name(name[: -len(extension)] + ".json")
            write_json_atomic(sidecar, metadata)
            self._results["out_meta"] = str(sidecar)
        return runtime
