"""DISARM networks: reference sizes, any input size, both configurations."""

import itertools

import numpy as np
import pytest
import torch

from models.disarm import (
    Disarm,
    _blend_weight,
    apply_landmarks,
    landmark_levels,
    monotone_values,
    one_hot,
    windows,
)
from models.networks import (
    AnatomyEncoder,
    ContentDiscriminator,
    Generator,
    ImageDiscriminator,
    NetworkConfig,
    ScannerEncoder,
    get_config,
    reference_config,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_reference_parameter_counts():
    """E_b, E_s and G have exactly the reference code's sizes (16k, 64k, 93k for C=5)."""
    cfg = reference_config(5)
    assert n_params(AnatomyEncoder(cfg)) == 16136
    assert n_params(ScannerEncoder(cfg)) == 63832
    assert n_params(Generator(cfg)) == 92581
    assert 20_000 < n_params(ContentDiscriminator(cfg)) < 30_000


@pytest.mark.parametrize("name", ["reference", "fast"])
@pytest.mark.parametrize("size", [(16, 16, 16), (17, 20, 23), (9, 31, 12)])
def test_any_size_round_trip(name, size):
    torch.manual_seed(0)
    model = Disarm(get_config(name, n_scanners=3)).eval()
    x = torch.rand(2, 1, *size) * 2 - 1
    c = one_hot([0, 2], 3)
    with torch.no_grad():
        zb, x_pad = model.content(x)
        mu, logvar = model.scanner(x, c)
        y = model.generate(zb, mu, c, x_pad, size)
        logits_b = model.dis_b(zb)
        patch, cls = model.dis_enc(y)
    f = model.cfg.factor
    assert zb.shape[:2] == (2, 8)
    assert tuple(zb.shape[2:]) == tuple(
        -(-s // f) * f // 2 // model.cfg.io_downsample for s in size
    )
    assert mu.shape == logvar.shape == (2, 8)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert logits_b.shape == (2, 3) and cls.shape == (2, 3) and patch.shape[:2] == (2, 1)


def test_image_discriminator_tiny_input():
    d = ImageDiscriminator(reference_config(2))
    patch, cls = d(torch.randn(1, 1, 5, 6, 7))
    assert cls.shape == (1, 2) and torch.isfinite(patch).all()


def test_affine_generator_starts_as_identity():
    """The affine head starts at zero: a new affine model returns its input exactly."""
    model = Disarm(get_config("fast", n_scanners=2, output="affine")).eval()
    x = torch.rand(1, 1, 13, 14, 15)
    c = one_hot([1], 2)
    with torch.no_grad():
        zb, x_pad = model.content(x)
        y = model.generate(zb, torch.randn(1, 8), c, x_pad, (13, 14, 15))
    torch.testing.assert_close(y, x)


def test_curves_generator_starts_as_identity_and_maps_levels_not_edges():
    """output="curves": a new model returns its input (within 0.02); a curve that lifts one
    knot lifts the voxels at that level and leaves levels far from it as they were."""
    from models.disarm import apply_curves

    model = Disarm(get_config("curves", n_scanners=2)).eval()
    x = torch.rand(1, 1, 13, 14, 15) * 3 - 1
    with torch.no_grad():
        zb, x_pad = model.content(x)
        y = model.generate(zb, torch.randn(1, 8), one_hot([1], 2), x_pad, (13, 14, 15))
    torch.testing.assert_close(y, x, atol=0.02, rtol=0)
    levels = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).view(1, 1, 6, 1, 1)
    shifts = torch.zeros(1, 5, 6, 1, 1)
    shifts[:, 2] = 0.4  # the knot at 0.5 of 5 knots over [-1, 2]
    out = apply_curves(levels, shifts, -1.0, 2.0).flatten()
    assert out[3] > 0.5 + 0.3  # at the knot: lifted (by tanh-bounded 0.4)
    torch.testing.assert_close(out[:2], levels.flatten()[:2])  # two knots away: unchanged
    assert out[-1] == pytest.approx(2.0)  # beyond the range: clamped to the end knot


def test_curves_generator_draws_from_the_canvas():
    """Two inputs with one content code but different levels get different curves: G sees the
    input it maps."""
    torch.manual_seed(0)
    model = Disarm(get_config("curves", n_scanners=2)).eval()
    torch.nn.init.normal_(model.gen.head.weight, 0, 0.05)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        zb, x_pad = model.content(x)
        a = model.generate(zb, torch.zeros(1, 8), one_hot([0], 2), x_pad, (16, 16, 16))
        b = model.generate(zb, torch.zeros(1, 8), one_hot([0], 2), x_pad * 0.5, (16, 16, 16))
    assert not torch.allclose(a, 0.5 * b * 2)
    assert (a - x).abs().mean() > 1e-3


def test_window_curves_map_a_window_by_one_increasing_curve():
    """curve_grid="window": a new model is the identity; a trained-looking head gives one
    curve for the whole window (equal inputs map to equal outputs wherever they lie) that
    never decreases (an edge keeps its sign), and G builds no upsampling layers."""
    from models.disarm import apply_knots, monotone_knots

    torch.manual_seed(3)
    model = Disarm(get_config("window-curves", n_scanners=2)).eval()
    assert not hasattr(model.gen, "up2")
    x = torch.rand(2, 1, 16, 16, 16) * 3 - 1
    z, c = torch.zeros(2, 8), one_hot([0, 1], 2)
    with torch.no_grad():
        zb, x_pad = model.content(x)
        y = model.generate(zb, z, c, x_pad, (16, 16, 16))
        torch.testing.assert_close(y, x, atol=0.03, rtol=0)
        torch.nn.init.normal_(model.gen.head[-1].weight, 0, 0.5)
        x[:, :, 0, 0, 0] = x[:, :, 9, 9, 9] = 0.3  # one level at two places
        zb, x_pad = model.content(x)
        y = model.generate(zb, z, c, x_pad, (16, 16, 16))
    assert (y - x).abs().mean() > 0.05
    torch.testing.assert_close(y[:, :, 0, 0, 0], y[:, :, 9, 9, 9])
    order = x.flatten(1).argsort(1)
    assert (y.flatten(1).gather(1, order).diff(dim=1) >= -1e-6).all()
    knots = monotone_knots(torch.tensor([[0.0, -9.0, 9.0]]), -1.0, 2.0)
    assert knots[0, 0] == -1.0 and 0 < knots[0, 1] + 1.0 < 1e-3 and knots[0, 2] > 12.0
    levels = torch.tensor([-1.0, 0.5, 2.0]).view(1, 1, 3)
    torch.testing.assert_close(apply_knots(levels, knots, -1.0, 2.0), knots.view(1, 1, 3))


@pytest.mark.parametrize("config", ["head-curves", "landmark-curves"])
def test_head_curves_give_every_window_of_a_head_one_curve(config):
    """curve_grid="head": a new model is the identity; the curve depends on the head's
    quantiles, not on the window, so two windows with different content map one level alike
    (the windows' gains set to zero), and ``output_quantiles`` is where that curve takes the
    head's quantiles; windowed translation reads the whole head's quantiles. Knots at even
    levels or at the head's own quantiles (landmark-curves) alike."""
    torch.manual_seed(4)
    model = Disarm(get_config(config, n_scanners=2)).eval()
    assert not hasattr(model.gen, "up2")
    x = torch.rand(1, 1, 32, 16, 16) * 3 - 1
    z, c = torch.zeros(1, 8), one_hot([0], 2)
    with torch.no_grad():
        torch.testing.assert_close(model.translate(x, z, c, tile=16), x, atol=0.03, rtol=0)
        torch.nn.init.normal_(model.gen.head[-1].weight, 0, 0.5)
        torch.nn.init.zeros_(model.gen.gain[-1].weight)
        head_q = model.head_quantiles(x)
        a, b = x[..., :16, :, :].clone(), x[..., 16:, :, :].clone() * 0.2
        a[..., 0, 0, 0] = b[..., 5, 5, 5] = 0.3
        ys = []
        for w in (a, b):
            zb, pad = model.content(w)
            ys.append(model.generate(zb, z, c, pad, (16, 16, 16), head_q))
        assert (ys[0] - a).abs().mean() > 0.05
        torch.testing.assert_close(ys[0][..., 0, 0, 0], ys[1][..., 5, 5, 5])
        # another head's quantiles give another curve for the same window
        zb, pad = model.content(a)
        other = model.generate(zb, z, c, pad, (16, 16, 16), model.head_quantiles(x * 0.5))
        assert (other - ys[0]).abs().mean() > 1e-3
        # a monotone curve moves quantiles with their voxels (none here crosses the
        # background level that head_quantiles leaves out)
        x = torch.rand(1, 1, 32, 16, 16) * 2 - 0.5
        whole = model.translate(x, z, c)  # one window: the whole head
        assert (whole > -0.9).all()
        q_out = model.output_quantiles(model.head_quantiles(x), z, c)
    torch.testing.assert_close(q_out, model.head_quantiles(whole), atol=0.02, rtol=0)


@pytest.mark.parametrize("output", ["affine", "detail", "curves"])
def test_fast_output_keeps_fine_detail(output):
    """A non-trivial generator changes the image but keeps 1-voxel detail of the input."""
    torch.manual_seed(1)
    model = Disarm(get_config("fast", n_scanners=2, output=output)).eval()
    torch.nn.init.normal_(model.gen.head.weight, 0, 0.05)
    x = torch.linspace(0, 1, 24).view(1, 1, 1, 1, 24).repeat(1, 1, 24, 24, 1)  # seen by E_b
    x[..., ::2, :, :] += 1.0  # a 1-voxel stripe pattern, invisible at half resolution
    with torch.no_grad():
        zb, x_pad = model.content(x)
        y = model.generate(zb, torch.zeros(1, 8), one_hot([0], 2), x_pad, (24, 24, 24))
    stripes = (y[..., ::2, :, :] - y[..., 1::2, :, :]).abs().mean()
    assert not torch.allclose(y, x)
    assert stripes > 0.4


@pytest.mark.parametrize("gate", [False, True])
def test_detail_output_is_generated_image_plus_lost_detail(gate):
    """output="detail": y = up(G(...)) + x - up(down(x)), on odd sizes too; with the gate,
    the detail is scaled by up(sigmoid(G's second channel))."""
    torch.manual_seed(2)
    model = Disarm(get_config("fast", n_scanners=2, detail_gate=gate)).eval()
    assert model.cfg.output == "detail"
    x = torch.rand(1, 1, 13, 14, 15)
    with torch.no_grad():
        zb, x_pad = model.content(x)
        z, c = torch.zeros(1, 8), one_hot([0], 2)
        y = model.generate(zb, z, c, x_pad, (13, 14, 15))
        low = torch.nn.functional.interpolate(
            model.gen(zb, z, c), scale_factor=2, mode="trilinear", align_corners=False
        )
    gain = torch.sigmoid(low[:, 1:]) if gate else 1.0
    assert low.shape[1] == (2 if gate else 1)
    expected = model.crop(low[:, :1] + gain * model.detail(x_pad), (13, 14, 15))
    torch.testing.assert_close(y, expected)
    # detail of a constant image is zero: G alone decides its intensities
    flat = torch.full((1, 1, 12, 12, 12), 0.3)
    assert model.detail(flat).abs().max() < 1e-6


def test_config_round_trip_and_errors():
    cfg = get_config("fast", n_scanners=4, z_dim=6)
    assert NetworkConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown network configuration"):
        get_config("huge")
    with pytest.raises(ValueError, match="unknown"):
        NetworkConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError):
        NetworkConfig(n_scanners=1)


