"""The scanner-effect simulator: deterministic, plausible, float32, non-negative."""

import json

import numpy as np
import pytest

from models.scanners import FAMILIES, HELD_OUT_FAMILIES, TRAINING_FAMILIES, t1_weighted
from models.simulate import (
    ScannerProfile,
    apply_profile,
    default_profiles,
    legacy_profiles,
    load_profiles,
    resolve_profiles,
    robust_max,
    sample_profile,
    save_profiles,
    simulate_scanner,
    training_profiles,
    unseen_profiles,
)
from models.tissue import signal_ratios


@pytest.fixture(scope="module")
def head():
    """A small synthetic 'head': background, scalp-like shell, GM-like and WM-like regions."""
    z, y, x = np.mgrid[:40, :48, :36].astype(np.float32)
    r = np.sqrt(((z - 20) / 18) ** 2 + ((y - 24) / 22) ** 2 + ((x - 18) / 16) ** 2)
    img = np.zeros(r.shape, np.float32)
    img[r < 1.0] = 900.0  # scalp
    img[r < 0.9] = 80.0  # CSF
    img[r < 0.8] = 450.0  # GM
    img[r < 0.55] = 700.0  # WM
    return img


def test_default_profiles_distinct_and_split():
    profiles = default_profiles()
    assert len(profiles) >= 8
    assert len({p.name for p in profiles}) == len(profiles)
    params = {tuple(v for k, v in p.to_dict().items() if k not in ("name", "held_out"))
              for p in profiles}  # fmt: skip
    assert len(params) == len(profiles)
    assert len(training_profiles()) >= 4 and len(unseen_profiles()) >= 4
    assert resolve_profiles("default") == training_profiles()
    # held-out families are sequence/field combinations never drawn in training
    assert not set(TRAINING_FAMILIES) & set(HELD_OUT_FAMILIES)
    assert {p.family for p in training_profiles()} <= set(TRAINING_FAMILIES)
    assert {p.family for p in unseen_profiles()} <= set(HELD_OUT_FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_draws_are_t1_weighted_and_seeded(family):
    draws = [sample_profile(family, np.random.default_rng(i)) for i in range(40)]
    assert all(t1_weighted(p) and p.family == family for p in draws)
    assert len({(p.t1_gm_ms, p.noise_sigma) for p in draws}) == len(draws)  # randomised
    assert sample_profile(family, np.random.default_rng(3)) == draws[3]  # and seeded


def test_tissue_contrast_is_not_a_global_curve(head):
    """Scalp and WM of the same intensity come out different: the change depends on where a
    voxel is (brain or not), so no global intensity map (histogram matching) undoes it."""
    img = head.copy()
    img[img == 900.0] = 700.0  # scalp as bright as WM
    z, y, x = np.mgrid[:40, :48, :36]
    r = np.sqrt(((z - 20) / 18) ** 2 + ((y - 24) / 22) ** 2 + ((x - 18) / 16) ** 2)
    brain = r < 0.85
    p = sample_profile("mprage-3t", np.random.default_rng(0), other_gain=1.4, noise_sigma=0.0,
                       bias_strength=0.0, blur_fwhm_mm=0.0, slice_fwhm_mm=0.0, bit_depth=0,
                       gamma=1.0)  # fmt: skip
    out = simulate_scanner(img, p, voxel_size_mm=(2, 2, 2), seed=0, brain_mask=brain)
    scalp, wm = out[(r < 1.0) & (r >= 0.95)].mean(), out[r < 0.4].mean()
    assert scalp / wm == pytest.approx(1.4, rel=0.1)
    gm = out[(r < 0.75) & (r >= 0.6)].mean()  # GM/WM is now the sequence's ratio
    assert abs(signal_ratios(p)[1] - 450 / 700) > 0.05
    assert gm / wm == pytest.approx(signal_ratios(p)[1], rel=0.1)


@pytest.mark.parametrize("profile", default_profiles() + legacy_profiles(), ids=lambda p: p.name)
def test_simulate_plausible(head, profile):
    out = simulate_scanner(head, profile, voxel_size_mm=(2.0, 2.0, 2.0), seed=3)
    assert out.dtype == np.float32 and out.shape == head.shape
    assert np.isfinite(out).all() and out.min() >= 0
    # same units: robust maximum within the profile's scale +- 60%
    ratio = robust_max(out) / robust_max(head)
    assert 0.4 * profile.scale < ratio < 1.6 * profile.scale
    # anatomy kept: WM brighter than GM brighter than CSF, strongly correlated with the input
    wm, gm, csf = (out[head == v].mean() for v in (700.0, 450.0, 80.0))
    assert wm > gm > csf
    assert np.corrcoef(out.ravel(), head.ravel())[0, 1] > 0.9
    # and it did change something
    assert np.abs(out / profile.scale - head).mean() > 1.0


def test_simulate_deterministic_and_seeded(head):
    p = default_profiles()[2]
    a = simulate_scanner(head, p, seed=7)
    b = simulate_scanner(head, p, seed=7)
    c = simulate_scanner(head, p, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_patch_matches_volume_without_blur(head):
    """Patches simulated with origin/full_shape equal the whole-volume simulation (no blur)."""
    p = ScannerProfile("p", gamma=0.8, bias_strength=0.3, noise_sigma=0.0)
    ref = robust_max(head)
    full = apply_profile(head / ref, p, seed=1)
    patch = apply_profile(head[5:25, 10:30, 4:20] / ref, p, seed=1, origin_vox=(5, 10, 4),
                          full_shape=head.shape)  # fmt: skip
    np.testing.assert_allclose(patch, full[5:25, 10:30, 4:20], rtol=1e-5, atol=1e-6)


def test_profiles_json_roundtrip(tmp_path):
    path = tmp_path / "profiles.json"
    save_profiles(default_profiles(), path)
    assert load_profiles(path) == default_profiles()
    assert resolve_profiles(path) == training_profiles()


@pytest.mark.parametrize(
    "content",
    ["not json", "{}", "[]", json.dumps([{"name": "a", "bogus": 1}]),
     json.dumps([{"name": "a", "gamma": -1}]), json.dumps([{"name": "a"}, {"name": "a"}])],
)  # fmt: skip
def test_load_profiles_errors(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        load_profiles(path)


def test_rejects_4d(head):
    with pytest.raises(ValueError, match="3D"):
        simulate_scanner(head[..., None], default_profiles()[0])
