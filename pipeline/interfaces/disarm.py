"""The DISARM harmonization node: a thin Nipype bridge to :mod:`models.harmonize`."""

from __future__ import annotations

import json
from pathlib import Path

from nipype import logging
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.provenance import TORCH_THREADS_NOTE, software_versions

_LOG = logging.getLogger("nipype.interface")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu`` (names, for Nipype inputs)."""
    if device != "auto":
        return device
    from models.devices import resolve_device as resolve

    return resolve(device).type


class _DisarmHarmonizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D T1w image on a template grid")
    in_space = traits.Str(
        desc="in_file's template space: an image on another grid of the model's world (e.g. "
        "FSL's MNI152NLin6Asym) is harmonized on the model's grid and resampled back"
    )
    in_preprocessing = traits.Dict(
        desc="in_file's preprocessing (Backend, BiasCorrection), compared with the model's"
    )
    model = traits.Directory(exists=True, desc="trained model folder (default: the shipped one)")
    mode = traits.Enum(
        "scanner-free",
        "target",
        "reference",
        usedefault=True,
        desc="scanner-free space, a training scanner or a reference scanner",
    )
    target_scanner = traits.Str(desc="training scanner name (mode target)")
    reference_file = File(exists=True, desc="image whose scanner to imitate (mode reference)")
    model_sha256 = traits.Str(
        desc="sha256 of the model's weights: part of the node's hash, so a changed model reruns"
    )
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="where the network runs")
    # not hashed: inference draws nothing at random (the seed is only recorded), and a thread
    # count changes float summation order (the last bits), not the model's answer; a rerun
    # with another --omp-nthreads reuses the cache instead of recomputing every image (the
    # sidecar's NumThreads is the count that computed it)
    seed = traits.Int(0, usedefault=True, nohash=True, desc="random seed (recorded)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="torch CPU threads")
    # Nipype's MultiProc counts nodes with a true ``use_gpu`` against ``n_gpu_procs``.
    use_gpu = traits.Bool(False, usedefault=True, desc="set when the node runs on CUDA")


class _DisarmHarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="harmonized image, input's grid, affine and header")
    out_json = File(exists=True, desc="provenance: mode, target, model, sha256, seed, versions")
    metadata = traits.Dict(desc="the content of out_json")


class DisarmHarmonize(SimpleInterface):
    """Harmonize one T1w image with a trained DISARM model.

    >>> from pipeline.interfaces.disarm import DisarmHarmonize
    >>> node = DisarmHarmonize(mode="scanner-free", seed=0)
    >>> node.inputs.use_gpu
    False
    """

    input_spec = _DisarmHarmonizeInputSpec
    output_spec = _DisarmHarmonizeOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb
        import torch

        from models.harmonize import Harmonizer

        torch.set_num_threads(max(1, self.inputs.num_threads))
        model = self.inputs.model if isdefined(self.inputs.model) else None
        target = self.inputs.target_scanner if isdefined(self.inputs.target_scanner) else None
        reference = None
        if isdefined(self.inputs.reference_file):
            reference = nb.load(self.inputs.reference_file)
        harmonizer = Harmonizer.from_dir(model, device=resolve_device(self.inputs.device))
        expected = self.inputs.model_sha256 if isdefined(self.inputs.model_sha256) else None
        if expected and harmonizer.card["weights_sha256"] != expected:
            raise RuntimeError(
                f"the model in {harmonizer.model_dir} changed after the workflow was built "
                f"(weights sha256 {harmonizer.card['weights_sha256'][:12]}..., "
                f"expected {expected[:12]}...)"
            )
        image = nb.load(self.inputs.in_file)
        out_img, provenance = harmonizer.harmonize(
            image,
            mode=self.inputs.mode,
            target=target,
            reference=reference,
            seed=self.inputs.seed,
            space=self.inputs.in_space if isdefined(self.inputs.in_space) else None,
            preprocessing=(
                self.inputs.in_preprocessing if isdefined(self.inputs.in_preprocessing) else None
            ),
        )
        for warning in provenance.get("warnings", []) + provenance.get("ModelDomainWarnings", []):
            _LOG.warning("DisarmHarmonize: %s", warning)
        provenance = {
            **provenance,
            # recorded from this run (the input is not hashed): a cached result keeps its count
            "NumThreads": torch.get_num_threads(),
            "NumThreadsNote": TORCH_THREADS_NOTE,
            "SoftwareVersions": software_versions(torch=True),
        }
        out_file = Path(runtime.cwd) / "harmonized_T1w.nii.gz"
        nb.save(out_img, str(out_file))
        out_json = out_file.with_suffix("").with_suffix(".json")
        out_json.write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")
        self._results["out_file"] = str(out_file)
        self._results["out_json"] = str(out_json)
        self._results["metadata"] = json.loads(out_json.read_text())
        return runtime
