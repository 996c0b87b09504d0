"""Building blocks shared by the DISARM networks (3D, reflection padding, N(0, 0.02) init)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Pad(nn.Module):
    """Reflection padding (ref); edge replication where a side is too small to reflect."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad == 0:
            return x
        mode = "reflect" if min(x.shape[2:]) > self.pad else "replicate"
        return F.pad(x, (self.pad,) * 6, mode=mode)


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    """Padded 3D convolution (padding (k - 1) // 2; k // 2 - 1 for even k)."""
    pad = (k - 1) // 2 if k % 2 else k // 2 - 1
    return nn.Sequential(Pad(pad), nn.Conv3d(cin, cout, k, stride))


def inorm(c: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(c, affine=False)


class ResBlock(nn.Module):
    """conv-IN-ReLU-conv-IN plus skip (E_b, G)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv(c, c, 3), inorm(c), nn.ReLU(inplace=True), conv(c, c, 3), inorm(c)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def half_pool(x: torch.Tensor) -> torch.Tensor:
    """Average pooling /2 that also accepts sizes 1 and odd sizes (ceil mode)."""
    k = tuple(min(2, s) for s in x.shape[2:])
    return F.avg_pool3d(x, k, k, ceil_mode=True)


def tile(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, D, H, W) matching ``like``'s spatial size."""
    return v[:, :, None, None, None].expand(-1, -1, *like.shape[2:]).to(like.dtype)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) weights, zero biases (ref)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
