"""Losses, the update order and the LR schedule of one DISARM iteration."""

import pytest
import torch

from models import losses as L
from models.disarm import Disarm, one_hot
from models.networks import get_config
from models.trainer import LOSS_NAMES, DisarmTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_every_loss_finite_and_differentiable():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, requires_grad=True)
    patch = torch.randn(2, 1, 3, 3, 3, requires_grad=True)
    labels = one_hot([0, 2], 3)
    x = torch.rand(2, 1, 6, 6, 6)
    y = torch.rand(2, 1, 6, 6, 6, requires_grad=True)
    mu = torch.randn(2, 8, requires_grad=True)
    logvar = torch.randn(2, 8, requires_grad=True)
    zb = torch.randn(2, 8, 3, 3, 3, requires_grad=True)
    cases = {
        "adv_b": (L.adv_b(logits, labels), logits),
        "adv_b_fool": (L.adv_b(logits, labels, fool=True), logits),
        "adv_s_real": (L.adv_s(patch, True), patch),
        "adv_s_fake": (L.adv_s(patch, False), patch),
        "cls_s": (L.cls_s(logits, labels), logits),
        "cc": (L.cc(x, y), y),
        "rec": (L.rec(x, y), y),
        "kl": (L.kl(mu, logvar), logvar),
        "kl_content": (L.kl_content(zb), zb),
        "lat": (L.lat(mu, torch.zeros(2, 8)), mu),
        "pair_content": (L.pair_content(zb, torch.zeros_like(zb)), zb),
        "pair_free": (L.pair_free(y, x), y),
        "anchor": (L.anchor(y, x), y),
        "pair_translate": (L.pair_translate(y, x), y),
    }
    for name, (loss, leaf) in cases.items():
        assert loss.ndim == 0 and torch.isfinite(loss), name
        (grad,) = torch.autograd.grad(loss, leaf)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # known values: KL of the prior is 0; fooling reverses the target: logits that name
    # scanner 0 confidently are a small loss for D_b and a large one for E_b
    assert L.kl(torch.zeros(1, 8), torch.zeros(1, 8)).item() == 0.0
    sure = torch.tensor([[10.0, -10.0]])
    assert L.adv_b(sure, one_hot([0], 2)).item() < 1e-3
    assert L.adv_b(sure, one_hot([0], 2), fool=True).item() > 9.0
    assert L.anchor(x, x).item() == 0.0 and L.pair_free(x, x + 0.5).item() == pytest.approx(0.5)


def test_reference_weights():
    w = L.LossWeights()
    assert (w.adv_b, w.adv_s, w.cls_s_real, w.cls_s_fake) == (1, 1, 3, 10)
    assert (w.cc, w.rec, w.kl, w.kl_content, w.lat) == (10, 10, 0.01, 0.01, 8)
    assert min(w.pair_content, w.pair_free, w.anchor, w.pair_translate) > 0


def test_lr_decays_linearly_to_zero_over_second_half():
    model = Disarm(get_config("reference", n_scanners=2))
    tr = DisarmTrainer(model, total_steps=8, lr=1e-4)
    lrs = []
    for _ in range(8):
        lrs.append(tr.lr())
        for k, s in tr.schedulers.items():
            tr.optims[k].step()  # no gradients: a no-op, keeps the scheduler's order check quiet
            s.step()
    lrs.append(tr.lr())
    assert lrs[:5] == [1e-4] * 5
    assert lrs[6] == pytest.approx(5e-5) and lrs[8] == 0.0
    assert tr.optims["dis_b"].param_groups[0]["lr"] == 0.0
    assert tr.optims["dis_b"].defaults["lr"] == pytest.approx(4e-5)