@pytest.mark.parametrize("overlap", [0.5, 0.25])
@pytest.mark.parametrize("size", [(10, 40, 41), (96, 97, 182)])
def test_windows_cover_the_volume_with_their_overlap(size, overlap):
    tile = 32
    boxes = windows(size, tile, overlap)
    count = np.zeros(size, dtype=int)
    for box in boxes:
        assert all(sl.stop - sl.start == min(tile, n) for sl, n in zip(box, size, strict=True))
        count[box] += 1
    assert count.min() >= 1
    # neighbours along an axis overlap by at least the asked share of a tile
    for axis, n in enumerate(size):
        starts = sorted({box[axis].start for box in boxes})
        assert all(b - a <= tile * (1 - overlap) for a, b in itertools.pairwise(starts)), starts
        assert starts[-1] + min(tile, n) == n
    if overlap < 0.5 and max(size) > 3 * tile:  # fewer windows than with half shared
        assert len(boxes) < len(windows(size, tile))


def test_head_curve_windows_blend_their_gains_into_one_field():
    """Head curves: windowed translation blends the windows' log-gains (sine weights) into one
    field and applies the head's one curve to the gain-corrected head. With one gain for every
    window that is the whole-volume translation; with gains that differ it is that field's
    curve (not the blend of each window's curved output); skipped windows keep the input."""
    torch.manual_seed(6)
    model = Disarm(get_config("landmark-curves", n_scanners=2)).eval()
    x = torch.rand(1, 1, 30, 26, 28) * 2.5 - 1
    z, c = torch.zeros(1, 8), one_hot([1], 2)
    with torch.no_grad():
        torch.nn.init.normal_(model.gen.head[-1].weight, 0, 0.5)
        torch.nn.init.zeros_(model.gen.gain[-1].weight)
        torch.nn.init.constant_(model.gen.gain[-1].bias, 0.2)  # one gain, exp(0.19), for all
        whole = model.translate(x, z, c)
        assert (whole - x).abs().mean() > 0.05
        for overlap in (0.5, 0.25):
            tiled = model.translate(x, z, c, tile=12, overlap=overlap)
            torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
        # gains that differ from window to window: the expected field, built by hand
        torch.nn.init.normal_(model.gen.gain[-1].weight, 0, 0.5)
        torch.nn.init.zeros_(model.gen.gain[-1].bias)
        x[..., 15:, :, :] *= 0.3  # windows that differ
        head_q = model.head_quantiles(x)
        w = _blend_weight((12, 12, 12), x.device)
        for overlap in (0.5, 0.25):
            log_gain, weight, outputs = (torch.zeros_like(x) for _ in range(3))
            gains = []
            for box in windows(tuple(x.shape[2:]), 12, overlap):
                zb, pad = model.content(x[(..., *box)])
                g = model._window_log_gain(model._raw(zb, z, c, pad, head_q))
                log_gain[(..., *box)] += w * g
                weight[(..., *box)] += w
                outputs[(..., *box)] += w * model.generate(zb, z, c, pad, (12, 12, 12), head_q)
                gains.append(float(g))
            field = (x + 1) * (log_gain / weight).exp() - 1
            raw = model.gen.head_curve(head_q, c, z)
            expected = model._apply_head_curve(field, raw, head_q)
            tiled = model.translate(x, z, c, tile=12, overlap=overlap)
            torch.testing.assert_close(tiled, expected, atol=1e-5, rtol=0)
            assert max(gains) - min(gains) > 0.01  # the windows' gains do differ
            # ... so blending the windows' curved outputs is another (close) image
            assert (outputs / weight - tiled).abs().max() > 1e-5
        needed = torch.zeros_like(x, dtype=torch.bool)
        needed[..., :4, :4, :4] = True
        part = model.translate(x, z, c, tile=12, needed=needed)
    torch.testing.assert_close(part[..., 24:, 20:, 22:], x[..., 24:, 20:, 22:])
    assert (part[..., :4, :4, :4] - x[..., :4, :4, :4]).abs().mean() > 0.05
    with pytest.raises(ValueError, match="overlap"):
        windows((40, 40, 40), 12, 1.0)


