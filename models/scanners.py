"""Synthetic scanners: what one is (:class:`ScannerProfile`), the families they are drawn
from, the named ones, and their JSON files.

A **family** is a sequence and a field strength (MPRAGE at 3 T, SPGR at 1.5 T...). Every draw
from a family (:func:`sample_profile`, domain randomisation) picks literature T1 and PD values
for the field strength, sequence timings, and the nuisances that differ between sites (bias,
resolution and slice thickness, noise, units and bit depth). Each sequence appears at one field
strength in training and at the other one held out, so held-out families are combinations never
drawn in training:

============  ===============  ================
sequence      training         held out
============  ===============  ================
MPRAGE        3 T              1.5 T
SPGR          1.5 T            3 T
IR-FSPGR      3 T              1.5 T
3D TFE (IR)   1.5 T            3 T
============  ===============  ================

Sources of the ranges (docs/model.md lists them with every parameter): T1 of CSF, GM, WM at
1.5 T and 3 T: Wansapura et al., JMRI 1999; Stanisz et al., MRM 2005; Rooney et al., MRM 2007;
Lu et al., JMRI 2005. Proton density (water content): WM 0.69, GM 0.80, CSF 1.0 (Abbas et al.,
NeuroImage 2015; Whittall et al., MRM 1997). Sequence timings: vendor protocols of ADNI-3
(MPRAGE TR 2300, TI 900; IR-FSPGR TI 400-450), UK Biobank (MPRAGE TI 880), HCP (MPRAGE TR 2400,
TI 1000), IXI (SPGR TR 9.8, flip 8) and Philips 3D TFE (shot interval 2000-3000, TI 800-1000).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .atomic import write_json_atomic

__all__ = [
    "ScannerProfile",
    "FAMILIES",
    "TRAINING_FAMILIES",
    "HELD_OUT_FAMILIES",
    "sample_profile",
    "default_profiles",
    "training_profiles",
    "unseen_profiles",
    "legacy_profiles",
    "load_profiles",
    "save_profiles",
    "resolve_profiles",
]

SEQUENCES = ("none", "mprage", "irfspgr", "tfe", "spgr")


@dataclass(frozen=True)
class ScannerProfile:
    """One synthetic scanner; the effects are applied in the order of the fields (see
    :func:`models.simulate.apply_profile`). ``sequence="none"`` skips the tissue contrast step
    (the older profiles: one global intensity curve)."""

    name: str
    manufacturer: str = "Synthetic"
    model: str = "Synthetic"
    field_strength: float = 3.0
    family: str = ""  #: family drawn from (FAMILIES key), "" = fixed profile
    # --- tissue contrast: signal equation of the sequence with T1/PD of the field strength
    sequence: str = "none"  #: none, mprage, irfspgr, tfe (inversion-prepared) or spgr
    tr_ms: float = 2300.0  #: repetition time (inversion repetition for IR sequences)
    ti_ms: float = 900.0  #: inversion time (IR sequences)
    flip_deg: float = 9.0  #: flip angle (SPGR)
    t1_csf_ms: float = 4000.0
    t1_gm_ms: float = 1550.0
    t1_wm_ms: float = 950.0
    pd_csf: float = 1.0
    pd_gm: float = 0.80
    pd_wm: float = 0.69
    contrast_exponent: float = 0.5  #: readout attenuation of the ideal contrast (< 1 flattens)
    other_gain: float = 1.0  #: gain of non-brain tissue (scalp fat, muscle) relative to WM
    # --- global intensity curve (older profiles; 1 = none)
    gamma: float = 1.0  #: intensity transfer exponent on the normalized range
    contrast: float = 1.0  #: tissue contrast stretch factor (1 = unchanged)
    contrast_level: float = 0.55  #: normalized level the stretch pivots on (GM/WM boundary)
    contrast_width: float = 0.3  #: width of the Gaussian weight of the stretch
    # --- bias, resolution, units, noise
    bias_strength: float = 0.0  #: std-like amplitude of the log bias field
    bias_scale_mm: float = 150.0  #: wavelength of the bias field's components, mm
    blur_fwhm_mm: float = 0.0  #: isotropic Gaussian blur FWHM in mm (0 = none)
    slice_fwhm_mm: float = 0.0  #: extra blur along ``slice_axis`` (thick slices), mm FWHM
    slice_axis: int = 2
    scale: float = 1.0  #: global gain
    offset: float = 0.0  #: global offset, fraction of the robust maximum
    noise_sigma: float = 0.0  #: noise standard deviation, fraction of the robust maximum
    noise: str = "rician"  #: "rician" or "gaussian"
    bit_depth: int = 0  #: stored integer bits (8, 12...; 0 = float)
    held_out: bool = False  #: True = never used in training ("unseen")

    def __post_init__(self) -> None:
        bad = f"profile {self.name!r}:"
        if not self.name:
            raise ValueError("ScannerProfile.name must not be empty")
        if self.gamma <= 0 or self.contrast <= 0 or self.scale <= 0:
            raise ValueError(f"{bad} gamma, contrast and scale must be > 0")
        if min(self.bias_strength, self.blur_fwhm_mm, self.noise_sigma, self.slice_fwhm_mm) < 0:
            raise ValueError(f"{bad} bias, blur and noise must be >= 0")
        if self.bias_scale_mm <= 0 or self.contrast_width <= 0:
            raise ValueError(f"{bad} bias_scale_mm, contrast_width must be > 0")
        if self.noise not in ("rician", "gaussian"):
            raise ValueError(f"{bad} noise must be 'rician' or 'gaussian'")
        if self.sequence not in SEQUENCES:
            raise ValueError(f"{bad} sequence must be one of {', '.join(SEQUENCES)}")
        if min(self.t1_csf_ms, self.t1_gm_ms, self.t1_wm_ms, self.tr_ms, self.ti_ms) <= 0:
            raise ValueError(f"{bad} T1, TR and TI must be > 0")
        if min(self.pd_csf, self.pd_gm, self.pd_wm, self.other_gain) <= 0:
            raise ValueError(f"{bad} proton densities and other_gain must be > 0")
        if not 0 < self.contrast_exponent <= 2 or self.slice_axis not in (0, 1, 2):
            raise ValueError(f"{bad} contrast_exponent in (0, 2], slice_axis 0, 1 or 2")
        if self.bit_depth < 0 or 0 < self.bit_depth < 4:
            raise ValueError(f"{bad} bit_depth must be 0 (float) or >= 4")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScannerProfile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown scanner-profile field(s): {', '.join(unknown)}")
        return cls(**d)


# ranges (low, high) drawn uniformly; T1 (ms) by field strength, timings by sequence
_T1 = {
    1.5: {"t1_csf_ms": (3300, 4300), "t1_gm_ms": (1050, 1250), "t1_wm_ms": (650, 890)},
    3.0: {"t1_csf_ms": (3700, 4500), "t1_gm_ms": (1300, 1850), "t1_wm_ms": (830, 1100)},
}
_SEQUENCE = {
    "mprage": {"tr_ms": (1900, 2700), "ti_ms": (800, 1100), "contrast_exponent": (0.45, 0.6)},
    # IR-FSPGR: the nominal TI (400-650 ms) plus half the readout train: effective TI
    "irfspgr": {"tr_ms": (1100, 1700), "ti_ms": (650, 900), "contrast_exponent": (0.45, 0.6)},
    "tfe": {"tr_ms": (2000, 3200), "ti_ms": (700, 1000), "contrast_exponent": (0.35, 0.5)},
    "spgr": {"tr_ms": (8, 25), "flip_deg": (8, 30), "contrast_exponent": (0.8, 1.0)},
}
_NUISANCE = {
    "pd_csf": (0.97, 1.0),
    "pd_gm": (0.76, 0.86),
    "pd_wm": (0.65, 0.72),
    "other_gain": (0.6, 1.5),
    "gamma": (0.85, 1.15),
    "bias_strength": (0.03, 0.3),
    "bias_scale_mm": (100, 220),
    "blur_fwhm_mm": (0.0, 1.5),
    "offset": (0.0, 0.02),
    "noise_sigma": (0.005, 0.04),
}
_MANUFACTURER = {"mprage": "Siemens", "irfspgr": "GE", "tfe": "Philips", "spgr": "GE"}


def _family(sequence: str, tesla: float) -> str:
    return f"{sequence}-{tesla:g}t"


FAMILIES: dict[str, tuple[str, float]] = {
    _family(s, t): (s, t) for s in ("mprage", "spgr", "irfspgr", "tfe") for t in (1.5, 3.0)
}
TRAINING_FAMILIES = ("mprage-3t", "spgr-1.5t", "irfspgr-3t", "tfe-1.5t")
HELD_OUT_FAMILIES = ("mprage-1.5t", "spgr-3t", "irfspgr-1.5t", "tfe-3t")


def t1_weighted(profile: ScannerProfile) -> bool:
    """CSF < GM < WM with GM/WM in [0.45, 0.95] and CSF/GM < 0.8: a T1-weighted contrast."""
    from .tissue import signal_ratios

    csf, gm, _ = signal_ratios(profile)
    return 0.45 <= gm <= 0.95 and csf < 0.8 * gm


def sample_profile(family: str, rng: np.random.Generator, name: str | None = None, **fixed):
    """One random scanner of ``family`` (domain randomisation); ``fixed`` overrides fields.

    Draws whose contrast would not be T1-weighted (:func:`t1_weighted`: near the null point
    of an inversion, a tissue can come out brighter than it should) are drawn again.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown scanner family {family!r}; known: {', '.join(FAMILIES)}")
    for _ in range(200):
        profile = _draw(family, rng, name, fixed)
        if profile.sequence == "none" or t1_weighted(profile):
            return profile
    raise ValueError(f"no T1-weighted draw of family {family!r} with {fixed}")


