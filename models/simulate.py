"""Scanner-effect simulator: turn one T1w head into what another scanner would have recorded.

A :class:`ScannerProfile` describes one synthetic scanner by a small chain of effects, applied in
this order to an image whose intensities are first divided by its robust maximum (the 99.5th
percentile of the foreground, so the working range is about [0, 1]):

1. **Intensity transfer curve**: ``y = x ** gamma`` (gamma < 1 brightens dark tissue).
2. **Tissue contrast change**: a stretch by ``contrast`` around ``contrast_level`` that fades
   out away from that level (Gaussian weight of width ``contrast_width``), so the GM/WM contrast
   changes while the background and the brightest fat stay where they were.
3. **Bias field**: a smooth multiplicative field ``exp(bias_strength * f(r))``; ``f`` is a sum
   of six plane cosines in millimetre coordinates with wavelength about ``bias_scale_mm``.
4. **Blur**: Gaussian of ``blur_fwhm_mm`` full width at half maximum (in millimetres).
5. **Global scale/offset**: ``y * scale + offset`` (offset as a fraction of the robust maximum).
6. **Noise**: Rician (magnitude of complex Gaussian, the physics of magnitude images) or
   Gaussian, ``noise_sigma`` as a fraction of the robust maximum.

The result is multiplied back by the input's robust maximum, so a simulated image keeps the
input's units, is float32, and is never negative. Everything is deterministic given ``seed``:
the bias field and the noise come from ``numpy.random.default_rng([crc32(name), seed])``, so two
scanners never share their noise and the same (image, scanner, seed) always gives the same output.

Default profiles: the first five of :func:`default_profiles` (``held_out=False``) are the
training scanners of the default model; the last four (``held_out=True``) are never seen in
training and serve to evaluate harmonization of unseen scanners.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

__all__ = [
    "ScannerProfile",
    "default_profiles",
    "training_profiles",
    "unseen_profiles",
    "load_profiles",
    "save_profiles",
    "resolve_profiles",
    "robust_max",
    "simulate_scanner",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


@dataclass(frozen=True)
class ScannerProfile:
    """One synthetic scanner (see the module docstring for the order of effects)."""

    name: str
    manufacturer: str = "Synthetic"
    model: str = "Synthetic"
    field_strength: float = 3.0
    gamma: float = 1.0  #: intensity transfer exponent on the normalized range
    contrast: float = 1.0  #: tissue contrast stretch factor (1 = unchanged)
    contrast_level: float = 0.55  #: normalized level the stretch pivots on (GM/WM boundary)
    contrast_width: float = 0.3  #: width of the Gaussian weight of the stretch
    bias_strength: float = 0.0  #: std-like amplitude of the log bias field
    bias_scale_mm: float = 150.0  #: wavelength of the bias field's components, mm
    blur_fwhm_mm: float = 0.0  #: Gaussian blur FWHM in mm (0 = none)
    scale: float = 1.0  #: global gain
    offset: float = 0.0  #: global offset, fraction of the robust maximum
    noise_sigma: float = 0.0  #: noise standard deviation, fraction of the robust maximum
    noise: str = "rician"  #: "rician" or "gaussian"
    held_out: bool = False  #: True = not used to train the default model ("unseen")

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ScannerProfile.name must not be empty")
        if self.gamma <= 0 or self.contrast <= 0 or self.scale <= 0:
            raise ValueError(f"profile {self.name!r}: gamma, contrast and scale must be > 0")
        if min(self.bias_strength, self.blur_fwhm_mm, self.noise_sigma) < 0:
            raise ValueError(f"profile {self.name!r}: bias, blur and noise must be >= 0")
        if self.bias_scale_mm <= 0 or self.contrast_width <= 0:
            raise ValueError(f"profile {self.name!r}: bias_scale_mm, contrast_width must be > 0")
        if self.noise not in ("rician", "gaussian"):
            raise ValueError(f"profile {self.name!r}: noise must be 'rician' or 'gaussian'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScannerProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown scanner-profile field(s): {', '.join(unknown)}")
        return cls(**d)


def default_profiles() -> list[ScannerProfile]:
    """Nine distinct synthetic scanners; five for training (first), four held out (last)."""
    P = ScannerProfile
    return [
        # --- training scanners of the default model ---
        P("siemens-prisma-3t", "Siemens", "Prisma_fit", 3.0, gamma=1.00, contrast=1.15,
          bias_strength=0.10, blur_fwhm_mm=0.0, scale=1.00, noise_sigma=0.010),
        P("ge-discovery-3t", "GE", "DISCOVERY MR750", 3.0, gamma=0.80, contrast=0.85,
          bias_strength=0.15, blur_fwhm_mm=1.2, scale=1.30, offset=0.01, noise_sigma=0.015),
        P("philips-achieva-1.5t", "Philips", "Achieva", 1.5, gamma=1.25, contrast=0.75,
          bias_strength=0.20, bias_scale_mm=120.0, blur_fwhm_mm=1.8, scale=0.80,
          noise_sigma=0.030),
        P("siemens-avanto-1.5t", "Siemens", "Avanto", 1.5, gamma=0.90, contrast=1.30,
          contrast_level=0.5, bias_strength=0.12, blur_fwhm_mm=1.0, scale=0.65,
          noise_sigma=0.025, noise="gaussian"),
        P("ge-signa-3t", "GE", "SIGNA Premier", 3.0, gamma=1.40, contrast=1.05,
          bias_strength=0.25, bias_scale_mm=200.0, blur_fwhm_mm=0.6, scale=1.55,
          offset=0.02, noise_sigma=0.012),
        # --- held out ("unseen") scanners ---
        P("philips-ingenia-3t", "Philips", "Ingenia", 3.0, gamma=0.70, contrast=1.20,
          bias_strength=0.18, blur_fwhm_mm=0.8, scale=1.10, noise_sigma=0.015, held_out=True),
        P("siemens-trio-3t", "Siemens", "TrioTim", 3.0, gamma=1.15, contrast=0.90,
          contrast_level=0.6, bias_strength=0.22, bias_scale_mm=110.0, blur_fwhm_mm=1.4,
          scale=0.90, noise_sigma=0.020, held_out=True),
        P("ge-optima-1.5t", "GE", "Optima MR450w", 1.5, gamma=0.95, contrast=0.70,
          bias_strength=0.15, blur_fwhm_mm=2.0, scale=1.20, offset=0.015, noise_sigma=0.035,
          held_out=True),
        P("canon-vantage-1.5t", "Canon", "Vantage Orian", 1.5, gamma=1.35, contrast=1.40,
          contrast_level=0.5, bias_strength=0.10, blur_fwhm_mm=1.1, scale=0.75,
          noise_sigma=0.020, noise="gaussian", held_out=True),
    ]  # fmt: skip


def training_profiles(profiles: list[ScannerProfile] | None = None) -> list[ScannerProfile]:
    """Profiles with ``held_out=False`` (default: those of :func:`default_profiles`)."""
    return [p for p in (profiles or default_profiles()) if not p.held_out]


def unseen_profiles(profiles: list[ScannerProfile] | None = None) -> list[ScannerProfile]:
    """Profiles with ``held_out=True`` (default: those of :func:`default_profiles`)."""
    return [p for p in (profiles or default_profiles()) if p.held_out]


def load_profiles(path: str | Path) -> list[ScannerProfile]:
    """Read a JSON list of profile dicts; raises ``ValueError`` with a clear message if invalid."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read scanner profiles from {path}: {exc}") from exc
    if not isinstance(raw, list) or not raw or not all(isinstance(d, dict) for d in raw):
        raise ValueError(f"{path}: expected a non-empty JSON list of profile objects")
    try:
        profiles = [ScannerProfile.from_dict(d) for d in raw]
    except TypeError as exc:  # missing "name"
        raise ValueError(f"{path}: invalid profile: {exc}") from exc
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: profile names must be unique")
    return profiles


