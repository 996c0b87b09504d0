"""Model directories: safetensors weights + a JSON model card, checked on load.

A model directory holds

* ``model.safetensors``: the weights of all six networks (``enc_b.*``, ``enc_s.*``, ``gen.*``,
  ``dis_b.*``, ``dis_enc.*``, ``dis_rand.*``), float32;
* ``model_card.json``: network configuration, scanner names in label order, the mean scanner
  code of each training scanner, intensity normalization, training data summary, steps, seeds,
  versions and ``weights_sha256`` (the SHA-256 of ``model.safetensors``).

Training checkpoints add ``training_state.safetensors`` (optimizer moments) and
``training_state.json`` (step, schedulers, seeds). Nothing is ever unpickled: safetensors and
JSON only. Every problem (missing file, not safetensors, truncated, checksum or shape
mismatch) raises :class:`CheckpointError` with one clear sentence.

Directories are written to a temporary sibling and renamed into place, so a crash never
leaves a half-written model where a good one was.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import default_permissions, write_json_atomic
from .networks import NetworkConfig

__all__ = [
    "CheckpointError",
    "WEIGHTS",
    "CARD",
    "FORMAT",
    "sha256_file",
    "versions",
    "write_model_dir",
    "read_card",
    "load_weights",
    "load_model",
    "flatten_state",
    "unflatten_state",
]

WEIGHTS = "model.safetensors"
CARD = "model_card.json"
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
FORMAT = "disarm-model/1"


class CheckpointError(RuntimeError):
    """A model directory is missing, corrupt, or does not match its model card."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict:
    import numpy

    out = {"python": platform.python_version(), "torch": torch.__version__}
    out["numpy"] = numpy.__version__
    try:
        from importlib.metadata import version

        out["disarm-pipeline"] = version("disarm-pipeline")
    except Exception:  # not installed as a distribution
        out["disarm-pipeline"] = "unknown"
    return out


def flatten_state(obj, prefix: str = "") -> tuple[dict[str, torch.Tensor], object]:
    """Split a nested dict/list of tensors and plain values into (tensors, JSON skeleton)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, key):
        if isinstance(o, torch.Tensor):
            tensors[key] = o.detach().cpu().contiguous()
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in o.items()]}
        if isinstance(o, list | tuple):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(o)]
        return o

    return tensors, walk(obj, prefix or "s")


def unflatten_state(skeleton, tensors: dict[str, torch.Tensor]):
    def walk(o):
        if isinstance(o, dict) and "__tensor__" in o:
            return tensors[o["__tensor__"]]
        if isinstance(o, dict) and "__dict__" in o:
            return {k: walk(v) for k, v in o["__dict__"]}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(skeleton)


def write_model_dir(
    dest: str | Path,
    state_dict: dict[str, torch.Tensor],
    card: dict,
    training_state: dict | None = None,
) -> Path:
    """Write weights + card (+ training state) to ``dest`` atomically; returns ``dest``.

    ``card`` gets ``format`` and ``weights_sha256`` filled in. An existing ``dest`` is only
    removed after the new directory is complete.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    default_permissions(tmp, 0o777)  # a model folder is meant to be shared
    try:
        tensors = {k: v.detach().cpu().contiguous().float() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        card = dict(card, format=FORMAT, weights_sha256=sha256_file(tmp / WEIGHTS))
        if training_state is not None:
            st_tensors, skeleton = flatten_state(training_state)
            save_file(st_tensors, str(tmp / STATE_TENSORS))
            write_json_atomic(tmp / STATE_JSON, skeleton, sort_keys=False)
        write_json_atomic(tmp / CARD, card, sort_keys=False)  # last: a card = complete
        for f in tmp.iterdir():  # safetensors writes 0600
            default_permissions(f)
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_card(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    path = model_dir / CARD
    if not path.is_file():
        raise CheckpointError(f"{model_dir} is not a DISARM model directory (no {CARD})")
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown model card format (expected {FORMAT})")
    for key in ("config", "scanners", "weights_sha256"):
        if key not in card:
            raise CheckpointError(f"{path}: model card lacks {key!r}")
    return card


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def load_weights(model_dir: str | Path, card: dict | None = None) -> dict[str, torch.Tensor]:
    """Weights of a model directory, after checking their SHA-256 against the card."""
    model_dir = Path(model_dir)
    card = card or read_card(model_dir)
    path = model_dir / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{model_dir} has no {WEIGHTS}")
    digest = sha256_file(path)
    if digest != card["weights_sha256"]:
        raise CheckpointError(
            f"{path} does not match its model card (sha256 {digest[:12]}..., card says "
            f"{str(card['weights_sha256'])[:12]}...): corrupt, truncated or replaced"
        )
    return _load_safetensors(path)


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """-> (Disarm model in eval mode on ``device``, card). Strict: every tensor must match."""
    from .disarm import Disarm

    card = read_card(model_dir)
    try:
        cfg = NetworkConfig.from_dict(card["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{model_dir}: invalid network configuration: {exc}") from exc
    if len(card["scanners"]) != cfg.n_scanners:
        raise CheckpointError(f"{model_dir}: card lists {len(card['scanners'])} scanners, "
                              f"configuration says {cfg.n_scanners}")  # fmt: skip
    model = Disarm(cfg)
    weights = load_weights(model_dir, card)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    bad = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        detail = (missing or unexpected or bad)[:3]
        raise CheckpointError(
            f"{model_dir}: weights do not fit the configuration "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(bad)} wrong shape; "
            f"e.g. {', '.join(detail)})"
        )
    model.load_state_dict(weights)
    return model.to(device).eval(), card


def load_training_state(model_dir: str | Path) -> dict:
    """Optimizer/scheduler/step state of a training checkpoint."""
    model_dir = Path(model_dir)
    js = model_dir / STATE_JSON
    if not js.is_file():
        raise CheckpointError(f"{model_dir} is not a training checkpoint (no {STATE_JSON})")
    try:
        skeleton = json.loads(js.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{js} is not valid JSON: {exc}") from exc
    tensors = _load_safetensors(model_dir / STATE_TENSORS)
    try:
        return unflatten_state(skeleton, tensors)
    except KeyError as exc:
        raise CheckpointError(f"{model_dir}: training state is incomplete ({exc})") from exc
