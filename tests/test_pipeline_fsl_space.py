"""The container's default run, without FSL's binaries: ``$FSLDIR`` holds MNI152 templates on
FSL's 1 mm grid, so the ants backend registers to MNI152NLin6Asym; the model was trained on
nilearn's MNI152NLin2009aSym grid. The pipeline harmonizes on the model's grid and says so."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import run_cli
from test_models_domain import FSL, MODEL_SPACE, NILEARN, mni_card

from models.checkpoint import write_model_dir
from models.domain import resample
from models.harmonize import Harmonizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

FSL_SPACE = "MNI152NLin6Asym"


@pytest.fixture(scope="module")
def fsldir(tmp_path_factory) -> Path:
    """$FSLDIR/data/standard/MNI152_T1_1mm{,_brain,_brain_mask}.nii.gz on FSL's grid, made
    from nilearn's 1 mm template (a flip and whole-voxel shifts: no interpolation)."""
    from pipeline.templates import get_template

    nilearn = get_template("ants", 1)  # $FSLDIR unset here: nilearn's
    root = tmp_path_factory.mktemp("fsl")
    std = root / "data" / "standard"
    std.mkdir(parents=True)
    for src, suffixes in ((nilearn.brain, ("", "_brain")), (nilearn.mask, ("_brain_mask",))):
        data = resample(nb.load(src).get_fdata(dtype=np.float32), NILEARN, FSL, 0.0)
        for suffix in suffixes:
            nb.save(nb.Nifti1Image(data, FSL.affine), std / f"MNI152_T1_1mm{suffix}.nii.gz")
    return root


@pytest.fixture(scope="module")
def run(fsldir, tmp_path_factory):
    import torch

    from models.disarm import Disarm
    from models.networks import get_config
    from pipeline.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("fslrun")
    make_demo_dataset(root / "bids", n_subjects=1, n_scanners=1, voxel_mm=3.0, seed=1)
    torch.manual_seed(0)
    cfg = get_config("fast", n_scanners=2)
    model = write_model_dir(root / "model", Disarm(cfg).state_dict(), mni_card(cfg, patch_size=64))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FSLDIR", str(fsldir))
        proc = run_cli(root / "bids", root / "out", "participant", "-w", root / "work",
                       "--backend", "ants", "--nprocs", "1", "--omp-nthreads", "1",
                       "--model", model)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "out", model


def test_fsl_space_run_is_harmonized_on_the_model_grid(run):
    out, model = run
    anat = out / "sub-01" / "anat"
    preproc = nb.load(anat / f"sub-01_space-{FSL_SPACE}_desc-preproc_T1w.nii.gz")
    harmonized_file = anat / f"sub-01_space-{FSL_SPACE}_desc-harmonized_T1w.nii.gz"
    harmonized = nb.load(harmonized_file)
    assert preproc.shape == harmonized.shape == FSL.shape
    assert np.allclose(harmonized.affine, FSL.affine)

    prep = json.loads((anat / f"sub-01_space-{FSL_SPACE}_desc-preproc_T1w.json").read_text())
    assert prep["Preprocessing"]["BiasCorrection"] == "N4"
    meta = json.loads(harmonized_file.with_name(harmonized_file.name[:-7] + ".json").read_text())
    harm = meta["Harmonization"]
    assert harm["ResampledToModelGrid"] is True
    assert (harm["InputSpace"], harm["ModelSpace"]) == (FSL_SPACE, MODEL_SPACE)
    (warning,) = harm["ModelDomainWarnings"]  # same backend (ants, N4): the space only
    assert FSL_SPACE in warning and MODEL_SPACE in warning

    # the same as harmonizing the preprocessed head on the model's grid directly
    data = preproc.get_fdata(dtype=np.float32)
    on_model = nb.Nifti1Image(resample(data, FSL, NILEARN, float(data.min())), NILEARN.affine)
    direct, _ = Harmonizer.from_dir(model, device="cpu").harmonize(on_model, space=MODEL_SPACE)
    expected = resample(direct.get_fdata(dtype=np.float32), NILEARN, FSL, np.nan)
    np.testing.assert_allclose(harmonized.get_fdata(dtype=np.float32), expected, atol=1e-2)

    report = (out / "sub-01.html").read_text()
    assert "ResampledToModelGrid" in report and "affinely close" in report