def save_profiles(profiles: list[ScannerProfile], path: str | Path) -> None:
    """Write profiles as a JSON list (atomically: temporary file, then rename)."""
    path = Path(path)
    text = json.dumps([p.to_dict() for p in profiles], indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def resolve_profiles(spec: str | Path) -> list[ScannerProfile]:
    """``"default"`` -> the training profiles of :func:`default_profiles`; else a JSON file.

    A file's profiles are all used, except those marked ``held_out``.
    """
    if str(spec) == "default":
        return training_profiles()
    profiles = training_profiles(load_profiles(spec))
    if not profiles:
        raise ValueError(f"{spec}: every profile is held out; nothing to train on")
    return profiles


def robust_max(data: np.ndarray, mask: np.ndarray | None = None) -> float:
    """99.5th percentile of the foreground (``mask``, or voxels above 5% of the maximum)."""
    data = np.asarray(data, dtype=np.float32)
    if mask is not None:
        fg = data[np.asarray(mask, dtype=bool)]
    else:
        top = float(data.max()) if data.size else 0.0
        fg = data[data > 0.05 * top] if top > 0 else data.ravel()
    if fg.size == 0:
        return 1.0
    value = float(np.percentile(fg, 99.5))
    return value if value > 0 else 1.0


def bias_field(
    shape: tuple[int, int, int],
    profile: ScannerProfile,
    rng: np.random.Generator,
    voxel_size_mm=(1.0, 1.0, 1.0),
    origin_vox=(0, 0, 0),
    full_shape: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Multiplicative bias field on a block of ``shape`` starting at ``origin_vox`` of a volume.

    The field is defined in millimetres relative to the centre of ``full_shape`` (default:
    ``shape``), so a patch gets exactly the values it would have inside the whole volume.
    """
    full_shape = tuple(full_shape or shape)
    n = 6
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    freqs = directions / profile.bias_scale_mm * rng.uniform(0.7, 1.3, size=(n, 1))
    phases = rng.uniform(0, 2 * np.pi, size=n)
    amps = rng.normal(size=n)
    amps *= np.sqrt(2.0 / np.sum(amps**2))  # log-field std ~ bias_strength
    if profile.bias_strength == 0:
        return np.ones(shape, dtype=np.float32)
    axes = [
        ((np.arange(shape[a]) + origin_vox[a] - (full_shape[a] - 1) / 2.0) * voxel_size_mm[a])
        for a in range(3)
    ]
    log_field = np.zeros(shape, dtype=np.float32)
    for k in range(n):
        # cos(a + b + c) with each term broadcast along one axis: no full coordinate grids
        arg = (
            (freqs[k, 0] * 2 * np.pi * axes[0])[:, None, None]
            + (freqs[k, 1] * 2 * np.pi * axes[1])[None, :, None]
            + (freqs[k, 2] * 2 * np.pi * axes[2])[None, None, :]
            + phases[k]
        )
        log_field += (amps[k] * np.cos(arg)).astype(np.float32)
    return np.exp(profile.bias_strength * log_field, dtype=np.float32)


def apply_profile(
    norm: np.ndarray,
    profile: ScannerProfile,
    *,
    voxel_size_mm=(1.0, 1.0, 1.0),
    seed: int = 0,
    origin_vox=(0, 0, 0),
    full_shape: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """Apply ``profile`` to an image already divided by its robust maximum (float32 out, >= 0).

    The building block of :func:`simulate_scanner`; data loaders call it on patches, giving
    ``origin_vox``/``full_shape`` so the bias field matches the whole-volume one. Blur on a
    patch differs from the whole volume only within ~2 sigma of the patch border.
    """
    rng = np.random.default_rng([zlib.crc32(profile.name.encode()), int(seed) & 0xFFFFFFFF])
    x = np.clip(np.asarray(norm, dtype=np.float32), 0.0, None)
    y = np.power(x, profile.gamma, dtype=np.float32) if profile.gamma != 1.0 else x.copy()
    if profile.contrast != 1.0:
        w = np.exp(-0.5 * ((y - profile.contrast_level) / profile.contrast_width) ** 2)
        y = y + (profile.contrast - 1.0) * (y - profile.contrast_level) * w
        np.clip(y, 0.0, None, out=y)
    y *= bias_field(y.shape, profile, rng, voxel_size_mm, origin_vox, full_shape)
    if profile.blur_fwhm_mm > 0:
        sigma = [profile.blur_fwhm_mm * _FWHM_TO_SIGMA / float(v) for v in voxel_size_mm]
        y = ndimage.gaussian_filter(y, sigma=sigma, mode="nearest")
    y = y * profile.scale + profile.offset
    if profile.noise_sigma > 0:
        n1 = rng.standard_normal(y.shape, dtype=np.float32) * profile.noise_sigma
        if profile.noise == "rician":
            n2 = rng.standard_normal(y.shape, dtype=np.float32) * profile.noise_sigma
            y = np.sqrt((y + n1) ** 2 + n2**2)
        else:
            y = y + n1
    return np.clip(y, 0.0, None).astype(np.float32, copy=False)


def simulate_scanner(
    data: np.ndarray,
    profile: ScannerProfile,
    *,
    voxel_size_mm=(1.0, 1.0, 1.0),
    seed: int = 0,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``data`` (a 3D head, any units) as ``profile``'s scanner would record it.

    ``mask`` (optional) selects the foreground used for the robust maximum; by default voxels
    above 5% of the maximum. Output: float32, non-negative, in the input's units (scaled by
    ``profile.scale``), same shape. Deterministic given ``seed``.
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"simulate_scanner expects a 3D volume, got shape {data.shape}")
    if len(voxel_size_mm) != 3 or min(voxel_size_mm) <= 0:
        raise ValueError(f"voxel_size_mm must be three positive numbers, got {voxel_size_mm}")
    ref = robust_max(data, mask)
    out = apply_profile(data / ref, profile, voxel_size_mm=voxel_size_mm, seed=seed)
    out *= ref
    return out
