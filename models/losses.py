"""The DISARM losses, named as in METHOD.md, with the reference weights as defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossWeights", "adv_b", "adv_s", "cls_s", "cc", "rec", "kl", "kl_content", "lat"]


@dataclass(frozen=True)
class LossWeights:
    """Reference weights (METHOD.md, "Losses")."""

    adv_b: float = 1.0  #: content adversarial, E_b fooling D_b
    adv_s: float = 1.0  #: image adversarial, generator side
    cls_s_real: float = 3.0  #: D_c on real images
    cls_s_fake: float = 10.0  #: generator: fakes classified as their target scanner
    cc: float = 10.0  #: cross-cycle L1
    rec: float = 10.0  #: self-reconstruction L1
    kl: float = 0.01  #: KL of the scanner code to N(0, I)
    kl_content: float = 0.01  #: mean(z_b^2)
    lat: float = 8.0  #: latent regression L1

    def to_dict(self) -> dict:
        return asdict(self)


def adv_b(logits: torch.Tensor, labels: torch.Tensor, fool: bool = False) -> torch.Tensor:
    """L_adv^b: D_b learns the scanner of z_b; E_b (``fool=True``) aims at ``1 - labels``."""
    target = 1.0 - labels if fool else labels
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def adv_s(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """L_adv^s: real/fake BCE on the patch logits of D_s."""
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def cls_s(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_cls^s: D_c's scanner logits vs the one-hot label (BCE, as the reference)."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


def rec(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """L_rec: self-reconstruction L1."""
    return (x.float() - x_rec.float()).abs().mean()


def cc(x: torch.Tensor, x_cycle: torch.Tensor) -> torch.Tensor:
    """L_cc: cross-cycle L1 (k -> h -> k)."""
    return (x.float() - x_cycle.float()).abs().mean()


def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, I)), summed (ref)."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def kl_content(zb: torch.Tensor) -> torch.Tensor:
    """mean(z_b^2): keeps the content code near zero (ref)."""
    return zb.float().pow(2).mean()


def lat(mu: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """L_lat: E_s(G(z_b, z, c), c).mu vs z, L1."""
    return (mu.float() - z.float()).abs().mean()
