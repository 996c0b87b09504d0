"""DisarmTrainer: optimizers, LR schedule and the update order of one training iteration."""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn

from . import losses as L
from .disarm import Disarm, autocast_for

__all__ = ["DisarmTrainer", "LOSS_NAMES"]

#: Every loss a step can report, in the column order of ``losses.tsv`` (a D_b-only step
#: reports D_b alone; steps without travelling heads leave the pair losses out).
LOSS_NAMES = (
    "D_b", "D_enc", "D_cls_enc", "D_rand", "D_cls_rand", "adv_b", "adv_s", "cls_s", "rec", "cc",
    "kl", "lat", "pair_content", "pair_free", "anchor", "pair_translate", "anchor_quantiles",
    "translate_quantiles",
)  # fmt: skip


class DisarmTrainer:
    """Optimizers, LR schedule and the reference update order of one iteration.

    ``content_d_every`` = N >= 2 (the reference): on N - 1 of every N batches D_b is updated
    alone, on the N-th the full iteration runs (without D_b). N = 1: every batch updates D_b and
    then runs the full iteration. A full iteration: both image discriminators -> E_b, E_s, G on
    all losses but L_lat and the random-code adversarial terms (plus the travelling-head losses
    when the batch is one) -> a second pass (fresh forward, a fresh random code) updating E_b
    and G on those. Adam(lr, (0.5, 0.999), weight decay 1e-4); D_b at lr / 2.5 with its
    gradient clipped to norm 5. The LR decays linearly to zero over the second half of
    ``total_steps`` (the scheduler really steps). Under ``torch.distributed`` the gradients of
    every update are averaged across processes before the optimizer step (what
    DistributedDataParallel does, done by hand because one iteration runs each network several
    times in different roles).
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

    def content_d_alone(self) -> bool:
        """Whether the next step updates D_b alone (the reference's N - 1 of N batches)."""
        n = self.content_d_every
        return n > 1 and (self.iteration + 1) % n != 0

    # ---- one iteration -------------------------------------------------------------------
    def _update_content_d(self, x: torch.Tensor, c: torch.Tensor) -> float:
        m = self.model
        self._trainable([m.dis_b], True)
        with torch.no_grad(), autocast_for(self.device, self.amp):
            zb_d, _ = m.content(x)
        self._zero("dis_b")
        loss = L.adv_b(m.dis_b(zb_d.float()), c)
        loss.backward()
        self._sync(m.dis_b)
        nn.utils.clip_grad_norm_(m.dis_b.parameters(), 5.0)
        self.optims["dis_b"].step()
        return loss.item()

    def _end_step(self) -> None:
        with warnings.catch_warnings():
            # a D_b-only step leaves the other optimizers idle: their schedule still advances
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            for s in self.schedulers.values():
                s.step()
        self.iteration += 1

    def step(
        self,
        xa: torch.Tensor,
        xb: torch.Tensor,
        ca: torch.Tensor,
        cb: torch.Tensor,
        clean: torch.Tensor | None = None,
        qa: torch.Tensor | None = None,
        qb: torch.Tensor | None = None,
        q_clean: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One step on images of scanner a and b ((n, 1, D, H, W) each, same size) and their
        one-hot labels (n, C); ``clean``: for travelling heads (xa, xb one head on two
        scanners), that head, normalized; ``qa``, ``qb``, ``q_clean``: the quantiles of their
        whole heads (head curves; default: of xa, xb, clean themselves, exact for whole
        volumes). Returns a dict of float losses (see LOSS_NAMES)."""
        m, w = self.model, self.w
        m.train()
        x, c = torch.cat([xa, xb]), torch.cat([ca, cb])
        if self.content_d_alone():
            out = {"D_b": self._update_content_d(x, c)}
            self._end_step()
            return out
        # head curves: each image's head quantiles, and those of what G makes from it
        qa = m.head_quantiles(xa) if qa is None else qa.to(xa.device)
        qb = m.head_quantiles(xb) if qb is None else qb.to(xb.device)
        cat = _cat_or_none
        out: dict[str, float] = {}
        if self.content_d_every == 1:
            out["D_b"] = self._update_content_d(x, c)
        ac = autocast_for(self.device, self.amp)
        n = xa.shape[0]
        size = tuple(xa.shape[2:])
        discs = [m.dis_b, m.dis_enc, m.dis_rand]
        encgen = [m.enc_b, m.enc_s, m.gen]

        # forward: codes, cross translation, re-encoding, second translation
        self._trainable(encgen, True)
        with ac:
            zb0, x_pad = m.content(x, noise=False)
            zb = zb0 + torch.randn_like(zb0) if self.cfg.content_noise else zb0
            mu, logvar = m.scanner(x, c)
            zs = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            zr = torch.randn(n, self.cfg.z_dim, device=x.device)
            zb_a, zb_b = zb.split(n)
            zs_a, zs_b = zs.split(n)
            pad_a, pad_b = x_pad.split(n)
            # for a: content [b, a, b], code [a, a, random], label a; for b the mirror (ref
            # order); one generator call for both
            f = m.generate(
                torch.cat([zb_b, zb_a, zb_b, zb_a, zb_b, zb_a]),
                torch.cat([zs_a, zs_a, zr, zs_b, zs_b, zr]),
                torch.cat([ca, ca, ca, cb, cb, cb]),
                torch.cat([pad_b, pad_a, pad_b, pad_a, pad_b, pad_a]),
                size,
                cat([qb, qa, qb, qa, qb, qa]),
            )
            fake_a, self_a, rand_a, fake_b, self_b, rand_b = f.split(n)
            fake_enc = torch.cat([fake_a, fake_b])  # labels c
            zb_r, pad_r = m.content(fake_enc)
            mu_r, lv_r = m.scanner(fake_enc, c)
            zs_r = mu_r + torch.randn_like(mu_r) * (0.5 * lv_r).exp()
            zb_rb, zb_ra = zb_r.split(n)  # fake_a carries b's content
            zs_ra, zs_rb = zs_r.split(n)
            pad_fa, pad_fb = pad_r.split(n)
            # both cycles in one call: a batch of one would take the slow CPU convolution
            # fake_a is b's head drawn as a (fake_b the mirror): its head quantiles are b's
            # through the curve G drew; the cycle reads them detached, translate_quantiles
            # (travelling heads) trains on them
            q_fake = m.output_quantiles(cat([qb, qa]), zs, c, detach=clean is None)
            q_fake_a, q_fake_b = (None, None) if q_fake is None else q_fake.detach().split(n)
            cyc = m.generate(
                torch.cat([zb_ra, zb_rb]),
                torch.cat([zs_ra, zs_rb]),
                c,
                torch.cat([pad_fb, pad_fa]),
                size,
                cat([q_fake_b, q_fake_a]),
            )

        # image discriminators: real vs fakes from encoded codes / from random codes
        fake_rand = torch.cat([rand_a, rand_b])
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

        # E_b, E_s, G on all losses but L_lat and the random-code adversarial terms
        self._trainable(discs, False)
        self._zero("enc_b", "enc_s", "gen")
        with ac:
            adv_b = L.adv_b(m.dis_b(zb.float()), c, fool=True)
            pf, pcls = m.dis_enc(fake_enc)
        terms = {
            "adv_b": (w.adv_b, adv_b),
            "adv_s": (w.adv_s, L.adv_s(pf, True)),
            "cls_s": (w.cls_s_fake, L.cls_s(pcls, c)),
            "rec": (w.rec, L.rec(x, torch.cat([self_a, self_b]))),
            "cc": (w.cc, L.cc(x, cyc)),
            "kl": (w.kl, L.kl(mu, logvar)),
            "kl_content": (w.kl_content, L.kl_content(zb)),
        }
        if clean is not None:
            if q_clean is None:
                q_clean = m.head_quantiles(clean)
            terms.update(
                self._travelling_terms(zb0, x_pad, clean, n, size, cat([qa, qb]), q_clean)
            )
            # fake_a is b's head drawn with a's code and label: for one head, that is xa
            terms["pair_translate"] = (w.pair_translate, L.pair_translate(fake_enc, x))
            if q_fake is not None:  # and the whole head's quantiles: b's through that curve
                loss = L.translate_quantiles(q_fake, cat([qa, qb]))
                terms["translate_quantiles"] = (w.translate_quantiles, loss)
        sum(weight * value for weight, value in terms.values()).backward()
        self._sync(*encgen)
        for k in ("enc_b", "enc_s", "gen"):
            self.optims[k].step()
        out.update({k: v.item() for k, (_, v) in terms.items() if k != "kl_content"})

        # second pass (fresh forward, updated weights, a new random code): E_b and G on
        # L_lat and the random-code adversarial and classification terms
        self._trainable([m.enc_s], False)
        self._zero("enc_b", "gen")
        with ac:
            zb2, x_pad2 = m.content(x)
            zb2_a, zb2_b = zb2.split(n)
            pad2_a, pad2_b = x_pad2.split(n)
            zr2 = torch.randn(n, self.cfg.z_dim, device=x.device)
            rand = m.generate(
                torch.cat([zb2_b, zb2_a]),
                torch.cat([zr2, zr2]),
                c,
                torch.cat([pad2_b, pad2_a]),
                size,
                cat([qb, qa]),
            )
            pf2, pcls2 = m.dis_rand(rand)
            mu2, _ = m.scanner(rand, c)
        adv_s2 = L.adv_s(pf2, True)
        cls_s2 = L.cls_s(pcls2, c)
        lat = L.lat(mu2, torch.cat([zr2, zr2]))
        (w.adv_s * adv_s2 + w.cls_s_fake * cls_s2 + w.lat * lat).backward()
        self._sync(m.enc_b, m.gen)
        self.optims["enc_b"].step()
        self.optims["gen"].step()
        self._trainable([m.enc_s, *discs], True)
        out["lat"] = lat.item()
        self._end_step()
        return out

    def _travelling_terms(
        self, zb0, x_pad, clean, n: int, size, head_q=None, q_clean=None
    ) -> dict:
        """pair_content, pair_free and anchor of a travelling-head batch (noise-free codes:
        inference uses them), and anchor_quantiles with one curve per head."""
        m, w = self.model, self.w
        dev = zb0.device
        with autocast_for(self.device, self.amp):
            zero_z = torch.zeros(2 * n, self.cfg.z_dim, device=dev)
            zero_c = torch.zeros(2 * n, self.cfg.n_scanners, device=dev)
            free = m.generate(zb0, zero_z, zero_c, x_pad, size, head_q, restore=True)
        free_a, free_b = free.split(n)
        zb0_a, zb0_b = zb0.split(n)
        anchor = 0.5 * (L.anchor(free_a, clean) + L.anchor(free_b, clean))
        terms = {
            "pair_content": (w.pair_content, L.pair_content(zb0_a, zb0_b)),
            "pair_free": (w.pair_free, L.pair_free(free_a, free_b)),
            "anchor": (w.anchor, anchor),
        }
        if head_q is not None and q_clean is not None:
            free_q = m.output_quantiles(head_q, zero_z, zero_c, detach=False)
            q_clean = q_clean.to(dev).expand(2 * n, -1)
            terms["anchor_quantiles"] = (w.anchor_quantiles, L.anchor_quantiles(free_q, q_clean))
        return terms


def _cat_or_none(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """torch.cat of the parts, or None when they are None (configurations without head
    quantiles)."""
    return None if parts[0] is None else torch.cat(parts)
