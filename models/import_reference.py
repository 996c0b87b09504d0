"""Import a checkpoint of the reference DISARM code into a model directory.

The reference implementation (github.com/luca2245/DISARM_Harmonization, ``Code/DISARM_class.py``,
``DISARM.save``) writes with ``torch.save`` a dict of the six networks' state dicts (``enc_c``
anatomy encoder, ``enc_a`` scanner encoder, ``gen`` generator, ``disContent`` content
discriminator, ``dis1`` / ``dis2`` image discriminators on encoded / random scanner codes), their
Adam states (``<network>_opt``) and the counters ``ep`` and ``total_it``.

It is read with ``torch.load(weights_only=True)`` only: tensors and plain containers, never
pickled code. Every parameter of E_b, E_s and G is mapped by name to this project's networks
built with :func:`import_config` (the reference configuration with the reference's own
upsampling layers and stem slope) and its shape checked. The reference's discriminators are
checked against the reference's layer shapes but not imported: ours are built differently (see
docs/model.md) and harmonization does not use them; the model directory gets freshly
initialized ones (seeded), so it harmonizes but is no checkpoint to resume training from.
Anything that does not fit (an unknown or missing key, a wrong shape, a non-finite value)
raises :class:`ValueError` with one sentence naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from .checkpoint import sha256_file, versions, write_model_dir
from .disarm import Disarm
from .networks import NetworkConfig, reference_config
from .train import INTENSITY_CARD

__all__ = [
    "REFERENCE",
    "import_config",
    "name_map",
    "discriminator_shapes",
    "load_reference_checkpoint",
    "convert_reference",
    "import_reference",
]

REFERENCE = "github.com/luca2245/DISARM_Harmonization (Code/DISARM_class.py)"
#: reference network -> ours, imported
NETWORKS = {"enc_c": "enc_b", "enc_a": "enc_s", "gen": "gen"}
#: reference discriminators: checked against the reference's shapes, not imported
DISCRIMINATORS = ("disContent", "dis1", "dis2")
#: further keys DISARM.save writes; accepted and not imported (absent is fine)
OPTIONAL = (*(f"{n}_opt" for n in (*NETWORKS, *DISCRIMINATORS)), "ep", "total_it")


def import_config(n_scanners: int) -> NetworkConfig:
    """:func:`reference_config` with the reference's own layers: its transposed upsampling
    (2n - 1 voxels, then a 2x2x2 head) and E_b's stem LeakyReLU at PyTorch's default slope."""
    return replace(reference_config(n_scanners), upsample="reference", stem_slope=0.01)


def name_map() -> dict[str, str]:
    """Reference key (``<network>.<parameter>``) -> our state-dict key, for E_b, E_s and G."""
    out: dict[str, str] = {}

    def both(ref: str, ours: str) -> None:
        for p in ("weight", "bias"):
            out[f"{ref}.{p}"] = f"{ours}.{p}"

    def res(ref: str, ours: str) -> None:  # INSResBlock3d -> ResBlock: its two convolutions
        both(f"{ref}.model.1", f"{ours}.body.0.1")
        both(f"{ref}.model.5", f"{ours}.body.3.1")

    # E_b: 7^3 stem, stride-2 convolution, four residual blocks (then the noise layer)
    both("enc_c.conv.0.model.1", "enc_b.net.0.1")
    both("enc_c.conv.1.model.1", "enc_b.net.2.1")
    for i in range(4):
        res(f"enc_c.conv.{2 + i}", f"enc_b.net.{5 + i}")
    # E_s: 4^3 stride-2 stem on image + label, three BasicBlock3d, the mu / logvar heads
    both("enc_a.conv.1", "enc_s.stem.1")
    for i in range(3):
        both(f"enc_a.conv.{2 + i}.conv.2", f"enc_s.blocks.{i}.conv1.1")
        both(f"enc_a.conv.{2 + i}.conv.4.1", f"enc_s.blocks.{i}.conv2.1")
        both(f"enc_a.conv.{2 + i}.shortcut.1", f"enc_s.blocks.{i}.short")
    both("enc_a.fc.0", "enc_s.mu")
    both("enc_a.fcVar.0", "enc_s.logvar")
    # G: shared block, three blocks after the concatenation, two upsampling layers, head
    res("gen.dec_share.0", "gen.share")
    for i in range(3):
        res(f"gen.dec1.{i}", f"gen.blocks.{i}")
    both("gen.dec2.0.model.0", "gen.up2.0")
    both("gen.dec3.0.model.0", "gen.up1.0")
    both("gen.dec4.0", "gen.head")
    return out


def discriminator_shapes(n_scanners: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the reference's discriminators (``Modules.py``), by key."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(key: str, cout: int, cin: int, k: int, bias: bool = True) -> None:
        out[f"{key}.weight"] = (cout, cin, k, k, k)
        if bias:
            out[f"{key}.bias"] = (cout,)

    for i, (cout, cin, k) in enumerate([(6, 8, 7), (6, 6, 5), (6, 6, 3), (6, 6, 3), (8, 6, 2)]):
        conv(f"disContent.model.{i}.model.1", cout, cin, k)
    conv("disContent.model.5", n_scanners, 8, 2)
    trunk = [(8, 1, 3), (16, 8, 3), (32, 16, 3), (64, 32, 3), (128, 64, 3), (128, 128, 2)]
    for d in ("dis1", "dis2"):
        for i, (cout, cin, k) in enumerate(trunk):
            conv(f"{d}.model.{i}.model.1", cout, cin, k)
        conv(f"{d}.conv1", 1, 128, 1, bias=False)  # real/fake patch head
        conv(f"{d}.conv2", n_scanners, 128, 3, bias=False)  # class head (image_size 216)
    return out


def load_reference_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)``, any failure a ValueError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types; its messages span several lines
        reason = _load_failure(exc)
        raise ValueError(
            f"not a checkpoint of plain tensors (torch.load refused it: {reason})"
        ) from None
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"holds a {type(ckpt).__name__}, not a dict of state dicts")
    return dict(ckpt)


def _load_failure(exc: Exception) -> str:
    """The gist of a failed ``torch.load``, on one line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch's message has ANSI bold
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds {found[1]}, code or an object that is no tensor"
    lines = [ln.strip() for ln in text.split("WeightsUnpickler error:")[-1].splitlines()]
    return next((ln for ln in lines if ln), type(exc).__name__)[:200]


