"""The pure metric functions of benchmarks/bench_quality.py (the script runs end to end in
tests/test_benchmarks_smoke.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_quality as bq  # noqa: E402

SHAPE = (40, 40, 40)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Smooth random CSF/GM/WM regions (20/40/40%) at 0.2/0.5/0.8 plus noise; truth fractions."""
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.normal(size=SHAPE), 3)
    labels = np.digitize(field, np.percentile(field, [20, 60]))
    data = np.array([0.2, 0.5, 0.8])[labels] + rng.normal(0, 0.05, SHAPE)
    truth = np.bincount(labels.ravel(), minlength=3) / labels.size
    return data.astype(np.float32), np.ones(SHAPE, dtype=bool), truth


def test_tissue_fractions_of_a_three_tissue_phantom(phantom):
    data, mask, truth = phantom
    gm, wm = bq.tissue_fractions(data, mask)
    assert gm == pytest.approx(truth[1], abs=0.01)
    assert wm == pytest.approx(truth[2], abs=0.01)
    # gain and offset (z-score, WhiteStripe) do not change the segmentation
    assert bq.tissue_fractions(3 * data - 7, mask) == pytest.approx((gm, wm), abs=1e-4)
    # only the mask counts: a bright slab outside it changes nothing
    skull, inside = data.copy(), mask.copy()
    skull[:5], inside[:5] = 1e4, False
    assert bq.tissue_fractions(skull, inside) == bq.tissue_fractions(data[5:], mask[5:])


def test_tissue_fractions_of_a_constant_image_are_nan():
    gm, wm = bq.tissue_fractions(np.ones(SHAPE, np.float32), np.ones(SHAPE, bool))
    assert math.isnan(gm) and math.isnan(wm)


def test_coefficient_of_variation_and_pearson():
    assert bq.coefficient_of_variation([0.4, 0.5, 0.6]) == pytest.approx(0.2)  # sd 0.1 / 0.5
    assert bq.coefficient_of_variation([0.5, 0.5]) == 0.0
    assert bq.pearson([1, 2, 3, 4], [2, 4, 6, 9]) > 0.98
    assert bq.pearson([1, 2, 3, np.nan], [3, 2, 1, 5]) == pytest.approx(-1.0)  # NaN pair left out
    assert math.isnan(bq.pearson([1, 2], [1, 2]))  # too few
    assert math.isnan(bq.pearson([1, 2, 3], [1, 1, 1]))  # constant


def test_nearest_distribution_ignores_gain_and_offset():
    rng = np.random.default_rng(0)
    samples = {
        "normal": rng.normal(size=20_000),
        "uniform": rng.uniform(size=20_000),
        "skewed": rng.exponential(size=20_000),
    }
    refs = {name: np.percentile(v, bq.QUANTILES) for name, v in samples.items()}
    for name, v in samples.items():
        other = 40 * rng.choice(v, 5000) + 300  # another sample, another gain and offset
        assert bq.nearest_distribution(np.percentile(other, bq.QUANTILES), refs) == name


def test_biology_and_head_tissue():
    clean_gm = np.array([0.40, 0.45, 0.50, 0.55])
    ages = np.array([70.0, 50.0, np.nan, 20.0])
    records = [
        {"head": i, "scanner": k, "gm": g + 0.02 * k, "wm": 0.3, "checkerboard": 1.0}
        for k in range(2)
        for i, g in enumerate(clean_gm)
    ]
    bio = bq.biology(records, clean_gm, ages)
    assert bio["gm_r_clean"] == pytest.approx(1.0)  # an offset per scanner keeps r = 1
    assert bio["gm_age_r"] < -0.9  # GM falls with age; the head without age is left out
    one = bq.head_tissue([r for r in records if r["head"] == 0])
    assert one["gm_cov"] > 0 and one["wm_cov"] == 0.0 and math.isnan(one["target_hit"])


def test_participant_ages(tmp_path):
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tage\tsex\nsub-IXI012\t38.78\tM\nsub-IXI013\tn/a\tF\nsub-02\t61\tF\n"
    )
    assert bq.participant_ages(tmp_path) == {"IXI012": 38.78, "02": 61.0}
    assert bq.participant_ages(tmp_path / "absent") == {}


def test_cached_ssim_is_skimages_ssim_map_inside_the_mask():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    a = ndimage.gaussian_filter(rng.random((30, 34, 28)), 1).astype(np.float32)
    b = (a + 0.2 * rng.random(a.shape)).astype(np.float32)
    mask = np.zeros(a.shape, bool)
    mask[5:25, 5:30, 4:20] = True
    _, smap = structural_similarity(a, b, data_range=1.0, full=True)
    assert bq.masked_ssim(a, b, mask) == pytest.approx(float(smap[mask].mean()), abs=1e-5)
    assert bq.masked_ssim(a, a, mask) == pytest.approx(1.0, abs=1e-6)
    assert bq.masked_ssim(a, b, mask) < 0.99


def test_heads_are_at_least_two_and_unique():
    """One explicit head fails in one line (scanner accuracy is cross-validated across heads);
    a repeated label counts once."""
    with pytest.raises(bq.BenchError, match="at least 2 heads"):
        bq.choose_heads(["IXI1", "IXI2"], 6, ["IXI1", "IXI1"], [])
    assert bq.choose_heads(["IXI1", "IXI2"], 6, ["IXI2", "IXI1", "IXI2"], []) == ["IXI2", "IXI1"]
