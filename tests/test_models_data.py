"""Training data: scanner pairs, simulated domains, patches and elastic augmentation."""

import nibabel as nib
import numpy as np
import pytest
import torch

from models.data import PairSampler, TrainImage, build_simulated, elastic_patch
from models.simulate import training_profiles


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    paths = []
    z, y, x = np.mgrid[:30, :34, :28].astype(np.float32)
    for i in range(3):
        r = np.sqrt(((z - 15) / 13) ** 2 + ((y - 17) / 15) ** 2 + ((x - 14) / 12) ** 2)
        data = np.where(r < 1, 400.0 + 200 * np.sin(z / (3 + i)), 2.0).astype(np.float32)
        p = root / f"sub-{i}_T1w.nii.gz"
        nib.save(nib.Nifti1Image(data, np.eye(4)), p)
        paths.append(str(p))
    return paths


def test_build_simulated_assignments(images):
    profiles = training_profiles()[:3]
    every = build_simulated(images, profiles, "all")
    assert len(every) == 9 and {im.scanner for im in every} == {p.name for p in profiles}
    split = build_simulated(images, profiles, "split")
    assert [im.scanner for im in split] == [p.name for p in profiles]
    with pytest.raises(ValueError):
        build_simulated(images[:1], profiles, "split")


def test_pairs_are_two_scanners_and_deterministic(images):
    profiles = training_profiles()
    ims = build_simulated(images, profiles)
    names = [p.name for p in profiles]
    a = PairSampler(ims, names, patch_size=16, elastic_p=0.5, clip_max=2.0, seed=3)
    b = PairSampler(ims, names, patch_size=16, elastic_p=0.5, clip_max=2.0, seed=3)
    for _ in range(6):
        xa, xb, ka, kb = a.sample()
        ya, yb, la, lb = b.sample()
        assert ka != kb and (ka, kb) == (la, lb)
        assert torch.equal(xa, ya) and torch.equal(xb, yb)
        assert xa.shape == (1, 1, 16, 16, 16)
        assert xa.min() >= -1 - 1e-5 and xa.max() <= 2.0 + 1e-5


def test_real_domains_and_whole_volumes(images):
    ims = [TrainImage(images[0], "A"), TrainImage(images[1], "B"), TrainImage(images[2], "B")]
    s = PairSampler(ims, ["A", "B"], patch_size=None, elastic_p=0.0, seed=0)
    xa, xb, ka, kb = s.sample()
    assert {ka, kb} == {0, 1} and xa.shape == (1, 1, 30, 34, 28)
    assert xa.min() == -1 and xa.max() == 1  # reference normalization clips at 1
    with pytest.raises(ValueError, match="no training images"):
        PairSampler(ims, ["A", "B", "C"])


def test_elastic_patch_deforms_smoothly():
    z, y, x = np.mgrid[:34, :34, :34].astype(np.float32)
    vol = torch.from_numpy(np.sin(z / 4) + np.cos(y / 5) + np.sin(x / 3))[None]
    a = elastic_patch(vol, 16, 9, (1, 1, 1), np.random.default_rng(0))
    b = elastic_patch(vol, 16, 9, (1, 1, 1), np.random.default_rng(0))
    crop = vol[:, 9:25, 9:25, 9:25]
    assert a.shape == (1, 16, 16, 16) and torch.equal(a, b)
    assert not torch.allclose(a, crop)
    assert np.corrcoef(a.ravel(), crop.ravel())[0, 1] > 0.5
