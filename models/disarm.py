"""The DISARM model: the five networks, size handling and windowed translation.

Sizes: any 3D size works. An input is padded (edge replicate) to a multiple of
``cfg.factor``, pooled by ``cfg.io_downsample`` for the networks, and every output is cropped
back to the input size.

Outputs: with ``cfg.output == "image"`` (reference) the generator's tanh image is the output
(trilinearly upsampled if ``io_downsample > 1``). With ``"affine"`` the generator's two
channels are a log-gain ``g`` and an offset ``b`` at the networks' resolution; they are
upsampled (trilinear) and applied to the full-resolution image whose content code was used:
``y = exp(g) * x + b``. The harmonization is then a smooth, spatially varying intensity
transform: it cannot blur, and all the input's fine detail goes through (scaled by the gain).
But the identity (g = b = 0) reconstructs every image exactly, so L_rec and L_cc never ask the
scanner code for anything. With ``"detail"`` (fast) the generator draws the image at the
networks' resolution, as the reference does (so the content and scanner codes must carry it),
and the detail that resolution loses, ``x - up(down(x))``, is added back from the input whose
content code was used: ``y = up(G(z_b, z, c)) + x - up(down(x))``. With ``"curves"`` G draws
a piecewise-linear intensity curve per voxel of its grid (``curve_knots`` values at evenly
spaced input levels over the normalized range [-1, clip_max], as bounded shifts from the
identity), trilinearly upsampled and applied to that full-resolution image: ``y = curve(x)``.
G sees the image's local mean and spread on z_b's grid (the canvas) and the quantiles of its
head's intensities, so it can draw the curve that maps *this* image's tissue levels.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .intensity import HEAD_STRIDE, head_quantiles, intensity_quantiles
from .networks import (
    AnatomyEncoder,
    ContentDiscriminator,
    Generator,
    ImageDiscriminator,
    NetworkConfig,
    ScannerEncoder,
)

__all__ = [
    "Disarm",
    "one_hot",
    "autocast_for",
    "windows",
    "apply_curves",
    "apply_knots",
    "apply_landmarks",
    "landmark_levels",
    "monotone_values",
    "monotone_knots",
]

_GAIN_LIMIT = 3.0  # |log gain| <= 3: a factor of 20 either way is already absurd
_WINDOW_GAIN_LIMIT = 0.5  # head curves: |log gain| of a window <= 0.5 (a bias field's +-65%)


def one_hot(idx: torch.Tensor | list[int], n: int, device=None) -> torch.Tensor:
    idx = torch.as_tensor(idx, dtype=torch.long, device=device)
    return F.one_hot(idx, n).float()


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Disarm(nn.Module):
    """E_b, E_s, G, D_b and two image discriminators (encoded codes / random codes)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_b = AnatomyEncoder(cfg)
        self.enc_s = ScannerEncoder(cfg)
        self.gen = Generator(cfg)
        self.dis_b = ContentDiscriminator(cfg)
        self.dis_enc = ImageDiscriminator(cfg)  # judges images from encoded scanner codes
        self.dis_rand = ImageDiscriminator(cfg)  # judges images from random scanner codes

    # ---- size handling -------------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pad (B, 1, D, H, W) at the far end to a multiple of ``cfg.factor``."""
        f = self.cfg.factor
        size = tuple(x.shape[2:])
        extra = [(-s) % f for s in size]
        if any(extra):
            x = F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]), mode="replicate")
        return x, size

    def to_io(self, x_pad: torch.Tensor) -> torch.Tensor:
        k = self.cfg.io_downsample
        return F.avg_pool3d(x_pad, k) if k > 1 else x_pad

    @staticmethod
    def crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        return x[:, :, : size[0], : size[1], : size[2]]

    # ---- the three inference networks, on images of any size -----------------------------
    def content(
        self, x: torch.Tensor, noise: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, D, H, W) normalized -> (z_b, x_pad); x_pad is needed by :meth:`generate`.

        ``noise``: add E_b's training noise (default: in training mode, as the reference).
        """
        x_pad, _ = self.pad(x)
        return self.enc_b(self.to_io(x_pad), noise=noise), x_pad

    def scanner(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, D, H, W), c (B, C) -> (mu, logvar) (B, z_dim)."""
        x_pad, _ = self.pad(x)
        return self.enc_s(self.to_io(x_pad), c)

    def generate(
        self,
        zb: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        x_pad: torch.Tensor,
        size: tuple[int, int, int],
        head_q: torch.Tensor | None = None,
        restore: bool = False,
    ) -> torch.Tensor:
        """G(z_b, z, c) at the input size; ``x_pad`` = the padded image z_b was encoded from;
        ``head_q`` = the quantiles of its whole head (:meth:`head_quantiles`; head curves
        only, default: of ``x_pad`` itself, exact when it is the whole head); ``restore``:
        run G's restorer, when it has one, on the result (for the scanner-free output;
        windowed translation runs it once on the blended image instead)."""
        if self.cfg.curves_per_head and head_q is None:
            head_q = self.head_quantiles(x_pad)
        out = self._raw(zb, z, c, x_pad, head_q)
        if self.cfg.curves_per_window:
            k = self.cfg.head_knots if self.cfg.curves_per_head else self.cfg.curve_knots
            x = x_pad.float()
            if self.cfg.curves_per_head:  # the window's gain first: a bias field multiplies
                x = (x + 1.0) * self._window_log_gain(out).exp().view(-1, 1, 1, 1, 1) - 1.0
            y = self.crop(self._apply_head_curve(x, out[:, :k], head_q), size)
            if restore and self.gen.restorer is not None:
                y = self.gen.restorer(y)
            return y
        k = self.cfg.io_downsample
        if k > 1:
            out = F.interpolate(out, scale_factor=k, mode="trilinear", align_corners=False)
        if self.cfg.output == "curves":
            out = apply_curves(x_pad.float(), out.float(), -1.0, self.cfg.clip_max)
        elif self.cfg.output == "affine":
            gain = out[:, :1].float().clamp(-_GAIN_LIMIT, _GAIN_LIMIT).exp()
            out = gain * x_pad.float() + out[:, 1:].float()
        elif self.cfg.output == "detail" and self.cfg.detail_gate:
            gate = torch.sigmoid(out[:, 1:].float())
            out = out[:, :1].float() + gate * self.detail(x_pad)
        elif self.cfg.output == "detail" and k > 1:
            out = out.float() + self.detail(x_pad)
        return self.crop(out, size)

    def _raw(
        self,
        zb: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        x_pad: torch.Tensor,
        head_q: torch.Tensor | None,
    ) -> torch.Tensor:
        """G's raw output for content ``zb`` of the padded image ``x_pad`` (curves: with the
        canvas and quantiles G reads)."""
        canvas = quantiles = None
        if self.cfg.canvas_channels:
            # per-window curves read the quantiles at the networks' resolution (8x fewer
            # voxels to sort; a window's tissue levels are the same there)
            window = self.cfg.curves_per_window
            canvas = self.canvas(x_pad)
            quantiles = self.source_quantiles(self.to_io(x_pad) if window else x_pad)
        return self.gen(zb, z, c, canvas, quantiles, head_q)

    def _window_log_gain(self, raw: torch.Tensor) -> torch.Tensor:
        """Head curves: each window's bounded log-gain (B, 1) from G's raw output."""
        g = raw[:, self.cfg.head_knots :].float()
        return _WINDOW_GAIN_LIMIT * torch.tanh(g / _WINDOW_GAIN_LIMIT)

    def head_quantiles(self, x: torch.Tensor) -> torch.Tensor | None:
        """The quantiles (B, Q) of each whole head x (B, 1, ...) that a head-curves G reads
        (a 1-in-4 subsample, as training draws them); ``None`` for other configurations."""
        if not self.cfg.curves_per_head:
            return None
        return head_quantiles(x, self.cfg.curve_quantiles, HEAD_STRIDE)

    def output_quantiles(
        self, head_q: torch.Tensor | None, z: torch.Tensor, c: torch.Tensor, detach: bool = True
    ) -> torch.Tensor | None:
        """The head quantiles of G's output for a head with quantiles ``head_q``: the head's
        curve maps them (it is monotone; the windows' gains are left out). Head curves only;
        ``detach=False`` keeps the graph (a loss on them trains the curve)."""
        if head_q is None:
            return None
        raw = self.gen.head_curve(head_q, c, z)
        out = self._apply_head_curve(head_q.float()[:, None], raw, head_q)[:, 0]
        return out.detach() if detach else out

    def _apply_head_curve(
        self, x: torch.Tensor, raw: torch.Tensor, head_q: torch.Tensor | None
    ) -> torch.Tensor:
        """One monotone curve per image (per window, or per head) from G's raw knots (B, K),
        applied to x (B, 1, ...): at even levels, or at the head's landmarks ``head_q``."""
        lo, hi = -1.0, self.cfg.clip_max
        if self.cfg.curve_levels == "quantiles":
            levels = landmark_levels(head_q.float(), lo, hi)
            return apply_landmarks(x, levels, monotone_values(raw.float(), levels), lo, hi)
        return apply_knots(x, monotone_knots(raw.float(), lo, hi), lo, hi)

    def canvas(self, x_pad: torch.Tensor) -> torch.Tensor:
        """The input's local mean and standard deviation on z_b's grid (B, 2, d, h, w)."""
        f = self.cfg.factor
        x = x_pad.float()
        mean = F.avg_pool3d(x, f)
        var = (F.avg_pool3d(x * x, f) - mean * mean).clamp_min(0.0)
        return torch.cat([mean, (var + 1e-6).sqrt()], 1)  # + eps: sqrt'(0) is infinite

    def source_quantiles(self, x_pad: torch.Tensor) -> torch.Tensor:
        """Evenly spaced quantiles (B, Q) of each input's head voxels (above the background
        level -1 of normalized images; all voxels when too few are): where its tissues lie on
        the intensity axis, which the curves must map."""
        return intensity_quantiles(x_pad, self.cfg.source_quantiles)

    def detail(self, x_pad: torch.Tensor) -> torch.Tensor:
        """What the networks' resolution loses: ``x - up(down(x))`` (zero when k = 1)."""
        k = self.cfg.io_downsample
        if k == 1:
            return torch.zeros_like(x_pad, dtype=torch.float32)
        low = self.to_io(x_pad)
        low = F.interpolate(low, scale_factor=k, mode="trilinear", align_corners=False)
        return x_pad.float() - low.float()

    def translate(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        tile: int | None = None,
        needed: torch.Tensor | None = None,
        batch: int = 2,
        overlap: float = 0.5,
    ) -> torch.Tensor:
        """G(E_b(x), z, c) at x's size; with ``tile``, window by window (see :func:`windows`;
        neighbours overlap by at least ``overlap`` of a window).

        A model trained on patches has seen the instance-norm statistics of patches, never of a
        whole head with its background: windows of about the training patch size, overlapping
        (by half by default) and blended with a smooth weight, keep inference where training
        was; head curves blend the windows' gains and apply the head's curve once.
        ``needed`` (bool, x's shape): windows with no needed voxel are skipped and their voxels
        keep x's values. x holds one image (B = 1); its windows run ``batch`` at a time (on a
        CPU, PyTorch takes its slow direct 3D convolution for a batch of one small volume, and
        oneDNN's for two or more: two windows at once cost what one costs alone).
        """
        size = tuple(x.shape[2:])
        head_q = self.head_quantiles(x)  # of the whole head, before it is cut into windows
        # the scanner-free output (label and code zero, as R was trained) is restored, when
        # G has a restorer
        restore = self.gen.restorer is not None and not bool(c.any()) and not bool(z.any())
        if tile is None or all(s <= tile for s in size):
            zb, x_pad = self.content(x)
            return self.generate(zb, z, c, x_pad, size, head_q, restore)
        if x.shape[0] != 1:
            raise ValueError("windowed translation takes one image at a time")
        boxes = [
            box
            for box in windows(size, tile, overlap)
            if needed is None or bool(needed[(..., *box)].any())
        ]
        shape = tuple(min(tile, s) for s in size)  # every window's (see windows())
        batch = max(1, batch)
        if self.cfg.curves_per_head:
            out, covered = self._translate_head_curve(x, z, c, head_q, boxes, shape, batch)
        else:
            out, covered = self._translate_windows(x, z, c, boxes, shape, batch)
        if restore:  # R's convolutions see no windows: once, on the blended head; skipped
            # windows keep x's values
            out = torch.where(covered, self.gen.restorer(out).float(), out)
        return out

    def _translate_windows(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        boxes: list[tuple[slice, ...]],
        shape: tuple[int, ...],
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """G's outputs of the windows ``boxes`` blended (smooth weights) into x's size, and
        where a window covered; elsewhere x's values."""

        def outputs(zb: torch.Tensor, x_pad: torch.Tensor, n: int) -> torch.Tensor:
            return self.generate(zb, z.expand(n, -1), c.expand(n, -1), x_pad, shape).float()

        out, covered = self._blend_windows(x, boxes, shape, batch, outputs)
        return torch.where(covered, out, x.float()), covered

    def _translate_head_curve(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        head_q: torch.Tensor,
        boxes: list[tuple[slice, ...]],
        shape: tuple[int, ...],
        batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head curves: the windows' log-gains blended (smooth weights) into one field, and
        the head's one curve applied once to the whole gain-corrected head; the same as
        blending each window's curved output up to the curve's bend inside one voxel's gain
        spread, at one curve evaluation per voxel instead of one per window covering it.
        Returns the output (x's values where no window covered) and where a window covered."""

        def log_gains(zb: torch.Tensor, x_pad: torch.Tensor, n: int) -> torch.Tensor:
            hq = head_q.expand(n, -1)
            return self._window_log_gain(
                self._raw(zb, z.expand(n, -1), c.expand(n, -1), x_pad, hq)
            )

        log_gain, covered = self._blend_windows(x, boxes, shape, batch, log_gains)
        raw_curve = self.gen.head_curve(head_q, c, z)
        y = self._apply_head_curve((x.float() + 1.0) * log_gain.exp() - 1.0, raw_curve, head_q)
        return torch.where(covered, y, x.float()), covered

    def _blend_windows(
        self,
        x: torch.Tensor,
        boxes: list[tuple[slice, ...]],
        shape: tuple[int, ...],
        batch: int,
        per_window,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run E_b on the windows ``boxes`` of x, ``batch`` at a time, and blend what
        ``per_window(z_b, x_pad, n)`` gives for each (an image of the window's shape, or one
        value) with the smooth weight into x's size. Returns the blend (0 where no window
        covered) and where a window covered."""
        w = _blend_weight(shape, x.device)
        total = torch.zeros_like(x, dtype=torch.float32)
        weight = torch.zeros_like(total)
        for first in range(0, len(boxes), batch):
            group = boxes[first : first + batch]
            zb, x_pad = self.content(torch.cat([x[(..., *box)] for box in group]))
            for box, value in zip(group, per_window(zb, x_pad, len(group)), strict=True):
                total[(..., *box)] += w * value
                weight[(..., *box)] += w
        covered = weight > 0
        return torch.where(covered, total / weight.clamp_min(1e-12), 0.0), covered

    def inference_modules(self) -> list[nn.Module]:
        return [self.enc_b, self.enc_s, self.gen]


def apply_curves(x: torch.Tensor, shifts: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Piecewise-linear curves, one per voxel, applied to x (B, 1, ...).

    ``shifts`` (B, K, ...): each knot's value minus its level, softly bounded to +-(hi - lo) / 2
    (tanh); the K levels are evenly spaced over [lo, hi]. Between two knots the curve is
    linear. x is clamped to [lo, hi], the range normalized inputs are clipped to (an image G
    made, in the cycle, can stray beyond it).
    """
    n = shifts.shape[1]
    bound = (hi - lo) / 2
    shifts = bound * torch.tanh(shifts / bound)
    levels = torch.linspace(lo, hi, n, device=x.device, dtype=x.dtype)
    return _piecewise_linear(x, levels.view(1, n, *[1] * (x.dim() - 2)) + shifts, lo, hi)


_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


def monotone_knots(raw: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(B, K) raw outputs -> (B, K) increasing knot values of one curve per image.

    The first raw value shifts the lowest knot from ``lo``; the other K - 1 set the rises
    between knots as softplus multiples of the identity's rise, so a curve always increases
    and raw = 0 is the identity.
    """
    step = (hi - lo) / (raw.shape[1] - 1)
    rises = step * F.softplus(raw[:, 1:] + _SOFTPLUS_ONE)
    first = lo + raw[:, :1]
    return torch.cat([first, first + rises.cumsum(1)], 1)


#: the smallest gap between two landmarks (tied quantiles: a saturated or 8-bit head)
_LANDMARK_GAP = 1e-3


def landmark_levels(head_q: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """(B, Q) head quantiles -> (B, Q + 2) strictly increasing knot levels: ``lo``, the
    quantiles, ``hi`` (ties and reversals opened to ``_LANDMARK_GAP``)."""
    b = head_q.shape[0]
    ends = head_q.new_full((b, 1), lo), head_q.new_full((b, 1), hi)
    levels = torch.cat([ends[0], head_q.clamp(lo, hi), ends[1]], 1)
    gaps = levels.diff(dim=1).clamp_min(_LANDMARK_GAP)
    return torch.cat([ends[0], lo + gaps.cumsum(1)], 1)


def monotone_values(raw: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """(B, K) raw outputs -> (B, K) increasing values of one curve per image at its (B, K)
    ``levels``: the first raw value shifts the lowest, the others set each rise as a softplus
    multiple of the identity's rise (raw = 0 is the identity)."""
    rises = levels.diff(dim=1) * F.softplus(raw[:, 1:] + _SOFTPLUS_ONE)
    first = levels[:, :1] + raw[:, :1]
    return torch.cat([first, first + rises.cumsum(1)], 1)


def apply_landmarks(
    x: torch.Tensor, levels: torch.Tensor, values: torch.Tensor, lo: float, hi: float
) -> torch.Tensor:
    """One piecewise-linear curve per image through (``levels``, ``values``) (B, K each,
    levels increasing), applied to x (B, 1, ...) clamped to [lo, hi]."""
    n = levels.shape[1]
    flat = x.clamp(lo, hi).reshape(x.shape[0], -1)
    i = torch.searchsorted(levels.contiguous(), flat.contiguous(), right=True) - 1
    i = i.clamp(0, n - 2)
    x0, x1 = levels.gather(1, i), levels.gather(1, i + 1)
    v0, v1 = values.gather(1, i), values.gather(1, i + 1)
    return (v0 + (flat - x0) / (x1 - x0) * (v1 - v0)).view_as(x)


def apply_knots(x: torch.Tensor, knots: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """One piecewise-linear curve per image: ``knots`` (B, K) at K evenly spaced levels over
    [lo, hi], applied to x (B, 1, ...) clamped to [lo, hi]."""
    values = knots.view(*knots.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
    return _piecewise_linear(x, values, lo, hi)


def _piecewise_linear(x: torch.Tensor, values: torch.Tensor, lo: float, hi: float):
    """x (B, 1, ...) clamped to [lo, hi] through the knots ``values`` (B, K, ..., x's spatial
    shape) at K evenly spaced levels over [lo, hi], linear between two knots."""
    n = values.shape[1]
    u = (x.clamp(lo, hi) - lo) / ((hi - lo) / (n - 1))
    i = u.floor().clamp(0, n - 2)
    frac = u - i
    i = i.long()
    v0 = values.gather(1, i)
    return v0 + frac * (values.gather(1, i + 1) - v0)


def windows(size: tuple[int, ...], tile: int, overlap: float = 0.5) -> list[tuple[slice, ...]]:
    """Boxes of ``tile`` voxels per axis (the whole axis if shorter) covering ``size``, with
    starts spread evenly so that neighbours overlap by at least ``overlap`` of a tile."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"windows overlap by a fraction in [0, 1), got {overlap}")
    step = max(1, int(tile * (1.0 - overlap)))
    per_axis = []
    for n in size:
        if n <= tile:
            per_axis.append([slice(0, n)])
            continue
        count = math.ceil((n - tile) / step) + 1
        starts = [round(i * (n - tile) / (count - 1)) for i in range(count)]
        per_axis.append([slice(a, a + tile) for a in starts])
    return list(itertools.product(*per_axis))


def _blend_weight(shape: tuple[int, ...], device) -> torch.Tensor:
    """Separable weight, 1 in the middle of a window and small (never 0) at its faces."""
    w = torch.ones(1, 1, *shape, device=device)
    for axis, n in enumerate(shape):
        ramp = torch.sin(torch.pi * (torch.arange(n, device=device) + 0.5) / n) + 1e-3
        w = w * ramp.view(*[n if a == axis else 1 for a in range(len(shape))])
    return w