def test_tiled_translation_matches_whole_volume_where_one_window_fits():
    torch.manual_seed(3)
    model = Disarm(get_config("fast", n_scanners=2)).eval()
    x = torch.rand(1, 1, 20, 22, 21)
    z, c = torch.zeros(1, 8), one_hot([1], 2)
    with torch.no_grad():
        whole = model.translate(x, z, c)
        one_window = model.translate(x, z, c, tile=24)
        tiled = model.translate(x, z, c, tile=12)
    torch.testing.assert_close(one_window, whole)
    assert tiled.shape == x.shape and torch.isfinite(tiled).all()
    assert not torch.allclose(tiled, whole)  # windows see their own instance-norm statistics


def test_tiled_translation_skips_windows_with_nothing_needed():
    torch.manual_seed(4)
    model = Disarm(get_config("fast", n_scanners=2)).eval()
    x = torch.rand(1, 1, 24, 24, 24)
    z, c = torch.zeros(1, 8), one_hot([0], 2)
    needed = torch.zeros_like(x, dtype=torch.bool)
    needed[..., :4, :4, :4] = True  # only the first corner's windows run
    with torch.no_grad():
        full = model.translate(x, z, c, tile=12)
        part = model.translate(x, z, c, tile=12, needed=needed)
    torch.testing.assert_close(part[..., :4, :4, :4], full[..., :4, :4, :4])
    torch.testing.assert_close(part[..., 18:, 18:, 18:], x[..., 18:, 18:, 18:])


