"""G: the generator, from a content code, a scanner code and a scanner label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, conv, init_weights, inorm, tile
from .config import NetworkConfig
from .restorer import Restorer


class _Resize2(nn.Module):
    """Trilinear x2: every output voxel is made the same way (no kernel-overlap pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def _up(cin: int, cout: int, stride: int, scheme: str, norm: bool = True) -> nn.Sequential:
    """Double the size (stride 2) or keep it (stride 1), then IN (``norm``), ReLU.

    ``"transpose"``: the reference's ConvTranspose3d(k=3); at stride 2 its kernel overlaps
    unevenly and prints a checkerboard. ``"resize"``: trilinear x2 then a 3x3x3 convolution.
    ``"reference"``: the reference's ConvTranspose3d without output padding (2n - 1 voxels).
    """
    if scheme in ("transpose", "reference"):
        extra = stride - 1 if scheme == "transpose" else 0
        layer = nn.ConvTranspose3d(cin, cout, 3, stride, 1, output_padding=extra)
    elif stride == 2:
        layer = nn.Sequential(_Resize2(), conv(cin, cout, 3))
    else:
        layer = conv(cin, cout, 3)
    return nn.Sequential(layer, inorm(cout) if norm else nn.Identity(), nn.ReLU(inplace=True))


def _mlp(cin: int, width: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(cin, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.ReLU(inplace=True),
        nn.Linear(width, cout),
    )


class Generator(nn.Module):
    """z_b (B, Cb, d, h, w), z (B, z_dim), c (B, C) -> (B, K, 2d, 2h, 2w).

    K = 1 (a tanh image, ``output="image"``; a linear one, ``output="detail"``), 2 with
    ``detail_gate`` (image and the gate's logit) or with ``output="affine"`` (log-gain and
    offset), ``curve_knots`` with ``output="curves"`` (each knot's shift from the identity
    curve). For affine the last layer starts at zero (a new model is the identity), for curves
    near zero (a new model is within a few thousandths of it). With curves G also takes the
    canvas (B, 2, d, h, w), the input's local mean and spread on z_b's grid, and the quantiles
    of its head's intensities (B, Q), joined to the content code. With
    ``curve_grid="window"`` G returns one curve per window (B, K): an MLP reads the window's
    mean features, the quantiles, the label and the code. With ``curve_grid="head"`` it
    returns (B, K + 1) (K = ``head_knots``): the head's curve, from the quantiles of the whole head
    (``head_quantiles``, (B, Q)), the label and the code alone, and the window's log-gain.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.restorer: Restorer | None = None
        cb, nz, nc = cfg.content_channels, cfg.z_dim, cfg.n_scanners
        self.output = cfg.output
        self.canvas = cfg.canvas_channels
        self.n_quantiles = cfg.source_quantiles
        self.share = ResBlock(cb)
        t = cb + self.canvas + nz + nc + self.n_quantiles
        self.blocks = nn.Sequential(*[ResBlock(t) for _ in range(cfg.n_gen_blocks)])
        self.per_window = cfg.curves_per_window
        self.per_head = cfg.curves_per_head
        if self.per_window:
            # one curve per window (or per head), so G's upsampling layers are not built. The
            # residual blocks' instance norm erases the tiled (constant) quantiles, label and
            # code, so small MLPs read them directly, with the window's mean features
            width = 4 * cfg.curve_knots
            if self.per_head:
                # the head's curve sees nothing of the window; the window's gain sees both
                self.head = _mlp(self.n_quantiles + nc + nz, width, cfg.head_knots)
                self.gain = _mlp(t + 2 * self.n_quantiles + nc + nz, width, 1)
            else:
                self.head = _mlp(t + self.n_quantiles + nc + nz, width, cfg.curve_knots)
            init_weights(self)
            if cfg.restore_channels:  # after init_weights: R keeps PyTorch's init
                self.restorer = Restorer(cfg.restore_channels)
            for mlp in (self.head, self.gain) if self.per_head else (self.head,):
                for layer in mlp[:-1]:  # PyTorch's default init: N(0, 0.02) would starve it
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
                nn.init.normal_(mlp[-1].weight, 0.0, 1e-3)
                nn.init.zeros_(mlp[-1].bias)
            return
        self.up2 = _up(t + nz, (t + nz) // 2, 2, cfg.upsample, cfg.up_norm)
        t2 = (t + nz) // 2
        self.up1 = _up(t2 + nz, (t2 + nz) // 2, 1, cfg.upsample, cfg.up_norm)
        t3 = (t2 + nz) // 2
        gate = cfg.detail_gate and cfg.output == "detail"
        out = {"affine": 2, "curves": cfg.curve_knots}.get(cfg.output, 2 if gate else 1)
        # the reference's 2x2x2 head takes its 2n - 1 voxels back to 2n
        self.head = nn.ConvTranspose3d(t3 + nz, out, 2 if cfg.upsample == "reference" else 1)
        init_weights(self)
        if cfg.output == "affine":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        elif cfg.output == "curves":
            # near zero, not zero: a zero head passes no gradient to the layers before it,
            # and a readout of untrained features cannot tell one source scanner from another
            nn.init.normal_(self.head.weight, 0.0, 1e-3)
            nn.init.zeros_(self.head.bias)
        if gate:
            with torch.no_grad():
                self.head.bias[1] = 3.0  # gate sigmoid(3) = 0.95: a new model keeps the detail

    def head_curve(
        self, head_quantiles: torch.Tensor, c: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """``curve_grid="head"``: the head's raw curve (B, K), from its quantiles, the label
        and the code alone."""
        return self.head(torch.cat([head_quantiles.to(z.dtype), c.to(z.dtype), z], 1))

    def forward(
        self,
        zb: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        canvas: torch.Tensor | None = None,
        quantiles: torch.Tensor | None = None,
        head_quantiles: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.share(zb)
        if self.canvas:
            if canvas is None or quantiles is None:
                raise ValueError("this generator draws curves: it needs the input's canvas")
            h = torch.cat([h, canvas.to(h.dtype), tile(quantiles, h)], 1)
        h = self.blocks(torch.cat([h, tile(c, h), tile(z, h)], 1))
        if self.per_head:
            if head_quantiles is None:
                raise ValueError("this generator draws one curve per head: it needs its quantiles")
            hq = head_quantiles.to(h.dtype)
            gain = self.gain(torch.cat([h.mean((2, 3, 4)), quantiles.to(h.dtype), hq, c, z], 1))
            return torch.cat([self.head_curve(hq, c, z), gain], 1)
        if self.per_window:
            return self.head(torch.cat([h.mean((2, 3, 4)), quantiles.to(h.dtype), c, z], 1))
        h = self.up2(torch.cat([h, tile(z, h)], 1))
        h = self.up1(torch.cat([h, tile(z, h)], 1))
        h = self.head(torch.cat([h, tile(z, h)], 1))
        return torch.tanh(h) if self.output == "image" else h  # detail, affine, curves: linear
