"""The model's domain (models.domain): an image on FSL's MNI152NLin6Asym grid harmonized on
the grid of a model trained on nilearn's MNI152NLin2009aSym grid, and what the sidecar says."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import models.domain
from models.checkpoint import write_model_dir
from models.disarm import Disarm
from models.domain import Grid, ModelDomain, resample
from models.harmonize import Harmonizer
from models.networks import get_config
from workflows.harmonize import init_harmonize_wf

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODEL_SPACE, FSL_SPACE = "MNI152NLin2009aSym", "MNI152NLin6Asym"
#: nilearn's 1 mm MNI152NLin2009aSym grid and FSL's 1 mm MNI152 grid (MNI152_T1_1mm.nii.gz)
NILEARN = Grid((197, 233, 189), np.array([[1.0, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72],
                                          [0, 0, 0, 1]]))  # fmt: skip
FSL = Grid((182, 218, 182), np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72],
                                      [0, 0, 0, 1]]))  # fmt: skip
ANTS_N4 = {"Backend": "ants", "BiasCorrection": "N4"}


def mni_card(cfg, patch_size=16) -> dict:
    """A card as disarm-train writes it for ants-preprocessed images on nilearn's grid."""
    return {
        "name": "mni-test",
        "config": cfg.to_dict(),
        "scanners": ["A", "B"],
        "scanner_codes": {"A": [0.0] * cfg.z_dim, "B": [0.3] * cfg.z_dim},
        "training": {
            "patch_size": patch_size,  # small windows: only those near the small head run
            "grid": {**NILEARN.to_dict()},
            "data": {"template_space": MODEL_SPACE, "preprocessing": ANTS_N4},
        },
    }


@pytest.fixture(scope="module")
def mni_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = get_config("fast", n_scanners=2)
    path = tmp_path_factory.mktemp("mni") / "model"
    return write_model_dir(path, Disarm(cfg).state_dict(), mni_card(cfg))


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """One small head in world coordinates on the model's grid, and the same head on FSL's
    grid (a flip and whole-voxel shifts: copied exactly, nothing lost)."""
    ijk = np.indices(NILEARN.shape).reshape(3, -1).astype(float)
    x, y, z = (NILEARN.affine[:3, :3] @ ijk + NILEARN.affine[:3, 3:]).reshape(3, *NILEARN.shape)
    r = np.sqrt((x / 16) ** 2 + ((y + 20) / 20) ** 2 + ((z - 10) / 18) ** 2)
    noise = np.random.default_rng(0).normal(0, 20, NILEARN.shape)
    data = np.where(r < 1, 500.0 + noise + 300.0 * (r < 0.6) + 100 * (x > 4), 0.0)
    on_model = nib.Nifti1Image(data.astype(np.float32), NILEARN.affine)
    on_fsl = nib.Nifti1Image(
        resample(on_model.get_fdata(dtype=np.float32), NILEARN, FSL, 0.0), FSL.affine
    )
    on_fsl.set_sform(FSL.affine, code=4)
    on_fsl.set_qform(FSL.affine, code=4)
    path = tmp_path_factory.mktemp("fsl") / f"sub-01_space-{FSL_SPACE}_desc-preproc_T1w.nii.gz"
    nib.save(on_fsl, path)
    sidecar = {"Preprocessing": {"Backend": "fsl", "Template": FSL_SPACE}}  # before BiasCorrection
    path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return on_model, nib.load(path)


@pytest.fixture(scope="module")
def on_model_grid(mni_model, heads):
    """The model-grid head harmonized where it lies (no resampling)."""
    return Harmonizer.from_dir(mni_model, device="cpu").harmonize(heads[0], space=MODEL_SPACE)