def _draw(family: str, rng: np.random.Generator, name: str | None, fixed: dict):
    sequence, tesla = FAMILIES[family]
    ranges = {**_T1[tesla], **_SEQUENCE[sequence], **_NUISANCE}
    values = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in ranges.items()}
    thick = rng.random() < 0.4  # some sites acquire thick slices
    values.update(
        slice_fwhm_mm=float(rng.uniform(1.0, 3.0)) if thick else 0.0,
        slice_axis=int(rng.integers(3)),
        scale=float(np.exp(rng.uniform(np.log(0.3), np.log(3.0)))),
        noise="rician" if rng.random() < 0.75 else "gaussian",
        bit_depth=int(rng.choice([0, 8, 12, 16])),
    )
    values.update(fixed)
    return ScannerProfile(
        name=name or f"{family}-{int(rng.integers(1 << 30)):09d}",
        manufacturer=_MANUFACTURER[sequence],
        field_strength=tesla,
        family=family,
        sequence=sequence,
        **values,
    )


def _named(name: str, family: str, model: str, seed: int, held_out: bool, **fixed):
    p = sample_profile(family, np.random.default_rng(seed), name, **fixed)
    return replace(p, model=model, held_out=held_out)


def default_profiles() -> list[ScannerProfile]:
    """Eight named scanners, one per family: four for training (the default model's scanner
    labels, centre of each training family), four held out from families never drawn in
    training. Their nuisance values are fixed draws (seeded), so the set is reproducible."""
    centre = {"bias_strength": 0.12, "blur_fwhm_mm": 0.5, "slice_fwhm_mm": 0.0,
              "noise_sigma": 0.015, "gamma": 1.0}  # fmt: skip
    return [
        _named("siemens-prisma-mprage-3t", "mprage-3t", "Prisma_fit", 11, False,
               tr_ms=2300, ti_ms=900, contrast_exponent=0.52, **centre),
        _named("ge-signa-spgr-1.5t", "spgr-1.5t", "Signa HDxt", 12, False,
               tr_ms=12, flip_deg=20, contrast_exponent=0.9, **centre),
        _named("ge-discovery-irfspgr-3t", "irfspgr-3t", "DISCOVERY MR750", 13, False,
               tr_ms=1400, ti_ms=750, contrast_exponent=0.52, **centre),
        _named("philips-achieva-tfe-1.5t", "tfe-1.5t", "Achieva", 14, False,
               tr_ms=2600, ti_ms=850, contrast_exponent=0.42, **centre),
        # --- held out ("unseen"): families never drawn in training
        _named("siemens-avanto-mprage-1.5t", "mprage-1.5t", "Avanto", 21, True),
        _named("philips-ingenia-spgr-3t", "spgr-3t", "Ingenia", 22, True),
        _named("ge-optima-irfspgr-1.5t", "irfspgr-1.5t", "Optima MR450w", 23, True),
        _named("philips-ingenia-tfe-3t", "tfe-3t", "Ingenia CX", 24, True),
    ]  # fmt: skip


def legacy_profiles() -> list[ScannerProfile]:
    """The first simulator's nine profiles (one global intensity curve plus bias, blur and
    noise; ``sequence="none"``): a second, different kind of unseen scanner for evaluation."""
    P = ScannerProfile
    return [
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
    write_json_atomic(path, [p.to_dict() for p in profiles], sort_keys=False)


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
