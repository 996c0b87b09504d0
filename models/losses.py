"""The DISARM losses, named as in METHOD.md, with the reference weights as defaults.

Four more, for travelling heads (one head simulated on two scanners; the paper's future
work), used only when a training pair is one: ``pair_content`` (the content codes of the two
versions agree), ``pair_free`` (their scanner-free outputs agree), ``anchor`` (the
scanner-free output of a simulated head is the clean head: the scanner-free space keeps the
tissue contrast and the differences between people, rather than drifting to whatever the
seven unpaired losses allow) and ``pair_translate`` (the head translated to the other
scanner's code and label is that scanner's version of it: target mode learns from truth, and
E_s must encode what makes a scanner's image, which the identity-friendly L_rec never asks).
With one curve per head, ``anchor_quantiles``: the head's scanner-free curve takes the
version's whole-head quantiles to the clean head's (the patch anchor sees one patch; this
one the whole head's tissue levels, what a segmentation reads), and ``translate_quantiles``:
the head's curve drawn with the other scanner's code and label takes its quantiles to the
other version's (``pair_translate`` for the whole head: target mode's tissue levels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "adv_b",
    "adv_s",
    "cls_s",
    "cc",
    "rec",
    "kl",
    "kl_content",
    "lat",
    "pair_content",
    "pair_free",
    "anchor",
    "pair_translate",
    "anchor_quantiles",
    "translate_quantiles",
]


@dataclass(frozen=True)
class LossWeights:
    """Reference weights (METHOD.md, "Losses"), and those of the travelling-head losses."""

    adv_b: float = 1.0  #: content adversarial, E_b fooling D_b
    adv_s: float = 1.0  #: image adversarial, generator side
    cls_s_real: float = 3.0  #: D_c on real images
    cls_s_fake: float = 10.0  #: generator: fakes classified as their target scanner
    cc: float = 10.0  #: cross-cycle L1
    rec: float = 10.0  #: self-reconstruction L1
    kl: float = 0.01  #: KL of the scanner code to N(0, I)
    kl_content: float = 0.01  #: mean(z_b^2)
    lat: float = 8.0  #: latent regression L1
    pair_content: float = 2.0  #: travelling heads: content codes agree (L1)
    pair_free: float = 5.0  #: travelling heads: scanner-free outputs agree (L1)
    anchor: float = 10.0  #: travelling heads: scanner-free output = the clean head (L1)
    pair_translate: float = 10.0  #: travelling heads: a -> b translation = b's version (L1)
    anchor_quantiles: float = 10.0  #: head curves: free curve maps head quantiles to clean's
    translate_quantiles: float = 10.0  #: head curves: a -> b curve maps a's quantiles to b's

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_config(cls, config: str, **overrides: float) -> LossWeights:
        """The weights a configuration trains with by default, then ``overrides``.

        ``curves`` and ``window-curves``: L_rec and L_cc at 1 (the identity curve solves
        both, and their L1 sign gradient, as large at 0.002 as at 0.2, then pins G to the
        identity against the travelling-head losses), the generator's adversarial terms at 0.1
        (L_adv^s) and 0.5 (L_cls^s of fakes), so that the travelling heads' targets lead; the
        rest as the reference. ``window-curves`` also weighs the anchor at 20 and
        ``pair_free`` at 2: two outputs can agree by losing contrast, one output cannot match
        the clean head that way. ``head-curves`` as ``window-curves`` without
        ``translate_quantiles``; ``landmark-curves`` and ``restoring-curves`` as
        ``window-curves``. Measured in docs/model.md.
        """
        curves = {"rec": 1.0, "cc": 1.0, "adv_s": 0.1, "cls_s_fake": 0.5}
        window = {**curves, "pair_free": 2.0, "anchor": 20.0}
        preset = {
            "curves": curves,
            "window-curves": window,
            # translate_quantiles came after train-h2: its command still gives train-h2
            "head-curves": {**window, "translate_quantiles": 0.0},
            "landmark-curves": window,
            "restoring-curves": window,
        }
        return cls(**{**preset.get(config, {}), **overrides})


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


def pair_content(zb_a: torch.Tensor, zb_b: torch.Tensor) -> torch.Tensor:
    """Travelling heads: L1 between the content codes of one head from two scanners."""
    return (zb_a.float() - zb_b.float()).abs().mean()


def pair_free(free_a: torch.Tensor, free_b: torch.Tensor) -> torch.Tensor:
    """Travelling heads: L1 between the scanner-free outputs of one head from two scanners."""
    return (free_a.float() - free_b.float()).abs().mean()


def anchor(free: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Travelling heads: L1 between scanner-free outputs and the clean head (both normalized
    by their robust range, so a global gain or offset is not counted)."""
    return (free.float() - clean.float()).abs().mean()


def pair_translate(translated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Travelling heads: L1 between one head translated from scanner a to scanner b (b's code
    and label) and the same head simulated on b."""
    return (translated.float() - target.float()).abs().mean()


def anchor_quantiles(free_q: torch.Tensor, clean_q: torch.Tensor) -> torch.Tensor:
    """Travelling heads, one curve per head: L1 between the version's whole-head quantiles
    mapped by its scanner-free curve and the clean head's quantiles (normalized units)."""
    return (free_q.float() - clean_q.float()).abs().mean()


def translate_quantiles(translated_q: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
    """Travelling heads, one curve per head: L1 between one version's whole-head quantiles
    mapped by the curve drawn with the other scanner's code and label, and the other
    version's quantiles (normalized units)."""
    return (translated_q.float() - target_q.float()).abs().mean()