def test_fsl_grid_is_harmonized_on_the_model_grid(mni_model, heads, on_model_grid, tmp_path):
    """The Nipype node, as disarm-pipeline runs it in the container: the result lies on the
    input's FSL grid and equals the harmonization on the model's grid (the two 1 mm MNI grids
    differ by a flip and whole-voxel shifts); the sidecar says so and warns."""
    on_model, on_fsl = heads
    fsl_prep = {"Backend": "fsl", "BiasCorrection": "FAST", "Template": FSL_SPACE}
    wf = init_harmonize_wf(model_dir=mni_model, device="cpu", space=FSL_SPACE,
                           preprocessing=fsl_prep, name="h")  # fmt: skip
    wf.base_dir = str(tmp_path)
    wf.inputs.inputnode.in_file = on_fsl.get_filename()
    wf.run()
    node_dir = tmp_path / "h" / "disarm_harmonize"
    out = nib.load(node_dir / "harmonized_T1w.nii.gz")
    meta = json.loads((node_dir / "harmonized_T1w.json").read_text())

    assert out.shape == FSL.shape and np.array_equal(out.affine, on_fsl.affine)
    assert int(out.header["sform_code"]) == 4
    expected = resample(on_model_grid[0].get_fdata(dtype=np.float32), NILEARN, FSL, np.nan)
    assert not np.isnan(expected).any()  # FSL's grid lies inside the model's
    np.testing.assert_allclose(out.get_fdata(dtype=np.float32), expected, atol=1e-3)
    # the head where the input's is (a random model: the head against the air, not its detail)
    assert np.corrcoef(out.get_fdata().ravel(), on_fsl.get_fdata().ravel())[0, 1] > 0.5

    assert meta["ResampledToModelGrid"] is True and "linear" in meta["Resampling"]
    assert (meta["InputSpace"], meta["ModelSpace"]) == (FSL_SPACE, MODEL_SPACE)
    assert meta["ModelGrid"]["shape"] == [197, 233, 189]
    assert meta["ModelGrid"]["affine"] == NILEARN.affine.tolist()
    assert meta["ModelPreprocessing"] == ANTS_N4
    space_warning, prep_warning = meta["ModelDomainWarnings"]
    assert FSL_SPACE in space_warning and "affinely close" in space_warning
    assert "fsl backend (FAST" in prep_warning and "ants backend (N4" in prep_warning
    assert "warnings" not in meta  # 1 mm voxels: the model's resolution


def test_image_on_the_model_grid_is_not_resampled(mni_model, heads, on_model_grid, monkeypatch):
    """On the model's own grid nothing is resampled: the result is bit-identical to a call
    that names no space (the path taken before spaces were compared)."""
    out, meta = on_model_grid
    assert meta["ResampledToModelGrid"] is False and "Resampling" not in meta
    assert "ModelDomainWarnings" not in meta

    def refuse(*args, **kwargs):
        raise AssertionError("resampled")

    monkeypatch.setattr(models.domain, "resample", refuse)
    harmonizer = Harmonizer.from_dir(mni_model, device="cpu")
    plain, plain_meta = harmonizer.harmonize(heads[0], preprocessing=ANTS_N4)
    assert np.array_equal(out.get_fdata(), plain.get_fdata())
    assert plain_meta["ResampledToModelGrid"] is False and "InputSpace" not in plain_meta


def test_disarm_harmonize_reads_the_space_and_sidecar(mni_model, heads, tmp_path, capsys):
    """disarm-harmonize takes the space from the file name (space-MNI152NLin6Asym) and the
    preprocessing from the sidecar beside it (fsl backend: FAST)."""
    from pipeline.cli import harmonize as cli_harmonize

    dst = tmp_path / "h.nii.gz"
    argv = [heads[1].get_filename(), str(dst), "--model", str(mni_model), "--nthreads", "1"]
    assert cli_harmonize.main(argv) == 0
    meta = json.loads((tmp_path / "h.json").read_text())
    assert meta["ResampledToModelGrid"] is True and meta["InputSpace"] == FSL_SPACE
    assert len(meta["ModelDomainWarnings"]) == 2 and "FAST" in meta["ModelDomainWarnings"][1]
    err = capsys.readouterr().err
    assert err.count("disarm-harmonize: warning:") == 2 and "Traceback" not in err
    assert nib.load(dst).shape == FSL.shape


