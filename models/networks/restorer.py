"""R: a small full-resolution restorer of the scanner-free output (blur, noise; not contrast)."""

from __future__ import annotations

import torch
from torch import nn


class Restorer(nn.Module):
    """y (B, 1, D, H, W) -> y + R(y), for the scanner-free output of a curve generator.

    A curve maps intensities; it cannot undo what differs between scanners in space (slice
    thickness, in-plane blur, noise). R is a stack of 3x3x3 convolutions at full resolution,
    dilated (1, 2, 4: a 15-voxel field of view, enough for a 5 mm slice), adding a residual.
    It runs on the scanner-free output only (label and code zero): a translation to a
    scanner keeps that scanner's look, and the reconstruction and adversarial losses never
    see R (nor pay for it). The last layer starts at zero, so a new R is the identity.
    Convolutions see no window edges but their own padding: run on a whole image, R gives
    what it gives window by window, away from the windows' faces.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for d in (1, 2, 4):
            layers += [
                nn.Conv3d(cin, channels, 3, padding=d, dilation=d, padding_mode="replicate"),
                nn.ReLU(inplace=True),
            ]
            cin = channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv3d(channels, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.out(self.body(y))