@pytest.mark.parametrize("batch", [2, 3])
def test_windows_run_in_batches_give_the_one_by_one_result(batch):
    torch.manual_seed(5)
    model = Disarm(get_config("fast", n_scanners=2)).eval()
    x = torch.rand(1, 1, 26, 24, 30)
    z, c = torch.randn(1, 8), one_hot([1], 2)
    with torch.no_grad():
        single = model.translate(x, z, c, tile=12, batch=1)
        batched = model.translate(x, z, c, tile=12, batch=batch)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one image"):
        model.translate(x.expand(2, -1, -1, -1, -1), z, c, tile=12)


@pytest.mark.parametrize("seed", [0, 1])
def test_resize_upsampling_prints_no_checkerboard(seed):
    """A freshly initialised generator fed a smooth content code: the reference's stride-2
    transposed convolution prints a period-2 pattern (Odena et al. 2016), resize-convolution
    does not (models.evaluate.nyquist_energy: the image's period-2 share, brain-scaled)."""
    from models.evaluate import nyquist_energy
    from models.networks import Generator

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 8, 4, 4, 4, generator=g)
    zb = torch.nn.functional.interpolate(coarse, size=(16, 16, 16), mode="trilinear")
    energy = {}
    for scheme in ("resize", "transpose"):
        torch.manual_seed(seed)
        gen = Generator(get_config("reference", n_scanners=2, upsample=scheme)).eval()
        with torch.no_grad():
            y = gen(zb, torch.zeros(1, 8), torch.zeros(1, 2))[0, 0].numpy()
        energy[scheme] = nyquist_energy(y, np.ones(y.shape, bool))
    assert energy["transpose"] > 1e-3
    assert energy["resize"] < 1e-4 and energy["resize"] < 0.02 * energy["transpose"]


