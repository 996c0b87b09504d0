"""Template resolution (offline), backend choice and the alignment quality metric."""

from __future__ import annotations

import os

import nibabel as nb
import numpy as np
import pytest
from scipy import ndimage

from pipeline.qc import alignment_ncc
from pipeline.templates import (
    NILEARN_SPACE,
    TemplateError,
    fsl_available,
    get_template,
    resolve_backend,
)


@pytest.fixture
def no_fsl(tmp_path, monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    monkeypatch.setenv("DISARM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_nilearn_template_is_cached_on_disk(no_fsl):
    tpl = get_template("ants", resolution=2)
    assert (tpl.space, tpl.resolution, tpl.source, tpl.head) == (NILEARN_SPACE, 2, "nilearn", None)
    assert tpl.brain.parent == no_fsl / "templates" and tpl.grid == tpl.brain
    brain, mask = nb.load(tpl.brain), nb.load(tpl.mask)
    assert brain.shape == mask.shape == (99, 117, 95)
    assert np.allclose(brain.header.get_zooms(), 2.0)
    np.testing.assert_allclose(brain.affine, mask.affine)
    assert set(np.unique(mask.get_fdata())) == {0.0, 1.0}
    # no temporary files left behind; the second call reuses the files
    assert sorted(p.name for p in tpl.brain.parent.iterdir()) == sorted(
        [tpl.brain.name, tpl.mask.name]
    )
    before = os.stat(tpl.brain).st_mtime_ns
    assert get_template("ants", resolution=2) == tpl
    assert os.stat(tpl.brain).st_mtime_ns == before


def test_one_mm_template_grid(no_fsl):
    tpl = get_template("auto")
    assert tpl.resolution == 1
    assert nb.load(tpl.brain).shape == (197, 233, 189)


def test_bad_requests(no_fsl):
    with pytest.raises(ValueError, match="1 or 2"):
        get_template("ants", resolution=3)
    with pytest.raises(ValueError, match="unknown preprocessing backend"):
        resolve_backend("spm")
    with pytest.raises(TemplateError, match="FSLDIR"):
        get_template("fsl")


def test_resolve_backend(monkeypatch, tmp_path):
    monkeypatch.delenv("FSLDIR", raising=False)
    assert not fsl_available()
    assert resolve_backend("auto") == "ants"
    assert resolve_backend("fsl") == "fsl"
    # fake fast/flirt on PATH + $FSLDIR -> auto picks fsl
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("fast", "flirt"):
        exe = bindir / tool
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FSLDIR", str(tmp_path))
    assert fsl_available()
    assert resolve_backend("auto") == "fsl"


def test_ants_uses_fsl_templates_when_present(no_fsl, tmp_path, monkeypatch):
    std = tmp_path / "fsl" / "data" / "standard"
    std.mkdir(parents=True)
    img = nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    for suffix in ("", "_brain", "_brain_mask"):
        img.to_filename(std / f"MNI152_T1_2mm{suffix}.nii.gz")
    monkeypatch.setenv("FSLDIR", str(tmp_path / "fsl"))
    tpl = get_template("ants", 2)
    assert (tpl.source, tpl.space, tpl.head) == (
        "fsl",
        "MNI152NLin6Asym",
        std / "MNI152_T1_2mm.nii.gz",
    )
    assert tpl.grid == tpl.head
    # the 1 mm files are missing: the ants backend falls back to nilearn, fsl refuses
    assert get_template("ants", 1).source == "nilearn"
    with pytest.raises(TemplateError, match="MNI152_T1_1mm"):
        get_template("fsl", 1)


def test_alignment_ncc_separates_good_from_shifted(no_fsl):
    tpl = get_template("ants", 2)
    brain = nb.load(tpl.brain)
    assert alignment_ncc(brain, tpl) == pytest.approx(1.0)
    data = brain.get_fdata()
    shifted = nb.Nifti1Image(ndimage.shift(data, (0, 6, 4), order=1), brain.affine)
    score = alignment_ncc(shifted, tpl)
    assert score < 0.8
    # noise on a good alignment barely matters (3 mm smoothing)
    noisy = data + np.random.default_rng(0).normal(0, 0.05, data.shape)
    assert alignment_ncc(nb.Nifti1Image(noisy, brain.affine), tpl) > 0.95
    with pytest.raises(ValueError, match="template grid"):
        alignment_ncc(nb.Nifti1Image(data[:-1], brain.affine), tpl)