def _flat(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """Check the top-level keys; -> ``{"<network>.<parameter>": tensor}`` of the six networks."""
    for key in ckpt:
        if key not in NETWORKS and key not in DISCRIMINATORS and key not in OPTIONAL:
            raise ValueError(f"unknown key {key!r} in the checkpoint (not written by DISARM.save)")
    flat: dict[str, torch.Tensor] = {}
    for net in (*NETWORKS, *DISCRIMINATORS):
        if net not in ckpt:
            raise ValueError(f"the checkpoint lacks the state dict {net!r}")
        if not isinstance(ckpt[net], Mapping):
            raise ValueError(f"{net!r} is a {type(ckpt[net]).__name__}, not a state dict")
        for name, value in ckpt[net].items():
            key = f"{net}.{name}"
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(f"key {key!r} is not a floating-point tensor")
            flat[key] = value
    for key in OPTIONAL:
        want = int if key in ("ep", "total_it") else Mapping
        if key in ckpt and not isinstance(ckpt[key], want):
            raise ValueError(f"key {key!r} is a {type(ckpt[key]).__name__}")
    return flat


def convert_reference(ckpt: Mapping, seed: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """Reference checkpoint dict -> (state dict of :class:`Disarm` (:func:`import_config`),
    number of scanners). The number of scanners is read from E_s's stem (image + one-hot
    label channels); our discriminators are freshly initialized with ``seed``."""
    flat = _flat(ckpt)
    stem = flat.get("enc_a.conv.1.weight")
    if stem is None or stem.dim() != 5 or stem.shape[1] < 3:
        raise ValueError("key 'enc_a.conv.1.weight' is missing or not a 3D convolution weight")
    n = int(stem.shape[1]) - 1
    torch.manual_seed(seed)
    state = Disarm(import_config(n)).state_dict()
    mapping = name_map()
    expected = {ref: tuple(state[ours].shape) for ref, ours in mapping.items()}
    expected.update(discriminator_shapes(n))
    for key, value in flat.items():
        if key not in expected:
            raise ValueError(f"unexpected key {key!r} (not in the reference architecture)")
        if tuple(value.shape) != expected[key]:
            raise ValueError(
                f"key {key!r} has shape {tuple(value.shape)}, expected {expected[key]} for "
                f"{n} scanners"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"key {key!r} holds NaN or infinite values")
    missing = [key for key in expected if key not in flat]
    if missing:
        raise ValueError(f"the checkpoint lacks key {missing[0]!r} ({len(missing)} missing)")
    for ref, ours in mapping.items():
        state[ours] = flat[ref].detach().float().clone()
    return state, n


def import_reference(
    checkpoint: str | Path,
    model_dir: str | Path,
    scanners: list[str] | None = None,
    name: str | None = None,
    seed: int = 0,
) -> Path:
    """Convert a reference checkpoint into the model directory ``model_dir``; returns it.

    ``scanners``: names in label order (the reference stores none; default ``scanner-1`` ..
    ``scanner-N``, N read from the weights). ``name``: the model's name (default: the
    checkpoint's file stem). The card stores no mean scanner codes (the reference keeps
    none): the imported model harmonizes in modes scanner-free and reference.
    """
    checkpoint = Path(checkpoint)
    ckpt = load_reference_checkpoint(checkpoint)
    state, n = convert_reference(ckpt, seed=seed)
    scanners = list(scanners) if scanners else [f"scanner-{i + 1}" for i in range(n)]
    if len(scanners) != n:
        raise ValueError(f"{len(scanners)} scanner names given, the checkpoint has {n} scanners")
    if len(set(scanners)) != n:
        raise ValueError("scanner names must be distinct")
    cfg = import_config(n)
    card = {
        "name": name or checkpoint.stem,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "scanners": scanners,
        "intensity": dict(INTENSITY_CARD, clip_max=cfg.clip_max),
        "training": {"patch_size": None, "trained_by": REFERENCE},  # whole volumes
        "imported": {
            "from": REFERENCE,
            "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": sha256_file(checkpoint),
            "epoch": ckpt.get("ep"),
            "iterations": ckpt.get("total_it"),
            "networks": dict(NETWORKS),
            "discriminators": f"checked, not imported; ours initialized with seed {seed}",
            "reference_intensity": "min-max of each volume to [-1, 1] (tio.RescaleIntensity)",
        },
        "versions": versions(),
    }
    return write_model_dir(model_dir, state, card)
