"""disarm-import: a checkpoint of the reference DISARM code becomes a model directory.

The checkpoint is built here from the reference's layer definitions (github.com/luca2245/
DISARM_Harmonization, Code/Modules.py and Code/Basic_Blocks.py): its parameter names and
shapes, random values, saved with torch.save as DISARM.save does (six state dicts, six Adam
states, ep and total_it).
"""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from models.checkpoint import CARD
from models.harmonize import HarmonizeError, Harmonizer
from models.import_reference import convert_reference, import_reference
from pipeline.cli import harmonize as harmonize_cli
from pipeline.cli import import_reference as import_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NZ = 8  # the reference's scanner code size (DISARM.nz)


def _conv(sd: dict, key: str, cout: int, cin: int, k: int, bias=True, transposed=False):
    shape = (cin, cout, k, k, k) if transposed else (cout, cin, k, k, k)
    sd[f"{key}.weight"] = 0.05 * torch.randn(shape)
    if bias:
        sd[f"{key}.bias"] = 0.05 * torch.randn(cout)


def _res(sd: dict, key: str, c: int):
    """INSResBlock3d(c, c): [pad, conv, IN, ReLU, pad, conv, IN]."""
    _conv(sd, f"{key}.model.1", c, c, 3)
    _conv(sd, f"{key}.model.5", c, c, 3)


def reference_checkpoint(n: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    enc_c = {}  # Anatomy_Encoder(1)
    _conv(enc_c, "conv.0.model.1", 4, 1, 7)  # LeakyReLUConv3d(1, 4, 7, 1, 3)
    _conv(enc_c, "conv.1.model.1", 8, 4, 3)  # ReLUINSConv3d(4, 8, 3, 2, 1)
    for i in range(2, 6):  # 3 + 1 INSResBlock3d(8, 8), then GaussianNoiseLayer
        _res(enc_c, f"conv.{i}", 8)
    enc_a = {}  # Scanner_Encoder(1, output_nc=8, c_dim=n)
    _conv(enc_a, "conv.1", 8, 1 + n, 4)  # after ReflectionPad3d(1)
    for i, (a, b) in zip(range(2, 5), [(8, 16), (16, 24), (24, 32)], strict=True):
        _conv(enc_a, f"conv.{i}.conv.2", a, a, 3)  # BasicBlock3d: [lrelu, pad, conv, lrelu,
        _conv(enc_a, f"conv.{i}.conv.4.1", b, a, 3)  # convMeanpool3d[pad, conv, pool]]
        _conv(enc_a, f"conv.{i}.shortcut.1", b, a, 1)  # meanpoolConv3d[pool, conv]
    for head in ("fc.0", "fcVar.0"):
        enc_a[f"{head}.weight"] = 0.05 * torch.randn(NZ, 32)
        enc_a[f"{head}.bias"] = 0.05 * torch.randn(NZ)
    gen = {}  # Generator(1, c_dim=n, nz=8)
    _res(gen, "dec_share.0", 8)
    t = 8 + NZ + n
    for i in range(3):
        _res(gen, f"dec1.{i}", t)
    t += NZ
    _conv(gen, "dec2.0.model.0", t // 2, t, 3, transposed=True)  # stride 2
    t = t // 2 + NZ
    _conv(gen, "dec3.0.model.0", t // 2, t, 3, transposed=True)
    t = t // 2 + NZ
    _conv(gen, "dec4.0", 1, t, 2, transposed=True)  # then Tanh
    dis_content = {}  # Anatomy_Discriminator(c_dim=n)
    for i, (cout, cin, k) in enumerate([(6, 8, 7), (6, 6, 5), (6, 6, 3), (6, 6, 3), (8, 6, 2)]):
        _conv(dis_content, f"model.{i}.model.1", cout, cin, k)
    _conv(dis_content, "model.5", n, 8, 2)
    ckpt = {"disContent": dis_content, "enc_c": enc_c, "enc_a": enc_a, "gen": gen}
    for d in ("dis1", "dis2"):  # Scanner_Discriminator(1, c_dim=n): 6 layers, 2 heads
        dis = {}
        trunk = [(8, 1, 3), (16, 8, 3), (32, 16, 3), (64, 32, 3), (128, 64, 3), (128, 128, 2)]
        for i, (cout, cin, k) in enumerate(trunk):
            _conv(dis, f"model.{i}.model.1", cout, cin, k)
        _conv(dis, "conv1", 1, 128, 1, bias=False)
        _conv(dis, "conv2", n, 128, 3, bias=False)
        ckpt[d] = dis
    for net in ("dis1", "dis2", "disContent", "enc_c", "enc_a", "gen"):
        group = {"lr": 1e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 1e-4}
        params = list(range(len(ckpt[net])))
        state = {i: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(1)} for i in params}
        ckpt[f"{net}_opt"] = {"state": state, "param_groups": [dict(group, params=params)]}
    ckpt.update(ep=12, total_it=3400)
    return ckpt


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "last.pth"
    torch.save(reference_checkpoint(2), path)
    return path


def phantom(shape=(16, 18, 14)) -> nib.Nifti1Image:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum(((g - m) / m) ** 2 for g, m in zip((z, y, x), c, strict=True)))
    data = np.where(r < 0.9, 600.0, 5.0) + np.where(r < 0.5, 300.0, 0.0)
    return nib.Nifti1Image((data + rng.normal(0, 10, shape)).astype(np.float32), np.eye(4))


def test_imported_model_loads_with_weights_in_place_and_harmonizes(checkpoint, tmp_path):
    ref = torch.load(checkpoint, weights_only=True)
    out = import_reference(checkpoint, tmp_path / "model")
    h = Harmonizer.from_dir(out, device="cpu")
    m = h.model
    assert h.scanners == ["scanner-1", "scanner-2"]  # N read from the weights
    assert h.cfg.upsample == "reference" and h.cfg.stem_slope == 0.01
    assert torch.equal(m.enc_b.net[0][1].weight, ref["enc_c"]["conv.0.model.1.weight"])
    assert torch.equal(m.enc_b.net[8].body[3][1].bias, ref["enc_c"]["conv.5.model.5.bias"])
    assert torch.equal(m.enc_s.stem[1].weight, ref["enc_a"]["conv.1.weight"])
    assert torch.equal(m.enc_s.blocks[2].short.weight, ref["enc_a"]["conv.4.shortcut.1.weight"])
    assert torch.equal(m.enc_s.logvar.weight, ref["enc_a"]["fcVar.0.weight"])
    assert torch.equal(m.gen.blocks[1].body[0][1].weight, ref["gen"]["dec1.1.model.1.weight"])
    assert torch.equal(m.gen.up2[0].weight, ref["gen"]["dec2.0.model.0.weight"])
    assert torch.equal(m.gen.head.weight, ref["gen"]["dec4.0.weight"])  # the 2x2x2 head
    card = json.loads((out / CARD).read_text())
    assert card["name"] == "last" and card["imported"]["iterations"] == 3400
    assert "scanner_codes" not in card

    img = phantom()
    y, meta = h.harmonize(img, mode="scanner-free")
    assert y.shape == img.shape and np.isfinite(y.get_fdata()).all()
    y, meta = h.harmonize(img, mode="reference", reference=phantom((14, 16, 16)))
    assert y.shape == img.shape and len(meta["scanner_code"]) == NZ
    with pytest.raises(HarmonizeError, match="no mean scanner code for 'scanner-1'"):
        h.harmonize(img, mode="target", target="scanner-1")


def _drop(ckpt: dict) -> dict:
    del ckpt["enc_c"]["conv.5.model.5.bias"]
    return ckpt


@pytest.mark.parametrize(
    "spoil, key",
    [
        (lambda c: c["gen"].update({"dec5.0.weight": torch.zeros(1)}) or c, "'gen.dec5.0.weight'"),
        # our own "transpose" head: 1x1x1 where the reference's is 2x2x2
        (lambda c: c["gen"].update({"dec4.0.weight": torch.zeros(18, 1, 1, 1, 1)}) or c,
         "'gen.dec4.0.weight' has shape (18, 1, 1, 1, 1), expected (18, 1, 2, 2, 2)"),
        (lambda c: c["dis1"].update({"conv2.weight": torch.zeros(2, 128, 2, 2, 2)}) or c,
         "'dis1.conv2.weight' has shape"),
        (_drop, "lacks key 'enc_c.conv.5.model.5.bias'"),
        (lambda c: c.update(scheduler={}) or c, "unknown key 'scheduler'"),
        (lambda c: c.pop("disContent") and c, "lacks the state dict 'disContent'"),
        (lambda c: c["enc_a"].update({"fc.0.bias": torch.full((NZ,), np.nan)}) or c,
         "'enc_a.fc.0.bias' holds NaN"),
    ],
    ids=["unexpected", "shape", "disc-shape", "missing", "unknown-top", "no-network", "nan"],
)  # fmt: skip
def test_what_does_not_map_is_refused_in_one_line_naming_the_key(spoil, key):
    with pytest.raises(ValueError) as err:
        convert_reference(spoil(reference_checkpoint(2)))
    assert key in str(err.value) and "\n" not in str(err.value)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_never_run(tmp_path):
    ckpt = reference_checkpoint(2)
    ckpt["gen_opt"] = {"payload": _RunsCode(tmp_path / "ran")}
    torch.save(ckpt, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="not a checkpoint of plain tensors"):
        import_reference(tmp_path / "evil.pth", tmp_path / "model")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "model").exists()


