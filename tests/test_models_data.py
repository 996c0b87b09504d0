"""Training data: scanner pairs, simulated domains, patches and elastic augmentation."""

import nibabel as nib
import numpy as np
import pytest
import torch

from models.data import PairSampler, TrainImage, build_simulated
from models.elastic import elastic_patch
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
        p, q = a.sample(), b.sample()
        assert p.ka != p.kb and (p.ka, p.kb) == (q.ka, q.kb)
        assert torch.equal(p.xa, q.xa) and torch.equal(p.xb, q.xb)
        assert p.xa.shape == (1, 1, 16, 16, 16)
        assert p.xa.min() >= -1 - 1e-5 and p.xa.max() <= 2.0 + 1e-5
        assert p.clean is None  # not asked for travelling heads


def test_real_domains_and_whole_volumes(images):
    ims = [TrainImage(images[0], "A"), TrainImage(images[1], "B"), TrainImage(images[2], "B")]
    s = PairSampler(ims, ["A", "B"], patch_size=None, elastic_p=0.0, seed=0, paired=True)
    p = s.sample()
    assert {p.ka, p.kb} == {0, 1} and p.xa.shape == (1, 1, 30, 34, 28)
    assert p.xa.min() == -1 and p.xa.max() == 1  # reference normalization clips at 1
    assert p.clean is None  # real domains are never travelling heads
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


def test_travelling_heads_are_aligned_and_randomised(images):
    """Paired samples: one head, one patch, one deformation, two scanners drawn from their
    families, and the clean head; the two versions differ, their anatomy agrees."""
    profiles = training_profiles()[:3]
    ims = build_simulated(images, profiles)
    names = [p.name for p in profiles]
    s = PairSampler(ims, names, patch_size=16, elastic_p=1.0, clip_max=2.0, seed=1,
                    randomize=True, paired=True)  # fmt: skip
    assert s.paired
    for _ in range(4):
        p = s.sample()
        assert p.clean is not None and p.clean.shape == p.xa.shape == p.xb.shape
        a, b, c = (t.ravel().numpy() for t in (p.xa, p.xb, p.clean))
        assert not np.allclose(a, b)
        assert np.corrcoef(a, c)[0, 1] > 0.6 and np.corrcoef(b, c)[0, 1] > 0.6
    # randomised: the same label gives a new scanner at every draw
    im = ims[0]
    rng = np.random.default_rng(0)
    assert s._profile(im, rng) != s._profile(im, rng)
    fixed = PairSampler(ims, names, patch_size=16, seed=1, randomize=False)
    assert fixed._profile(im, rng) == im.profile


def test_head_quantiles_describe_the_whole_head_as_its_scanner_records_it(images):
    """head_quantiles=Q: each image of a pair comes with Q increasing quantiles of its whole
    head, of this draw's scanner (two scanners of one head differ), the same for any patch of
    it, and those of the stored image for a real domain."""
    from models.intensity import HEAD_STRIDE, head_quantiles, normalize, robust_range

    profiles = training_profiles()[:3]
    names = [p.name for p in profiles]
    s = PairSampler(build_simulated(images, profiles), names, patch_size=16, clip_max=2.0,
                    seed=2, paired=True, head_quantiles=8)  # fmt: skip
    p = s.sample()
    assert p.qa.shape == p.qb.shape == (1, 8)
    assert (p.qa.diff() >= 0).all() and not torch.allclose(p.qa, p.qb)
    assert PairSampler(build_simulated(images, profiles), names).sample().qa is None
    ims = [TrainImage(images[0], "A"), TrainImage(images[1], "B")]
    real = PairSampler(ims, ["A", "B"], patch_size=8, seed=0, head_quantiles=8)
    first, second = real.sample(), real.sample()
    q = first.qa if first.ka == 0 else first.qb
    assert torch.equal(q, second.qa if second.ka == 0 else second.qb)
    raw = nib.load(images[0]).get_fdata(dtype=np.float32)
    sub = normalize(raw, *robust_range(raw))[::HEAD_STRIDE, ::HEAD_STRIDE, ::HEAD_STRIDE]
    sub = torch.from_numpy(sub.astype(np.float16).astype(np.float32))[None, None]
    torch.testing.assert_close(q, head_quantiles(sub, 8))


def test_head_quantiles_keep_a_noisy_scanners_air_out():
    """Rician-like noise lifts air voxels above a plain background threshold; the head's
    quantiles (neighbourhood mean above 10% of the range) stay those of the head."""
    from models.intensity import head_quantiles, intensity_quantiles

    z, y, x = np.mgrid[:48, :48, :48].astype(np.float32)
    r = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    head = np.where(r < 16, np.where(r < 8, 0.6, -0.4), -1.0).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.08, head.shape)
    noisy = head + np.where(head == -1.0, np.abs(noise), noise)  # air: the noise's magnitude
    noisy_q = head_quantiles(torch.from_numpy(noisy.astype(np.float32))[None, None], 8)
    levels = (np.arange(8) + 0.5) / 8
    in_head = np.quantile(noisy[r < 16], levels)  # the head's own voxels, noise and all
    # all but the lowest quantile: the mask's rim (a voxel of air around the head) is there
    assert np.abs(noisy_q[0, 1:].numpy() - in_head[1:]).max() < 0.05
    plain = intensity_quantiles(torch.from_numpy(noisy.astype(np.float32))[None, None], 8)
    assert (plain[0, 1:].numpy() - in_head[1:]).min() < -0.3  # a plain threshold lets air in


def test_age_matched_partners_on_a_skewed_cohort(images):
    """Site A young, site B old but for a few: with an age window, pairs are drawn among the
    participants of similar age, so the sites' age difference is not a scanner difference."""
    young = [TrainImage(images[i % 3], "A", age=20.0 + i) for i in range(10)]
    old = [TrainImage(images[i % 3], "B", age=70.0 + i) for i in range(10)]
    old += [TrainImage(images[0], "B", age=25.0), TrainImage(images[1], "B", age=27.0)]
    s = PairSampler(young + old, ["A", "B"], patch_size=16, seed=0, age_window=5.0)
    rng = np.random.default_rng(0)
    picks = [s._partner(s.by_scanner["B"], young[4], rng).age for _ in range(30)]
    assert set(picks) <= {25.0, 27.0} and len(set(picks)) == 2
    free = PairSampler(young + old, ["A", "B"], patch_size=16, seed=0)
    picks = [free._partner(free.by_scanner["B"], young[4], rng).age for _ in range(30)]
    assert max(picks) >= 70
