"""E_s: the label-conditioned scanner (attribute) encoder, a VAE head."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import conv, half_pool, init_weights, tile
from .config import NetworkConfig


class _Block(nn.Module):
    """LReLU-conv3-LReLU-conv3-avgpool plus avgpool-conv1 shortcut, no norm (ref)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cin, 3)
        self.conv2 = conv(cin, cout, 3)
        self.short = nn.Conv3d(cin, cout, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = half_pool(self.conv2(self.act(self.conv1(self.act(x)))))
        return y + self.short(half_pool(x))


class ScannerEncoder(nn.Module):
    """(B, 1, D, H, W), one-hot label (B, C) -> (mu, logvar), each (B, z_dim).

    Any spatial size >= 2 works: the pools accept odd sizes, the end is a global average.
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        ch = cfg.scanner_channels
        self.stem = conv(1 + cfg.n_scanners, ch[0], 4, stride=2)
        self.blocks = nn.Sequential(*[_Block(a, b) for a, b in zip(ch[:-1], ch[1:], strict=True)])
        self.act = nn.LeakyReLU(0.2)
        self.mu = nn.Linear(ch[-1], cfg.z_dim)
        self.logvar = nn.Linear(ch[-1], cfg.z_dim)
        init_weights(self)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.blocks(self.stem(torch.cat([x, tile(c, x)], 1)))
        h = self.act(h).mean(dim=(2, 3, 4)).float()
        return self.mu(h), self.logvar(h)
