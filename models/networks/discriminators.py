"""D_b (content discriminator) and the image discriminator with D_s and D_c heads."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import conv, init_weights
from .config import NetworkConfig


class ContentDiscriminator(nn.Module):
    """z_b (B, Cb, d, h, w) -> scanner logits (B, C). Adaptive pooling: any size works."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        layers, cin = [], cfg.content_channels
        for cout in cfg.content_disc_channels:
            layers += [conv(cin, cout, 3, stride=2), nn.LeakyReLU(0.2, inplace=True)]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(cin, cfg.n_scanners)
        init_weights(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(z).mean(dim=(2, 3, 4)).float())


class ImageDiscriminator(nn.Module):
    """(B, 1, D, H, W) -> (real/fake patch logits (B, 1, d, h, w), scanner logits (B, C)).

    A stride-2 trunk shared by the D_s (patch) and D_c (pooled class) heads. The class head
    pools adaptively to 2^3 cells, so any input of at least 1 voxel per side works (the
    reference needed >= 97 voxels).
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        layers, cin = [], 1
        for cout in cfg.disc_channels:
            layers += [conv(cin, cout, 3, stride=2), nn.LeakyReLU(0.01, inplace=True)]
            cin = cout
        self.trunk = nn.Sequential(*layers)
        self.head_s = conv(cin, 1, 3)
        self.pool = nn.AdaptiveAvgPool3d(2)
        self.head_c = nn.Linear(cin * 8, cfg.n_scanners)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.head_s(h).float(), self.head_c(self.pool(h).flatten(1).float())
