"""G: the generator, from a content code, a scanner code and a scanner label."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ResBlock, init_weights, inorm, tile
from .config import NetworkConfig


def _up(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Transposed conv 3 (stride 2 doubles the size exactly), IN, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose3d(cin, cout, 3, stride, 1, output_padding=stride - 1),
        inorm(cout),
        nn.ReLU(inplace=True),
    )


class Generator(nn.Module):
    """z_b (B, Cb, d, h, w), z (B, z_dim), c (B, C) -> (B, K, 2d, 2h, 2w).

    K = 1 (a tanh image, ``output="image"``; a linear one, ``output="detail"``) or 2 (log-gain
    and offset, ``output="affine"``; the last layer starts at zero: a new model is the identity).
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        cb, nz, nc = cfg.content_channels, cfg.z_dim, cfg.n_scanners
        self.output = cfg.output
        self.share = ResBlock(cb)
        t = cb + nz + nc
        self.blocks = nn.Sequential(*[ResBlock(t) for _ in range(cfg.n_gen_blocks)])
        self.up2 = _up(t + nz, (t + nz) // 2, 2)
        t2 = (t + nz) // 2
        self.up1 = _up(t2 + nz, (t2 + nz) // 2, 1)
        t3 = (t2 + nz) // 2
        out = 2 if cfg.output == "affine" else 1
        self.head = nn.ConvTranspose3d(t3 + nz, out, 1)
        init_weights(self)
        if cfg.output == "affine":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, zb: torch.Tensor, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.share(zb)
        h = self.blocks(torch.cat([h, tile(c, h), tile(z, h)], 1))
        h = self.up2(torch.cat([h, tile(z, h)], 1))
        h = self.up1(torch.cat([h, tile(z, h)], 1))
        h = self.head(torch.cat([h, tile(z, h)], 1))
        return torch.tanh(h) if self.output == "image" else h  # detail, affine: linear