def test_when_an_image_is_resampled():
    domain = ModelDomain.from_card(mni_card(get_config("fast", n_scanners=2)))
    fsl = nib.Nifti1Image(np.zeros(FSL.shape, np.float32), FSL.affine)
    assert domain.resamples(fsl, FSL_SPACE)
    assert domain.resamples(fsl, MODEL_SPACE)  # a cropped copy of the model's own grid
    assert not domain.resamples(fsl, None)  # space unknown: nothing assumed
    assert not domain.resamples(fsl, "T1w")  # another world
    two_mm = nib.Nifti1Image(np.zeros((91, 109, 91), np.float32), np.diag([-2.0, 2, 2, 1]))
    assert not domain.resamples(two_mm, FSL_SPACE)  # another resolution: grid_warnings says so
    old_card = {"training": {"grid": {"voxel_size_mm": [1.0] * 3, "shape": [197, 233, 189]}}}
    assert not ModelDomain.from_card(old_card).resamples(fsl, FSL_SPACE)  # no affine recorded
    assert ModelDomain.from_card(old_card).warnings(FSL_SPACE, {"Backend": "fsl"}) == []


def test_domain_warnings():
    domain = ModelDomain.from_card(mni_card(get_config("fast", n_scanners=2)))
    assert domain.warnings(MODEL_SPACE, ANTS_N4) == []
    assert domain.warnings(None, None) == []
    (other_world,) = domain.warnings("T1w", None)
    assert f"register it to {MODEL_SPACE} first" in other_world
    # sidecars written before BiasCorrection: the backend's (fsl: FAST)
    (prep,) = domain.warnings(MODEL_SPACE, {"Backend": "fsl"})
    assert "fsl backend (FAST bias correction)" in prep


def test_resample_is_linear_in_world_coordinates():
    """A linear ramp in world coordinates is reproduced exactly by linear interpolation on a
    grid shifted by half a voxel and turned; where the source grid does not reach, the
    fill (back) or the constant (forth)."""
    src = Grid((30, 32, 28), np.array([[1.0, 0, 0, -15], [0, 1, 0, -16], [0, 0, 1, -14],
                                       [0, 0, 0, 1]]))  # fmt: skip
    dst = Grid((20, 22, 34), np.array([[0, -1.0, 0, 10.5], [1, 0, 0, -10.5], [0, 0, 1, -17.5],
                                       [0, 0, 0, 1]]))  # fmt: skip

    def ramp(grid):
        ijk = np.indices(grid.shape).reshape(3, -1).astype(float)
        xyz = grid.affine[:3, :3] @ ijk + grid.affine[:3, 3:]
        return (2 * xyz[0] - xyz[1] + 0.5 * xyz[2] + 100).reshape(grid.shape).astype(np.float32)

    moved = resample(ramp(src), src, dst, -1.0)
    inside = moved != -1.0
    assert inside.mean() > 0.5 and (~inside).any()  # dst reaches beyond src along z
    np.testing.assert_allclose(moved[inside], ramp(dst)[inside], atol=1e-3)

    domain = ModelDomain(None, dst, {})
    fill = np.full(src.shape, -7.0, np.float32)
    back = domain.from_model_grid(ramp(dst), src, fill)
    reached = back != -7.0
    assert reached.any() and (~reached).any()
    np.testing.assert_allclose(back[reached], ramp(src)[reached], atol=1e-3)


def test_shipped_model_card_names_its_domain():
    """The default model: ants-preprocessed (N4) heads on nilearn's 1 mm MNI152NLin2009aSym
    grid; its weights still match the card's sha256."""
    from models import DEFAULT_MODEL_DIR
    from models.checkpoint import read_card, sha256_file

    card = read_card(DEFAULT_MODEL_DIR)
    domain = ModelDomain.from_card(card)
    assert domain.space == MODEL_SPACE and domain.grid.same_as(NILEARN)
    assert (domain.preprocessing["Backend"], domain.preprocessing["BiasCorrection"]) == (
        "ants",
        "N4",
    )
    assert sha256_file(DEFAULT_MODEL_DIR / "model.safetensors") == card["weights_sha256"]
