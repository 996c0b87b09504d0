"""E_b: the anatomy (content) encoder."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ResBlock, conv, init_weights, inorm
from .config import NetworkConfig


class AnatomyEncoder(nn.Module):
    """(B, 1, D, H, W) -> content code z_b (B, content_channels, D/2, H/2, W/2).

    Sizes must be even (the caller pads). In training, N(0, 1) noise is added to the code (ref).
    """

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        s, c = cfg.stem_channels, cfg.content_channels
        self.add_noise = cfg.content_noise
        self.net = nn.Sequential(
            conv(1, s, 7),
            nn.LeakyReLU(cfg.stem_slope, inplace=True),
            conv(s, c, 3, stride=2),
            inorm(c),
            nn.ReLU(inplace=True),
            *[ResBlock(c) for _ in range(cfg.n_content_blocks)],
        )
        init_weights(self)

    def forward(self, x: torch.Tensor, noise: bool | None = None) -> torch.Tensor:
        """``noise``: add N(0, 1) to the code (default: in training mode, if configured)."""
        z = self.net(x)
        if noise is None:
            noise = self.training and self.add_noise
        if noise:
            z = z + torch.randn_like(z)
        return z