def test_cli_imports_then_harmonizes_and_refuses_with_exit_codes(checkpoint, tmp_path, capsys):
    model = tmp_path / "model"
    argv = [str(checkpoint), str(model), "--scanners", "prisma", "achieva", "--name", "mine"]
    assert import_cli.main(argv) == 0
    card = json.loads((model / CARD).read_text())
    assert card["scanners"] == ["prisma", "achieva"] and card["name"] == "mine"
    assert import_cli.main(argv) == 64  # exists, no --force
    assert import_cli.main([*argv, "--force"]) == 0
    assert import_cli.main([str(checkpoint), str(tmp_path / "m3"), "--scanners", "a"]) == 1
    assert import_cli.main([str(tmp_path / "none.pth"), str(tmp_path / "m4")]) == 66
    bad = reference_checkpoint(3)
    bad["gen"]["extra.weight"] = torch.zeros(2)
    torch.save(bad, tmp_path / "bad.pth")
    capsys.readouterr()
    assert import_cli.main([str(tmp_path / "bad.pth"), str(tmp_path / "m5")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected key 'gen.extra.weight'" in err
    assert not (tmp_path / "m5").exists()

    nib.save(phantom(), tmp_path / "t1w.nii.gz")
    run = [str(tmp_path / "t1w.nii.gz"), str(tmp_path / "out.nii.gz"), "--model", str(model)]
    assert harmonize_cli.main([*run, "--device", "cpu"]) == 0
    assert (
        harmonize_cli.main([*run, "--mode", "target", "--target", "prisma", "--device", "cpu"])
        == 64
    )
    assert "no mean scanner code for 'prisma'" in capsys.readouterr().err
