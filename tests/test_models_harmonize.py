"""Harmonizer: modes, determinism, header kept, clear errors; evaluation helpers."""

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from models import evaluate
from models.checkpoint import CheckpointError, write_model_dir
from models.disarm import Disarm
from models.harmonize import (
    DEFAULT_MODEL_DIR,
    HarmonizeError,
    Harmonizer,
    grid_warnings,
    head_weight,
    inference_tile,
)
from models.networks import get_config
from models.simulate import unseen_profiles

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["reference", "fast"])
def harmonizer(request, tmp_path_factory):
    torch.manual_seed(0)
    cfg = get_config(request.param, n_scanners=3)
    model = Disarm(cfg)
    card = {
        "name": "test",
        "config": cfg.to_dict(),
        "scanners": ["ge", "philips", "siemens"],
    }
    card["scanner_codes"] = {
        s: [0.5 * i - 0.5] * cfg.z_dim for i, s in enumerate(card["scanners"])
    }
    path = tmp_path_factory.mktemp(request.param) / "model"
    write_model_dir(path, model.state_dict(), card)
    return Harmonizer.from_dir(path, device="cpu")


def phantom(shape=(19, 22, 17), seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(((z - c[0]) / c[0]) ** 2 + ((y - c[1]) / c[1]) ** 2 + ((x - c[2]) / c[2]) ** 2)
    data = np.where(r < 0.9, 600.0, 5.0) + np.where(r < 0.5, 300.0, 0.0)
    data = (data + rng.normal(0, 10, shape)).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=4)
    img.header.set_sform(affine, code=4)
    img.header["descrip"] = b"test head"
    return img


def test_scanner_free_deterministic_and_header_kept(harmonizer):
    img = phantom()
    a, meta_a = harmonizer.harmonize(img, mode="scanner-free", seed=1)
    b, meta_b = harmonizer.harmonize(img, mode="scanner-free", seed=2)
    assert np.array_equal(a.get_fdata(), b.get_fdata())
    assert np.array_equal(a.affine, img.affine) and not np.array_equal(a.affine, np.eye(4))
    assert int(a.header["sform_code"]) == 4 and int(a.header["qform_code"]) == 4
    assert a.header["descrip"] == img.header["descrip"]
    assert a.shape == img.shape and a.get_data_dtype() == np.float32
    out = a.get_fdata()
    assert np.isfinite(out).all() and out.min() >= 0
    assert meta_a["mode"] == "scanner-free" and meta_a["seed"] == 1
    assert meta_a["weights_sha256"] == harmonizer.card["weights_sha256"]
    assert meta_a["intensity"]["output_range"] == [0.0, 1000.0]


def test_target_and_reference_modes(harmonizer):
    img = phantom()
    free, _ = harmonizer.harmonize(img)
    tgt, meta = harmonizer.harmonize(img, mode="target", target="siemens")
    assert meta["target"] == "siemens" and meta["scanner_code"] == [0.5] * 8
    assert not np.array_equal(free.get_fdata(), tgt.get_fdata())
    ref, meta = harmonizer.harmonize(img, mode="reference", reference=phantom(seed=3))
    assert meta["scanner_code_source"].startswith("encoded") and ref.shape == img.shape
    inp, meta = harmonizer.harmonize(img, intensity_scale="input")
    lo, hi = meta["intensity"]["input_range"]
    assert meta["intensity"]["output_range"] == [lo, hi]


def test_unknown_target_lists_known_names(harmonizer):
    with pytest.raises(HarmonizeError, match="known: ge, philips, siemens"):
        harmonizer.harmonize(phantom(), mode="target", target="hitachi")


def test_4d_input_and_reference_refused(harmonizer):
    img = phantom()
    four = nib.Nifti1Image(np.stack([img.get_fdata()] * 2, -1).astype(np.float32), img.affine)
    with pytest.raises(HarmonizeError, match="3D"):
        harmonizer.harmonize(four)
    with pytest.raises(HarmonizeError, match="reference image must be 3D"):
        harmonizer.harmonize(img, mode="reference", reference=four)
    with pytest.raises(HarmonizeError, match="unknown mode"):
        harmonizer.harmonize(img, mode="magic")
    with pytest.raises(HarmonizeError, match="needs a target"):
        harmonizer.harmonize(img, mode="target")