def _volumes(seed):
    """Two 'scanners' of one tiny phantom: different contrast, same anatomy."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, 3, 4, 3, generator=g)
    base = torch.nn.functional.interpolate(coarse, size=(12, 14, 10), mode="trilinear")
    return base * 1.6 - 0.8, (base**2) * 1.6 - 0.8


def test_training_steps_lower_reconstruction_loss():
    torch.manual_seed(0)
    model = Disarm(get_config("reference", n_scanners=2))
    tr = DisarmTrainer(model, total_steps=100, lr=1e-3)
    xa, xb = _volumes(0)
    ca, cb = one_hot([0], 2), one_hot([1], 2)
    history = [tr.step(xa, xb, ca, cb) for _ in range(12)]
    rec = [h["rec"] for h in history]
    for h in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in h.values())
    # all losses at once (GAN terms, sampled codes): noisy, so compare averages
    assert sum(rec[-3:]) / 3 < 0.9 * sum(rec[:2]) / 2
    assert tr.iteration == 12 and set(history[0]) >= {"D_b", "adv_b", "adv_s", "cls_s", "lat"}


def test_update_order_only_touches_the_right_networks():
    """The second pass updates E_b and G only: E_s changes only in the first pass."""
    torch.manual_seed(0)
    model = Disarm(get_config("fast", n_scanners=2))
    tr = DisarmTrainer(model, total_steps=10)
    xa, xb = _volumes(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.step(xa, xb, one_hot([0], 2), one_hot([1], 2))
    after = model.state_dict()
    for prefix in ("enc_b.", "enc_s.", "gen.", "dis_b.", "dis_enc.", "dis_rand."):
        changed = any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))
        assert changed, prefix


def _record_updates(tr: DisarmTrainer) -> list[str]:
    """Names of the optimizers stepped, in order."""
    calls: list[str] = []
    for name, opt in tr.optims.items():
        step = opt.step

        def wrapped(*a, _name=name, _step=step, **k):
            calls.append(_name)
            return _step(*a, **k)

        opt.step = wrapped
    return calls


def test_update_order_and_content_d_alone():
    """N = 2 (reference): D_b alone on one batch, then the full iteration without D_b, whose
    second pass updates E_b and G only. N = 1: D_b first on every batch."""
    torch.manual_seed(0)
    xa, xb = _volumes(2)
    ca, cb = one_hot([0], 2), one_hot([1], 2)
    tr = DisarmTrainer(Disarm(get_config("fast", n_scanners=2)), total_steps=10, content_d_every=2)
    calls = _record_updates(tr)
    first = tr.step(xa, xb, ca, cb)
    assert calls == ["dis_b"] and set(first) == {"D_b"}
    calls.clear()
    tr.step(xa, xb, ca, cb)
    assert calls == ["dis_enc", "dis_rand", "enc_b", "enc_s", "gen", "enc_b", "gen"]
    tr1 = DisarmTrainer(Disarm(get_config("fast", n_scanners=2)), total_steps=10)
    calls1 = _record_updates(tr1)
    tr1.step(xa, xb, ca, cb)
    assert calls1 == ["dis_b", "dis_enc", "dis_rand", "enc_b", "enc_s", "gen", "enc_b", "gen"]


def test_second_pass_draws_a_fresh_random_code():
    torch.manual_seed(0)
    model = Disarm(get_config("fast", n_scanners=2))
    tr = DisarmTrainer(model, total_steps=10)
    codes = []
    generate = model.generate

    def spy(zb, z, c, *rest):
        codes.append(z.detach().clone())
        return generate(zb, z, c, *rest)

    model.generate = spy
    xa, xb = _volumes(3)
    tr.step(xa, xb, one_hot([0], 2), one_hot([1], 2))
    first_random = codes[0][2:3]  # content [b, a, b, ...], code [a, a, random, ...]
    second = codes[-1][:1]
    assert first_random.shape == second.shape
    assert not torch.allclose(first_random, second)


@pytest.mark.parametrize("config", ["curves", "head-curves", "landmark-curves"])
def test_travelling_heads_add_their_losses_and_learn_the_anchor(config):
    """With a clean target, the step reports the four travelling-head losses, and steps on one
    head seen by two scanners of different tissue contrast (the curves configurations, their
    own loss weights) bring the scanner-free output toward the clean head. One curve per
    head maps one global contrast: its scanners differ by one (strong) curve each."""
    torch.manual_seed(0)
    model = Disarm(get_config(config, n_scanners=2))
    tr = DisarmTrainer(model, total_steps=1000, lr=3e-4, weights=L.LossWeights.for_config(config))
    clean, _ = _volumes(4)
    if config != "curves":
        xa = (clean + 1) ** 1.8 / 2**0.8 - 1
        xb = (clean + 1) ** 0.6 * 2**0.4 - 1
    else:
        xa = torch.where(clean > 0.3, clean * 1.3 - 0.2, clean * 0.6)  # two contrasts, not gains
        xb = torch.where(clean > 0.3, clean * 0.7 + 0.2, clean * 1.2)
    ca, cb = one_hot([0], 2), one_hot([1], 2)
    history = [tr.step(xa, xb, ca, cb, clean) for _ in range(40)]
    travelling = {"pair_content", "pair_free", "anchor", "pair_translate"}
    if config != "curves":  # the whole head's quantiles, mapped by the free / a -> b curve
        travelling |= {"anchor_quantiles", "translate_quantiles"}
    assert travelling <= set(history[0]) <= set(LOSS_NAMES)
    for name in travelling & {"anchor", "anchor_quantiles", "translate_quantiles"}:
        values = [h[name] for h in history]
        assert sum(values[-3:]) / 3 < 0.8 * sum(values[:2]) / 2, name
    plain = tr.step(xa, xb, ca, cb)
    assert not travelling & set(plain)


def test_trained_scanner_codes_separate_the_scanners():
    """After a short training on travelling heads (curves configuration), the mean codes of
    two scanners lie further apart than the codes of one scanner's images from each other."""
    torch.manual_seed(0)
    model = Disarm(get_config("curves", n_scanners=2))
    tr = DisarmTrainer(
        model, total_steps=1000, lr=1e-3, weights=L.LossWeights.for_config("curves")
    )

    def pair(seed: int):
        clean, _ = _volumes(seed)
        noise = torch.Generator().manual_seed(1000 + seed)
        xa = torch.where(clean > 0, clean * 1.3 - 0.2, clean * 0.6)
        xb = torch.where(clean > 0, clean * 0.7 + 0.2, clean * 1.2)
        xa = xa + 0.02 * torch.randn(xa.shape, generator=noise)
        xb = xb + 0.02 * torch.randn(xb.shape, generator=noise)
        return xa, xb, clean

    ca, cb = one_hot([0], 2), one_hot([1], 2)
    for i in range(60):
        tr.step(*pair(i % 8)[:2], ca, cb, pair(i % 8)[2])
    model.eval()
    with torch.no_grad():
        codes = [
            (model.scanner(xa, ca)[0], model.scanner(xb, cb)[0])
            for xa, xb, _ in (pair(s) for s in range(100, 108))
        ]
    a = torch.cat([c[0] for c in codes])
    b = torch.cat([c[1] for c in codes])
    between = (a.mean(0) - b.mean(0)).norm()
    within = 0.5 * ((a - a.mean(0)).norm(dim=1).mean() + (b - b.mean(0)).norm(dim=1).mean())
    assert between > 5 * within


def test_the_restorer_learns_from_travelling_heads_only():
    """restoring-curves: the restorer acts on the scanner-free output, so a travelling-head
    step (anchor, pair_free) updates it and a step on unpaired scanners leaves it alone."""
    torch.manual_seed(0)
    model = Disarm(get_config("restoring-curves", n_scanners=2))
    weights = L.LossWeights.for_config("restoring-curves")
    tr = DisarmTrainer(model, total_steps=100, lr=1e-3, weights=weights)
    clean, _ = _volumes(5)
    xa, xb = clean * 0.8 + 0.1 * torch.randn_like(clean), clean * 1.1
    ca, cb = one_hot([0], 2), one_hot([1], 2)
    r = model.gen.restorer.out.weight

    def snapshot():
        return r.detach().clone()

    start = snapshot()
    tr.step(xa, xb, ca, cb)
    torch.testing.assert_close(snapshot(), start, rtol=0, atol=0)
    tr.step(xa, xb, ca, cb, clean)
    assert (snapshot() - start).abs().max() > 0
