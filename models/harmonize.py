"""Inference: harmonize one T1w image with a trained DISARM model.

Modes (C = training scanners, z = scanner code, c = one-hot label):

* ``scanner-free``: ``G(E_b(x), z = 0, c = 0)``. z = 0 is the mean of the N(0, I) prior, so
  the output is deterministic; ``seed`` is recorded but changes nothing.
* ``target``: ``G(E_b(x), z_h, c_h)``: the stored mean code and the label of training
  scanner ``target``.
* ``reference``: ``G(E_b(x), E_s(r, c).mu, c)`` with the code encoded from one reference
  image ``r``; ``c`` = the label of ``target`` when given, else all zeros.

Intensities: the input is mapped by its robust range (see :mod:`models.intensity`) to
[-1, 1]; the output is mapped back either to the fixed range (``intensity_scale="fixed"``,
default: the input's background -> 0 and the harmonized robust maximum -> about 1000, the same
scale for every scanner) or to the input's own robust range (``"input"``). The output keeps
the input's affine, qform/sform codes and header, as float32.

Windows: a model trained on patches (its card's ``training.patch_size``) is run window by
window (1.5 x the patch size, half overlap, smooth blend; for curves per window or per head
the patch size itself, and head curves' windows share a quarter and give a gain each:
:meth:`Disarm.translate`), so that its instance norms see statistics like those of training;
a model trained on whole volumes
sees the whole volume. Air beyond a few voxels from the head, which no training patch held, is
the input's (:func:`head_weight`).

Grids: an input on another grid of the model's template world (``space``, e.g. FSL's
MNI152NLin6Asym grid for a model trained on nilearn's MNI152NLin2009aSym grid) is harmonized on
the model's grid and resampled back; how its space or preprocessing differs from the model's is
listed in ``ModelDomainWarnings`` (:mod:`models.domain`).
"""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import DEFAULT_MODEL_DIR
from .checkpoint import CheckpointError, load_model, versions
from .devices import DeviceError, resolve_device
from .disarm import Disarm, autocast_for, one_hot, windows
from .domain import Grid, ModelDomain, grid_warnings
from .intensity import FIXED_OUTPUT_RANGE, denormalize, normalize, robust_range
from .networks import NetworkConfig

__all__ = ["Harmonizer", "HarmonizeError", "DEFAULT_MODEL_DIR", "MODES", "grid_warnings"]

MODES = ("scanner-free", "target", "reference")


class HarmonizeError(ValueError):
    """A user-level problem with a harmonization request (bad image, unknown target...)."""