def test_up_norm_fixes_the_output_level_of_a_patch():
    """With instance norm after the upsampling layers (the reference), G's output level on a
    patch hardly follows its input's level; without it, it does (up_norm=False)."""
    from models.networks import Generator

    torch.manual_seed(0)
    zb = torch.randn(1, 8, 8, 8, 8)
    spread = {}
    for norm in (True, False):
        torch.manual_seed(1)
        gen = Generator(get_config("fast", n_scanners=2, up_norm=norm)).eval()
        with torch.no_grad():
            means = [gen(zb + s, torch.zeros(1, 8), torch.zeros(1, 2))[:, :1].mean().item()
                     for s in (-2.0, 0.0, 2.0)]  # fmt: skip
        spread[norm] = max(means) - min(means)
    assert spread[False] > 5 * spread[True]


def test_landmark_curves_pass_through_their_values_at_the_heads_quantiles():
    """Knots at a head's quantiles: the levels are the range's ends and the quantiles (tied
    ones opened), raw 0 is the identity, and the curve takes each landmark to its value and
    is linear between landmarks."""
    q = torch.tensor([[-0.5, 0.0, 0.0, 0.8]])
    levels = landmark_levels(q, -1.0, 2.0)
    assert levels[0, 0] == -1.0 and (levels.diff(dim=1) > 0).all()
    # an opened tie shifts the levels above it by the gap (1e-3), no more
    torch.testing.assert_close(
        levels[0, [1, 2, 4]], torch.tensor([-0.5, 0.0, 0.8]), atol=2e-3, rtol=0
    )
    assert 0 < levels[0, 3] - levels[0, 2] < 0.01
    x = torch.linspace(-1, 2, 31).view(1, 1, 31)
    identity = monotone_values(torch.zeros(1, 6), levels)
    torch.testing.assert_close(apply_landmarks(x, levels, identity, -1.0, 2.0), x)
    values = monotone_values(torch.tensor([[0.1, -2.0, 1.0, 0.0, 3.0, -1.0]]), levels)
    assert (values.diff(dim=1) > 0).all()
    at_levels = apply_landmarks(levels[:, :5].view(1, 1, 5), levels, values, -1.0, 2.0)
    torch.testing.assert_close(at_levels.view(1, 5), values[:, :5])  # the top: clamped to hi
    mid = (levels[:, 1:2] + levels[:, 4:5]) / 2  # between the first and last quantile...
    y = apply_landmarks(mid.view(1, 1, 1), levels, values, -1.0, 2.0)
    seg = int(torch.searchsorted(levels[0], mid[0], right=True)) - 1
    t = (mid[0, 0] - levels[0, seg]) / (levels[0, seg + 1] - levels[0, seg])
    torch.testing.assert_close(
        y.view(()), values[0, seg] + t * (values[0, seg + 1] - values[0, seg])
    )


def test_restorer_runs_on_the_scanner_free_output_only():
    """restoring-curves: a new restorer is the identity; once it holds weights it changes the
    scanner-free output (label zero), windowed or whole, and never a translation to a
    scanner."""
    torch.manual_seed(0)
    model = Disarm(get_config("restoring-curves", n_scanners=2)).eval()
    x = torch.rand(1, 1, 40, 40, 40) * 2 - 1
    z, free, to_scanner = torch.zeros(1, 8), torch.zeros(1, 2), one_hot([1], 2)
    with torch.no_grad():
        torch.testing.assert_close(model.translate(x, z, free, tile=32), x, atol=0.03, rtol=0)
        before = {t: model.translate(x, z, to_scanner, tile=t) for t in (None, 32)}
        plain = {t: model.translate(x, z, free, tile=t) for t in (None, 32)}
        torch.nn.init.normal_(model.gen.restorer.out.weight, 0, 0.1)
        for t in (None, 32):
            assert (model.translate(x, z, free, tile=t) - plain[t]).abs().mean() > 1e-3
            torch.testing.assert_close(model.translate(x, z, to_scanner, tile=t), before[t])