def test_default_model_missing_is_a_clear_error(tmp_path, monkeypatch):
    import models.harmonize

    monkeypatch.setattr(models.harmonize, "DEFAULT_MODEL_DIR", tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no default DISARM model"):
        Harmonizer.from_dir(None)


def test_shipped_default_model_loads():
    assert (DEFAULT_MODEL_DIR / "model_card.json").is_file(), "the default model must ship"
    harmonizer = Harmonizer.from_dir(None, device="cpu")
    assert len(harmonizer.scanners) == len(harmonizer.card["scanners"]) >= 2
    img = phantom((20, 22, 18))
    out, meta = harmonizer.harmonize(img)
    assert np.allclose(out.affine, img.affine)
    assert meta["weights_sha256"] == harmonizer.card["weights_sha256"]
    assert "warnings" not in meta  # 1 mm, the grid the shipped model was trained on
    coarse = nib.Nifti1Image(img.get_fdata(dtype=np.float32), np.diag([1.0, 1.0, 2.5, 1.0]))
    (warning,) = grid_warnings(coarse, harmonizer.card)
    assert "1x1x2.5 mm voxels" in warning and "1x1x1 mm" in warning
    assert grid_warnings(coarse, {"training": {}}) == []  # cards without a grid: no opinion


def test_evaluation_helpers(harmonizer):
    img = phantom((20, 22, 18))
    assert evaluate.ssim(img.get_fdata(), img.get_fdata()) == pytest.approx(1.0)
    # SSIM to the input: 1 for the input itself and for a global gain (the comparison scales
    # both by their robust range); lower for a blurred copy, lower still for another image
    data = img.get_fdata().astype(np.float32)
    same = evaluate.ssim_to_input(img, nib.Nifti1Image(data * 3 + 10, img.affine))
    blurred = nib.Nifti1Image(ndimage.gaussian_filter(data, 1.5), img.affine)
    other = nib.Nifti1Image(np.roll(data, 5, axis=0), img.affine)
    s_blur, s_other = evaluate.ssim_to_input(img, blurred), evaluate.ssim_to_input(img, other)
    assert same == pytest.approx(1.0, abs=1e-3) and s_other < s_blur < 0.999
    rows = evaluate.travelling_heads([img], lambda im: im, unseen_profiles()[:3])
    # the identity 'harmonizer' changes nothing: before == after
    assert rows[0]["pair_ssim_before"] == pytest.approx(rows[0]["pair_ssim_after"])
    assert 0 < rows[0]["pair_mad_before"] < 1
    assert "pair_ssim_after" in evaluate.summarize(rows)


def test_head_weight_keeps_noisy_air_out():
    """The soft head mask is 1 in the head, 0 in noisy air far from it."""
    rng = np.random.default_rng(0)
    x = np.full((60, 60, 60), -1.0, np.float32) + rng.normal(0, 0.08, (60, 60, 60)).astype(
        np.float32
    )
    x[20:40, 20:40, 20:40] = 0.5
    w = head_weight(x)
    assert w[30, 30, 30] == pytest.approx(1.0)
    assert w[:5, :5, :5].max() < 1e-3 and w[55:, 55:, 55:].max() < 1e-3
    assert 0.0 <= w.min() and w.max() <= 1.0
    # found on every second voxel and interpolated back: the same mask, up to its rim
    w2 = head_weight(x, step=2)
    assert w2[30, 30, 30] == pytest.approx(1.0) and w2[:5, :5, :5].max() < 1e-3
    assert np.abs(w2 - w).mean() < 0.01
    # ... and in place: the mask's centre of mass within a tenth of a voxel, on an even grid
    even = np.pad(x, ((0, 1), (0, 2), (0, 3)), constant_values=-1.0)
    for a, b in ((w, w2), (head_weight(even), head_weight(even, step=2))):
        assert a.shape == b.shape
        np.testing.assert_allclose(ndimage.center_of_mass(b), ndimage.center_of_mass(a), atol=0.1)
    # no dilation is no dilation (scipy dilates until nothing changes for iterations=0)
    assert (head_weight(x, dilate=0, sigma=0.5) > 0.5).mean() < 3 * (x > 0).mean()


def test_inference_tile_follows_the_training_patch():
    cfg = get_config("fast", n_scanners=2).to_dict()
    assert inference_tile({"config": cfg, "training": {"patch_size": 64}}) == 96
    assert inference_tile({"config": cfg, "training": {"patch_size": 30}}) == 48
    assert inference_tile({"config": cfg, "training": {"patch_size": None}}) is None
    assert inference_tile({"config": cfg}) is None


def test_fine_detail_sees_blur_but_not_a_contrast_change():
    data = phantom((30, 32, 28)).get_fdata(dtype=np.float32)
    data += np.random.default_rng(1).normal(0, 60, data.shape).astype(np.float32) * (data > 100)
    img = nib.Nifti1Image(data, np.eye(4))
    same = evaluate.fine_detail(img, img)
    assert same["energy_ratio"] == pytest.approx(1.0) and same["correlation"] == pytest.approx(1.0)
    # a smooth, monotone change of contrast keeps the fine band
    brighter = nib.Nifti1Image(np.sqrt(np.clip(data, 0, None)) * 40, np.eye(4))
    kept = evaluate.fine_detail(img, brighter)
    assert kept["energy_ratio"] > 0.8 and kept["correlation"] > 0.95
    # a blur to twice the voxel size removes most of it
    blurred = nib.Nifti1Image(ndimage.gaussian_filter(data, 2 / 2.355), np.eye(4))
    assert evaluate.fine_detail(img, blurred)["energy_ratio"] < 0.5