def _volume(img: nib.Nifti1Image, what: str) -> np.ndarray:
    if len(img.shape) != 3:
        raise HarmonizeError(f"the {what} image must be 3D, got shape {tuple(img.shape)}")
    if min(img.shape) < 2:
        raise HarmonizeError(f"the {what} image is too small: shape {tuple(img.shape)}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)


def head_weight(x: np.ndarray, dilate: int = 6, sigma: float = 2.0, step: int = 1) -> np.ndarray:
    """Soft head mask of a normalized image: 1 in the head and up to ``dilate`` voxels around
    it, falling smoothly (Gaussian, ``sigma`` voxels) to 0 in the air beyond.

    The head is the largest piece above 10% of the robust range (normalized > -0.8, the voxels
    training patches are centred on) after a 2-voxel Gaussian smoothing, holes filled.
    Training patches never held air far from the head, so the network's output there is not
    to be trusted and the input's air is kept instead. ``step`` > 1 finds the head on the
    means of step^3 blocks (distances scaled alike) and interpolates the soft mask back: a
    smooth mask at 1/step^3 of the cost (a second of a 1 mm head's harmonization at 1).
    """
    full = x.shape
    if step > 1:  # step^3 blocks averaged (edges replicated to whole blocks): block i's
        # centre is the full grid's step * i + (step - 1) / 2
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        pad = [(-n) % step for n in full]
        t = F.pad(t, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        x = F.avg_pool3d(t, step)[0, 0].numpy()
    head = ndimage.gaussian_filter(x, 2.0 / step) > -0.8  # smoothed first: noisy air stays out
    labels, n = ndimage.label(head)
    if n > 1:  # the head is the largest piece
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    head = ndimage.binary_fill_holes(
        ndimage.binary_dilation(head, iterations=max(1, round(dilate / step))) if dilate else head
    )
    w = ndimage.gaussian_filter(head.astype(np.float32), sigma / step)
    if step > 1:  # back onto the full grid (half-voxel centres: align_corners=False)
        t = torch.from_numpy(w)[None, None]
        w = F.interpolate(t, scale_factor=step, mode="trilinear", align_corners=False)
        w = w[0, 0, : full[0], : full[1], : full[2]].numpy()
    return np.clip(w, 0.0, 1.0)


def inference_tile(card: dict) -> int | None:
    """Window size for :meth:`Disarm.translate`: 1.5 x the training patch size (rounded to
    the model's size factor), or ``None`` (whole volume) for models trained on whole volumes
    or whose card does not say. Models with one curve per window use the patch size itself:
    the window their curves were learned on."""
    patch = (card.get("training") or {}).get("patch_size")
    if not patch:
        return None
    cfg = NetworkConfig.from_dict(card["config"])
    scale = 1.0 if cfg.curves_per_window else 1.5
    return int(math.ceil(scale * int(patch) / cfg.factor) * cfg.factor)


#: head curves: how much neighbouring windows share (0.25 and 0.5 measured alike on four
#: evaluation heads: docs/model.md, "Inference")
HEAD_CURVE_OVERLAP = 0.25


def inference_overlap(cfg: NetworkConfig) -> float:
    """The least fraction of a window its neighbours share in :meth:`Disarm.translate`: half,
    as the windows' outputs are blended; a quarter for head curves, whose windows only give
    a gain each, blended into a smooth field (a bias field varies over centimetres), which
    halves the windows' count and time."""
    return HEAD_CURVE_OVERLAP if cfg.curves_per_head else 0.5


class Harmonizer:
    """A loaded model ready to harmonize images (E_b, E_s and G only are used)."""

    def __init__(self, model: Disarm, card: dict, model_dir: Path, device: torch.device):
        self.model = model.eval()
        self.card = card
        self.model_dir = Path(model_dir)
        self.device = device
        self.cfg = model.cfg
        self.amp = False  # bf16 autocast; off: fp32 is fast enough and exact
        self.tile = inference_tile(card)
        self.domain = ModelDomain.from_card(card)  # template space, grid, preprocessing
        self.window_batch = 2  # windows per network call (see Disarm.translate)
        self.window_overlap = inference_overlap(self.cfg)

    @classmethod
    def from_dir(
        cls, path: str | Path | None = None, device: str | torch.device = "auto"
    ) -> Harmonizer:
        """Load a model directory (``None`` = the shipped default model)."""
        if path is None:
            path = DEFAULT_MODEL_DIR
            if not (path / "model_card.json").is_file():
                raise CheckpointError(
                    "no default DISARM model is shipped yet (models/weights/default/ is "
                    "empty): train one with disarm-train and pass its model directory"
                )
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"model directory not found: {path}")
        try:
            dev = resolve_device(device)
        except DeviceError as exc:
            raise HarmonizeError(str(exc)) from None
        model, card = load_model(path, dev)
        return cls(model, card, path, dev)

    @property
    def scanners(self) -> list[str]:
        return list(self.card["scanners"])

    def _tensor(self, data: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(data))[None, None].to(self.device)

    def _label(self, target: str | None) -> torch.Tensor:
        n = self.cfg.n_scanners
        if target is None:
            return torch.zeros(1, n, device=self.device)
        if target not in self.scanners:
            raise HarmonizeError(
                f"unknown target scanner {target!r}; known: {', '.join(self.scanners)}"
            )
        return one_hot([self.scanners.index(target)], n, self.device)

    @torch.inference_mode()
    def reference_code(self, xn: np.ndarray, c: torch.Tensor) -> torch.Tensor:
        """E_s code (mu, (1, z_dim)) of a normalized image, seen as E_s saw images in
        training: the mean over windows of the training patch size that lie mostly in the head
        (the whole image for a model trained on whole volumes)."""
        patch = (self.card.get("training") or {}).get("patch_size")
        if not patch or all(n <= patch for n in xn.shape):
            return self.model.scanner(self._tensor(xn), c)[0].float()
        head = head_weight(xn, dilate=0, sigma=0.5) > 0.5
        boxes = [b for b in windows(xn.shape, int(patch)) if head[b].mean() > 0.5]
        boxes = boxes or windows(xn.shape, int(patch))
        mus = [self.model.scanner(self._tensor(xn[b]), c)[0].float() for b in boxes]
        return torch.cat(mus).mean(0, keepdim=True)

    @torch.inference_mode()
    def harmonize(
        self,
        img: nib.Nifti1Image,
        mode: str = "scanner-free",
        target: str | None = None,
        reference: nib.Nifti1Image | None = None,
        seed: int = 0,
        intensity_scale: str = "fixed",
        space: str | None = None,
        preprocessing: dict | None = None,
    ) -> tuple[nib.Nifti1Image, dict]:
        """-> (harmonized image, provenance metadata for a JSON sidecar).

        ``space`` is the input's template space (the ``space-`` entity of a desc-preproc file)
        and ``preprocessing`` its sidecar's ``Preprocessing`` (``Backend``, ``BiasCorrection``);
        the reference is taken to be in the same space. With them, an input on another grid of
        the model's world is harmonized on the model's grid (``ResampledToModelGrid``), and
        differences from the model's space and preprocessing are listed
        (``ModelDomainWarnings``). Without them nothing is resampled.
        """
        if mode not in MODES:
            raise HarmonizeError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if intensity_scale not in ("fixed", "input"):
            raise HarmonizeError("intensity_scale must be 'fixed' or 'input'")
        if mode == "target" and target is None:
            raise HarmonizeError("mode 'target' needs a target scanner name")
        if mode == "reference" and reference is None:
            raise HarmonizeError("mode 'reference' needs a reference image")
        if mode == "scanner-free" and target is not None:
            raise HarmonizeError("mode 'scanner-free' takes no target scanner")
        data = _volume(img, "input")
        moved = self.domain.resamples(img, space)
        if moved:
            source, data = data, self.domain.to_model_grid(data, Grid.of(img))
        torch.manual_seed(seed)
        clip = self.cfg.clip_max
        lo, hi = robust_range(data)
        c = self._label(target)
        if mode == "target" and target not in (self.card.get("scanner_codes") or {}):
            raise HarmonizeError(
                f"the model stores no mean scanner code for {target!r} (an imported reference "
                "model): use mode reference with an image from that scanner"
            )
        ac = autocast_for(self.device, self.amp)
        m = self.model
        if mode == "scanner-free":
            z = torch.zeros(1, self.cfg.z_dim, device=self.device)
            z_source = "prior mean (zeros)"
        elif mode == "target":
            z = torch.tensor([self.card["scanner_codes"][target]], device=self.device)
            z_source = f"stored mean code of {target}"
        else:
            ref = _volume(reference, "reference")
            if moved and not Grid.of(reference).same_as(self.domain.grid):
                ref = self.domain.to_model_grid(ref, Grid.of(reference))
            rlo, rhi = robust_range(ref)
            with ac:
                z = self.reference_code(normalize(ref, rlo, rhi, clip), c)
            z_source = "encoded from the reference image (mean over training-size windows)"
        xn = normalize(data, lo, hi, clip)
        del data
        w = head_weight(xn, step=2 if min(xn.shape) >= 64 else 1)
        needed = torch.from_numpy(w > 0)[None, None].to(self.device)
        with ac:
            y = m.translate(
                self._tensor(xn),
                z,
                c,
                tile=self.tile,
                needed=needed,
                batch=self.window_batch,
                overlap=self.window_overlap,
            )
        y = y[0, 0].float().cpu().numpy()
        y = w * y + (1 - w) * xn  # air far from the head: the input's (never seen in training)
        del xn, w, needed
        if moved:
            y = self.domain.from_model_grid(y, Grid.of(img), normalize(source, lo, hi, clip))
        out_lo, out_hi = FIXED_OUTPUT_RANGE if intensity_scale == "fixed" else (lo, hi)
        y = denormalize(y, out_lo, out_hi)

        hdr = img.header.copy()
        hdr.set_data_dtype(np.float32)
        out = nib.Nifti1Image(y, img.affine, hdr)
        out.header.set_slope_inter(None, None)
        if isinstance(img, nib.Nifti1Image):
            out.set_sform(img.get_sform(), code=int(img.header["sform_code"]))
            out.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
        out.header["cal_min"], out.header["cal_max"] = float(y.min()), float(y.max())
        meta = {
            "HarmonizationMethod": "DISARM",
            "mode": mode,
            "target": target,
            "model": self.card.get("name", "disarm"),
            "model_config": self.cfg.name,
            "model_dir": str(self.model_dir),
            "weights_sha256": self.card["weights_sha256"],
            "scanners": self.scanners,
            "seed": int(seed),
            "scanner_code": [round(float(v), 6) for v in z[0].tolist()],
            "scanner_code_source": z_source,
            "intensity": {
                "input_range": [lo, hi],
                "input_range_definition": "0.5th percentile / 99.5th foreground percentile",
                "output_scale": intensity_scale,
                "output_range": [float(out_lo), float(out_hi)],
                "normalized_clip": [-1.0, clip],
            },
            "inference": {
                "window": self.tile,
                "window_overlap": self.window_overlap,
                "window_overlap_definition": (
                    "least fraction of a window shared with its neighbour; sine-weighted blend"
                    + (" of the windows' gains" if self.cfg.curves_per_head else "")
                ),
                "windows_per_call": self.window_batch,
                "outside_head": "input kept (soft head mask, models.harmonize.head_weight)",
            },
            "device": self.device.type,
            "versions": versions(),
        }
        if reference is not None:
            meta["reference_shape"] = list(reference.shape)
        meta.update(self.domain.provenance(space, moved))
        warnings = grid_warnings(img, self.card)
        if warnings:
            meta["warnings"] = warnings
        domain_warnings = self.domain.warnings(space, preprocessing)
        if domain_warnings:
            meta["ModelDomainWarnings"] = domain_warnings
        return out, meta
