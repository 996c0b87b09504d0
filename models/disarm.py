"""The DISARM model: the five networks, size handling, and one training iteration.

Sizes: any 3D size works. An input is padded (edge replicate) to a multiple of
``cfg.factor``, pooled by ``cfg.io_downsample`` for the networks, and every output is cropped
back to the input size.

Outputs: with ``cfg.output == "image"`` (reference) the generator's tanh image is the output
(trilinearly upsampled if ``io_downsample > 1``). With ``"affine"`` the generator's two
channels are a log-gain ``g`` and an offset ``b`` at the networks' resolution; they are
upsampled (trilinear) and applied to the full-resolution image whose content code was used:
``y = exp(g) * x + b``. The harmonization is then a smooth, spatially varying intensity
transform: it cannot blur, and all the input's fine detail goes through (scaled by the gain).
But the identity (g = b = 0) reconstructs every image exactly, so L_rec and L_cc never ask the
scanner code for anything. With ``"detail"`` (fast) the generator draws the image at the
networks' resolution, as the reference does (so the content and scanner codes must carry it),
and the detail that resolution loses, ``x - up(down(x))``, is added back from the input whose
content code was used: ``y = up(G(z_b, z, c)) + x - up(down(x))``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from . import losses as L
from .networks import (
    AnatomyEncoder,
    ContentDiscriminator,
    Generator,
    ImageDiscriminator,
    NetworkConfig,
    ScannerEncoder,
)

__all__ = ["Disarm", "DisarmTrainer", "one_hot", "autocast_for", "windows"]

_GAIN_LIMIT = 3.0  # |log gain| <= 3: a factor of 20 either way is already absurd


def one_hot(idx: torch.Tensor | list[int], n: int, device=None) -> torch.Tensor:
    idx = torch.as_tensor(idx, dtype=torch.long, device=device)
    return F.one_hot(idx, n).float()


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on ``device`` when ``enabled`` (a no-op context otherwise)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Disarm(nn.Module):
    """E_b, E_s, G, D_b and two image discriminators (encoded codes / random codes)."""

    def __init__(self, cfg: NetworkConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_b = AnatomyEncoder(cfg)
        self.enc_s = ScannerEncoder(cfg)
        self.gen = Generator(cfg)
        self.dis_b = ContentDiscriminator(cfg)
        self.dis_enc = ImageDiscriminator(cfg)  # judges images from encoded scanner codes
        self.dis_rand = ImageDiscriminator(cfg)  # judges images from random scanner codes

    # ---- size handling -------------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Pad (B, 1, D, H, W) at the far end to a multiple of ``cfg.factor``."""
        f = self.cfg.factor
        size = tuple(x.shape[2:])
        extra = [(-s) % f for s in size]
        if any(extra):
            x = F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]), mode="replicate")
        return x, size

    def to_io(self, x_pad: torch.Tensor) -> torch.Tensor:
        k = self.cfg.io_downsample
        return F.avg_pool3d(x_pad, k) if k > 1 else x_pad

    @staticmethod
    def crop(x: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        return x[:, :, : size[0], : size[1], : size[2]]

    # ---- the three inference networks, on images of any size -----------------------------
    def content(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, D, H, W) normalized -> (z_b, x_pad); x_pad is needed by :meth:`generate`."""
        x_pad, _ = self.pad(x)
        return self.enc_b(self.to_io(x_pad)), x_pad

    def scanner(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 1, D, H, W), c (B, C) -> (mu, logvar) (B, z_dim)."""
        x_pad, _ = self.pad(x)
        return self.enc_s(self.to_io(x_pad), c)

    def generate(
        self,
        zb: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        x_pad: torch.Tensor,
        size: tuple[int, int, int],
    ) -> torch.Tensor:
        """G(z_b, z, c) at the input size; ``x_pad`` = the padded image z_b was encoded from."""
        out = self.gen(zb, z, c)
        k = self.cfg.io_downsample
        if k > 1:
            out = F.interpolate(out, scale_factor=k, mode="trilinear", align_corners=False)
        if self.cfg.output == "affine":
            gain = out[:, :1].float().clamp(-_GAIN_LIMIT, _GAIN_LIMIT).exp()
            out = gain * x_pad.float() + out[:, 1:].float()
        elif self.cfg.output == "detail" and k > 1:
            out = out.float() + self.detail(x_pad)
        return self.crop(out, size)

    def detail(self, x_pad: torch.Tensor) -> torch.Tensor:
        """What the networks' resolution loses: ``x - up(down(x))`` (zero when k = 1)."""
        k = self.cfg.io_downsample
        if k == 1:
            return torch.zeros_like(x_pad, dtype=torch.float32)
        low = self.to_io(x_pad)
        low = F.interpolate(low, scale_factor=k, mode="trilinear", align_corners=False)
        return x_pad.float() - low.float()

    def translate(
        self,
        x: torch.Tensor,
        z: torch.Tensor,
        c: torch.Tensor,
        tile: int | None = None,
        needed: torch.Tensor | None = None,
        batch: int = 2,
    ) -> torch.Tensor:
        """G(E_b(x), z, c) at x's size; with ``tile``, window by window (see :func:`windows`).

        A model trained on patches has seen the instance-norm statistics of patches, never of a
        whole head with its background: windows of about the training patch size, overlapping
        by half and blended with a smooth weight, keep inference where training was.
        ``needed`` (bool, x's shape): windows with no needed voxel are skipped and their voxels
        keep x's values. x holds one image (B = 1); its windows run ``batch`` at a time (on a
        CPU, PyTorch takes its slow direct 3D convolution for a batch of one small volume, and
        oneDNN's for two or more: two windows at once cost what one costs alone).
        """
        size = tuple(x.shape[2:])
        if tile is None or all(s <= tile for s in size):
            zb, x_pad = self.content(x)
            return self.generate(zb, z, c, x_pad, size)
        if x.shape[0] != 1:
            raise ValueError("windowed translation takes one image at a time")
        boxes = [
            box for box in windows(size, tile) if needed is None or bool(needed[(..., *box)].any())
        ]
        shape = tuple(min(tile, s) for s in size)  # every window's (see windows())
        w = _blend_weight(shape, x.device)
        out = torch.zeros_like(x, dtype=torch.float32)
        weight = torch.zeros_like(out)
        batch = max(1, batch)
        for first in range(0, len(boxes), batch):
            group = boxes[first : first + batch]
            xs = torch.cat([x[(..., *box)] for box in group])
            n = len(group)
            zb, x_pad = self.content(xs)
            ys = self.generate(zb, z.expand(n, -1), c.expand(n, -1), x_pad, shape).float()
            for box, y in zip(group, ys, strict=True):
                out[(..., *box)] += w * y
                weight[(..., *box)] += w
        return torch.where(weight > 0, out / weight.clamp_min(1e-12), x.float())

    def inference_modules(self) -> list[nn.Module]:
        return [self.enc_b, self.enc_s, self.gen]


def windows(size: tuple[int, ...], tile: int) -> list[tuple[slice, ...]]:
    """Boxes of ``tile`` voxels per axis (the whole axis if shorter) covering ``size``, with
    starts spread evenly so that neighbours overlap by at least half a tile."""
    per_axis = []
    for n in size:
        if n <= tile:
            per_axis.append([slice(0, n)])
            continue
        count = math.ceil((n - tile) / (tile // 2)) + 1
        starts = [round(i * (n - tile) / (count - 1)) for i in range(count)]
        per_axis.append([slice(a, a + tile) for a in starts])
    return list(itertools.product(*per_axis))


def _blend_weight(shape: tuple[int, ...], device) -> torch.Tensor:
    """Separable weight, 1 in the middle of a window and small (never 0) at its faces."""
    w = torch.ones(1, 1, *shape, device=device)
    for axis, n in enumerate(shape):
        ramp = torch.sin(torch.pi * (torch.arange(n, device=device) + 0.5) / n) + 1e-3
        w = w * ramp.view(*[n if a == axis else 1 for a in range(len(shape))])
    return w


class DisarmTrainer:
    """Optimizers, LR schedule and the reference update order of one iteration.

    One call of :meth:`step` = (D_b update every ``content_d_every`` steps) -> both image
    discriminators -> E_b, E_s, G on all losses but L_lat and the random-code adversarial
    terms -> a second pass (fresh forward) updating E_b and G on those. Adam(lr, (0.5, 0.999),
    weight decay 1e-4); D_b at lr / 2.5 with its gradient clipped to norm 5. The LR decays
    linearly to zero over the second half of ``total_steps`` (the scheduler really steps).
    Under ``torch.distributed`` the gradients of every update are averaged across processes
    before the optimizer step (what DistributedDataParallel does, done by hand because one
    iteration runs each network several times in different roles).
    """

    def __init__(
        self,
        model: Disarm,
        total_steps: int,
        *,
        lr: float = 1e-4,
        weights: L.LossWeights | None = None,
        content_d_every: int = 1,
        amp: bool = False,
    ) -> None:
        self.model = model
        self.cfg = model.cfg
        self.w = weights or L.LossWeights()
        self.total_steps = int(total_steps)
        self.content_d_every = max(1, int(content_d_every))
        self.amp = amp
        self.iteration = 0

        def adam(mods: Iterable[nn.Module], rate: float) -> torch.optim.Adam:
            params = [p for m in mods for p in m.parameters()]
            return torch.optim.Adam(params, lr=rate, betas=(0.5, 0.999), weight_decay=1e-4)

        m = model
        self.optims = {
            "dis_b": adam([m.dis_b], lr / 2.5),
            "dis_enc": adam([m.dis_enc], lr),
            "dis_rand": adam([m.dis_rand], lr),
            "enc_b": adam([m.enc_b], lr),
            "enc_s": adam([m.enc_s], lr),
            "gen": adam([m.gen], lr),
        }
        half = max(1, self.total_steps // 2)

        def decay(step: int) -> float:
            # linear to zero over the second half of training
            if step < self.total_steps - half:
                return 1.0
            return max(0.0, (self.total_steps - step) / half)

        self.schedulers = {
            k: torch.optim.lr_scheduler.LambdaLR(o, decay) for k, o in self.optims.items()
        }

    # ---- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def lr(self) -> float:
        return self.optims["gen"].param_groups[0]["lr"]

    @staticmethod
    def _sync(*modules: nn.Module) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        ws = dist.get_world_size()
        for mod in modules:
            for p in mod.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= ws

    @staticmethod
    def _trainable(modules: Iterable[nn.Module], flag: bool) -> None:
        for mod in modules:
            mod.requires_grad_(flag)

    def _zero(self, *names: str) -> None:
        for n in names:
            self.optims[n].zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "optims": {k: o.state_dict() for k, o in self.optims.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])

    # ---- one iteration -------------------------------------------------------------------
    def step(self, xa: torch.Tensor, xb: torch.Tensor, ca: torch.Tensor, cb: torch.Tensor):
        """One iteration on images of scanner a and b ((n, 1, D, H, W) each, same size) and
        their one-hot labels (n, C). Returns a dict of float losses."""
        m, w = self.model, self.w
        m.train()
        ac = autocast_for(self.device, self.amp)
        n = xa.shape[0]
        size = tuple(xa.shape[2:])
        x = torch.cat([xa, xb])
        c = torch.cat([ca, cb])
        out: dict[str, float] = {}
        discs = [m.dis_b, m.dis_enc, m.dis_rand]
        encgen = [m.enc_b, m.enc_s, m.gen]

        # 1. content discriminator D_b alone
        if self.iteration % self.content_d_every == 0:
            self._trainable(discs, True)
            with torch.no_grad(), ac:
                zb_d, _ = m.content(x)
            self._zero("dis_b")
            loss = L.adv_b(m.dis_b(zb_d.float()), c)
            loss.backward()
            self._sync(m.dis_b)
            nn.utils.clip_grad_norm_(m.dis_b.parameters(), 5.0)
            self.optims["dis_b"].step()
            out["D_b"] = loss.item()

        # 2. forward: codes, cross translation, re-encoding, second translation
        self._trainable(encgen, True)
        with ac:
            zb, x_pad = m.content(x)
            mu, logvar = m.scanner(x, c)
            zs = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            zr = torch.randn(n, self.cfg.z_dim, device=x.device)
            zb_a, zb_b = zb.split(n)
            zs_a, zs_b = zs.split(n)
            pad_a, pad_b = x_pad.split(n)
            # for a: content [b, a, b], code [a, a, random], label a (ref order)
            fa = m.generate(
                torch.cat([zb_b, zb_a, zb_b]),
                torch.cat([zs_a, zs_a, zr]),
                torch.cat([ca, ca, ca]),
                torch.cat([pad_b, pad_a, pad_b]),
                size,
            )
            fb = m.generate(
                torch.cat([zb_a, zb_b, zb_a]),
                torch.cat([zs_b, zs_b, zr]),
                torch.cat([cb, cb, cb]),
                torch.cat([pad_a, pad_b, pad_a]),
                size,
            )
            fake_a, self_a, _ = fa.split(n)
            fake_b, self_b, _ = fb.split(n)
            fake_enc = torch.cat([fake_a, fake_b])  # labels c
            zb_r, pad_r = m.content(fake_enc)
            mu_r, lv_r = m.scanner(fake_enc, c)
            zs_r = mu_r + torch.randn_like(mu_r) * (0.5 * lv_r).exp()
            zb_rb, zb_ra = zb_r.split(n)  # fake_a carries b's content
            zs_ra, zs_rb = zs_r.split(n)
            pad_fa, pad_fb = pad_r.split(n)
            # both cycles in one call: a batch of one would take the slow CPU convolution
            cyc = m.generate(
                torch.cat([zb_ra, zb_rb]),
                torch.cat([zs_ra, zs_rb]),
                c,
                torch.cat([pad_fb, pad_fa]),
                size,
            )

        # 3. image discriminators: real vs fakes from encoded codes / from random codes
        fake_rand = torch.cat([fa.split(n)[2], fb.split(n)[2]])
        self._trainable(discs, True)
        for name, disc, fake in (
            ("enc", m.dis_enc, fake_enc),
            ("rand", m.dis_rand, fake_rand),
        ):
            self._zero(f"dis_{name}")
            with ac:
                pf, _ = disc(fake.detach())
                pr, pcls = disc(x)
            d_adv = L.adv_s(pr, True) + L.adv_s(pf, False)
            d_cls = L.cls_s(pcls, c)
            (d_adv + w.cls_s_real * d_cls).backward()
            self._sync(disc)
            self.optims[f"dis_{name}"].step()
            out[f"D_{name}"] = d_adv.item()
            out[f"D_cls_{name}"] = d_cls.item()

        # 4. E_b, E_s, G on all losses but L_lat and the random-code adversarial terms
        self._trainable(discs, False)
        self._zero("enc_b", "enc_s", "gen")
        with ac:
            adv_b = L.adv_b(m.dis_b(zb.float()), c, fool=True)
            pf, pcls = m.dis_enc(fake_enc)
        adv_s = L.adv_s(pf, True)
        cls_s = L.cls_s(pcls, c)
        rec = L.rec(x, torch.cat([self_a, self_b]))
        cc = L.cc(x, cyc)
        kl = L.kl(mu, logvar)
        klc = L.kl_content(zb)
        loss = (
            w.adv_b * adv_b
            + w.adv_s * adv_s
            + w.cls_s_fake * cls_s
            + w.rec * rec
            + w.cc * cc
            + w.kl * kl
            + w.kl_content * klc
        )
        loss.backward()
        self._sync(*encgen)
        for k in ("enc_b", "enc_s", "gen"):
            self.optims[k].step()
        out.update(adv_b=adv_b.item(), adv_s=adv_s.item(), cls_s=cls_s.item())
        out.update(rec=rec.item(), cc=cc.item(), kl=kl.item())

        # 5. second pass (fresh forward, updated weights): E_b and G on L_lat + random-code adv.
        self._trainable([m.enc_s], False)
        self._zero("enc_b", "gen")
        with ac:
            zb2, x_pad2 = m.content(x)
            zb2_a, zb2_b = zb2.split(n)
            pad2_a, pad2_b = x_pad2.split(n)
            rand = m.generate(
                torch.cat([zb2_b, zb2_a]),
                torch.cat([zr, zr]),
                c,
                torch.cat([pad2_b, pad2_a]),
                size,
            )
            pf2, pcls2 = m.dis_rand(rand)
            mu2, _ = m.scanner(rand, c)
        adv_s2 = L.adv_s(pf2, True)
        cls_s2 = L.cls_s(pcls2, c)
        lat = L.lat(mu2, torch.cat([zr, zr]))
        (w.adv_s * adv_s2 + w.cls_s_fake * cls_s2 + w.lat * lat).backward()
        self._sync(m.enc_b, m.gen)
        self.optims["enc_b"].step()
        self.optims["gen"].step()
        self._trainable([m.enc_s, *discs], True)
        out["lat"] = lat.item()

        for s in self.schedulers.values():
            s.step()
        self.iteration += 1
        return out
