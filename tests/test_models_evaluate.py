"""models.evaluate.checkerboard_ratio: a period-2 pattern is seen, a smooth up-sampling is not."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from models.evaluate import checkerboard_ratio

SHAPE = (40, 44, 36)


@pytest.fixture(scope="module")
def head() -> tuple[np.ndarray, np.ndarray]:
    """A smooth random 'brain' with a little white noise (as MR images have), and a ball mask."""
    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.normal(size=SHAPE), 3).astype(np.float32)
    data = 500 + 2000 * smooth + rng.normal(0, 5, SHAPE).astype(np.float32)
    grid = np.indices(SHAPE) - (np.array(SHAPE) - 1)[:, None, None, None] / 2
    mask = (grid**2).sum(0) < 15**2
    return data.astype(np.float32), mask


def test_identity_and_gain_give_one(head):
    data, mask = head
    assert checkerboard_ratio(data, data, mask) == pytest.approx(1.0)
    assert checkerboard_ratio(data, 3 * data + 10, mask) == pytest.approx(1.0, rel=1e-3)
    # a method that rewrites the background (z-score, DISARM's air) is judged on the brain
    rescaled = np.where(mask, (data - 500) / 80, -3.0)
    assert checkerboard_ratio(data, rescaled, mask) == pytest.approx(1.0, rel=1e-3)


def test_added_checkerboard_is_seen(head):
    data, mask = head
    pattern = (-1.0) ** np.indices(SHAPE).sum(0)
    amplitude = 0.01 * (np.percentile(data, 99) - np.percentile(data, 1))  # 1% of the range
    assert checkerboard_ratio(data, data + amplitude * pattern, mask) > 1.5


def test_trilinear_upsampling_is_not_a_checkerboard(head):
    import torch

    data, mask = head
    low = torch.nn.functional.avg_pool3d(torch.from_numpy(data)[None, None], 2)
    up = torch.nn.functional.interpolate(low, size=SHAPE, mode="trilinear")[0, 0].numpy()
    assert checkerboard_ratio(data, up, mask) < 1.05


def test_uneven_transposed_convolution_is_a_checkerboard(head):
    """The artefact the measure is for: a stride-2 transposed convolution whose 8 kernel
    weights differ by a few percent stamps a period-2 pattern on the output."""
    import torch

    data, mask = head
    low = torch.nn.functional.avg_pool3d(torch.from_numpy(data)[None, None], 2)
    weight = 1.0 + 0.05 * torch.randn(1, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    up = torch.nn.functional.conv_transpose3d(low, weight, stride=2)[0, 0].numpy()
    assert checkerboard_ratio(data, up, mask) > 1.5


def test_ssim_structure_ignores_brightness_and_contrast():
    from models.evaluate import ssim_structure

    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.random((24, 24, 24)), 2).astype(np.float32)
    assert ssim_structure(smooth, smooth) == pytest.approx(1.0)
    assert ssim_structure(smooth, 3 * smooth + 5) == pytest.approx(1.0, abs=1e-6)
    other = ndimage.gaussian_filter(rng.random((24, 24, 24)), 2).astype(np.float32)
    assert abs(ssim_structure(smooth, other)) < 0.3
