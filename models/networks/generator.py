"""G: the generator, from a content code, a scanner code and a scanner label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, conv, init_weights, inorm, tile
from .config import NetworkConfig


class _Resize2(nn.Module):
    """Trilinear x2: every output voxel is made the same way (no kernel-overlap pattern)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def _up(cin: int, cout: int, stride: int, scheme: str, norm: bool = True) -> nn.Sequential:
    """Double the size (stride 2) or keep it (stride 1), then IN (``norm``), ReLU.

    ``"transpose"``: the reference's ConvTranspose3d(k=3); at stride 2 its kernel overlaps
    unevenly and prints a checkerboard. ``"resize"``: trilinear x2 then a 3x3x3 convolution.
    """
    if scheme == "transpose":
        layer = nn.ConvTranspose3d(cin, cout, 3, stride, 1, output_padding=stride - 1)
    elif stride == 2:
        layer = nn.Sequential(_Resize2(), conv(cin, cout, 3))
    else:
        layer = conv(cin, cout, 3)
    return nn.Sequential(layer, inorm(cout) if norm else nn.Identity(), nn.ReLU(inplace=True))


class Generator(nn.Module):
    """z_b (B, Cb, d, h, w), z (B, z_dim), c (B, C) -> (B, K, 2d, 2h, 2w).

    K = 1 (a tanh image, ``output="image"``; a linear one, ``output="detail"``), 2 with
    ``detail_gate`` (image and the gate's logit) or with ``output="affine"`` (log-gain and
    offset; the last layer starts at zero: a new model is the identity).
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        cb, nz, nc = cfg.content_channels, cfg.z_dim, cfg.n_scanners
        self.output = cfg.output
        self.share = ResBlock(cb)
        t = cb + nz + nc
        self.blocks = nn.Sequential(*[ResBlock(t) for _ in range(cfg.n_gen_blocks)])
        self.up2 = _up(t + nz, (t + nz) // 2, 2, cfg.upsample, cfg.up_norm)
        t2 = (t + nz) // 2
        self.up1 = _up(t2 + nz, (t2 + nz) // 2, 1, cfg.upsample, cfg.up_norm)
        t3 = (t2 + nz) // 2
        gate = cfg.detail_gate and cfg.output == "detail"
        out = 2 if cfg.output == "affine" or gate else 1
        self.head = nn.ConvTranspose3d(t3 + nz, out, 1)
        init_weights(self)
        if cfg.output == "affine":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        if gate:
            with torch.no_grad():
                self.head.bias[1] = 3.0  # gate sigmoid(3) = 0.95: a new model keeps the detail

    def forward(self, zb: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.share(zb)
        h = self.blocks(torch.cat([h, tile(c, h), tile(z, h)], 1))
        h = self.up2(torch.cat([h, tile(z, h)], 1))
        h = self.up1(torch.cat([h, tile(z, h)], 1))
        h = self.head(torch.cat([h, tile(z, h)], 1))
        return torch.tanh(h) if self.output == "image" else h  # detail, affine: linear
