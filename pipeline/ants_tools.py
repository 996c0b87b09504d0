"""Preprocessing without FSL: nibabel reorientation, ANTs N4, BET-like brain extraction, affine.

Each step is a plain function, usable without Nipype; :mod:`pipeline.interfaces.ants` wraps
each in a small SimpleInterface for the ants backend's workflow.

Why brain extraction: an affine from a whole head (neck, face) straight to a brain-only
template lands the brain off target (FINDINGS.md); registering the extracted brain to the
template brain, then moving the whole bias-corrected head with that transform, works.

Transforms are ITK affines written as text (``#Insight Transform File V1.0``,
``MatrixOffsetTransformBase_double_3_3``), in ITK's LPS world coordinates. As ITK/ANTs
transforms do, the file maps points of the template (fixed) space to the subject (moving)
space, which is what resampling the subject onto the template grid needs. Reorientation keeps
world coordinates, so the same file is valid for the raw and the reoriented image.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import nibabel as nb
import numpy as np

#: Seed for the random metric sampling of the affine registration (bit-identical reruns).
REGISTRATION_SEED = 20240601


def check_volume(img: nb.spatialimages.SpatialImage, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``img`` is one 3D volume of finite numbers."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"{name} must be a 3D volume, got shape {img.shape}")
    data = np.asanyarray(img.dataobj)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"{name} holds NaN or infinite values")


def reorient_to_std(in_file: Path | str, out_file: Path | str) -> Path:
    """Permute/flip the voxel axes to FSL's standard LAS storage (what ``fslreorient2std`` does).

    The stored numbers (dtype, scaling) are kept exactly, only their order and the affine
    change, so the image stays at the same place in world space.
    """
    img = nb.load(str(in_file))
    check_volume(img, "input T1w")
    if len(img.shape) == 4:
        img = img.slicer[..., 0]
    ornt = nb.orientations.ornt_transform(
        nb.orientations.io_orientation(img.affine), nb.orientations.axcodes2ornt("LAS")
    )
    raw = (
        np.asanyarray(img.dataobj.get_unscaled())
        if hasattr(img.dataobj, "get_unscaled")
        else (np.asanyarray(img.dataobj))
    )
    data = nb.orientations.apply_orientation(raw, ornt)
    affine = img.affine @ nb.orientations.inv_ornt_aff(ornt, img.shape[:3])
    header = img.header.copy()
    out = nb.Nifti1Image(np.ascontiguousarray(data), affine, header)
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    out.header.set_slope_inter(slope, inter)
    qcode = int(img.header["qform_code"]) or 1
    scode = int(img.header["sform_code"]) or 1
    out.set_qform(affine, code=qcode)
    out.set_sform(affine, code=scode)
    out.header.set_dim_info(None, None, None)  # slice axes are no longer where they were
    out.to_filename(str(out_file))
    return Path(out_file)


def n4_bias_correct(
    in_file: Path | str, out_file: Path | str, bias_file: Path | str, shrink_factor: int = 4
) -> tuple[Path, Path]:
    """N4 on the whole head; write the corrected head (float32) and the bias field.

    The field is fitted inside a head mask (``ants.get_mask``: above-mean voxels, cleaned
    up), which ignores background noise and halves the time on a 1 mm head (17 s instead of
    45 s). It is then scaled to a median of 1 inside that mask, so the corrected head keeps
    the raw intensity range; corrected = input / bias.
    """
    import ants

    img = ants.image_read(str(in_file), pixeltype="float")
    head = ants.get_mask(img)
    bias = ants.n4_bias_field_correction(
        img, mask=head, shrink_factor=shrink_factor, return_bias_field=True
    )
    data = img.numpy().astype(np.float32)
    field = bias.numpy().astype(np.float32)
    if not (np.isfinite(field).all() and field.min() > 0):
        raise RuntimeError("N4 returned a bias field that is not positive everywhere")
    field /= np.float32(np.median(field[head.numpy() > 0]))
    ref = nb.load(str(in_file))
    _save_like(data / field, ref, out_file)
    _save_like(field, ref, bias_file)
    return Path(out_file), Path(bias_file)


def _save_like(data: np.ndarray, ref: nb.Nifti1Image, out_file: Path | str) -> None:
    """Save ``data`` as float32 on the grid of ``ref`` (same affine, qform and sform)."""
    hdr = ref.header.copy()
    hdr.set_data_dtype(np.float32)
    out = nb.Nifti1Image(data.astype(np.float32), ref.affine, hdr)
    out.header.set_slope_inter(1.0, 0.0)
    out.to_filename(str(out_file))


#: Keep this much below the top of the head for brain extraction (FSL robustfov's default).
FOV_MM = 170.0


def _crop_neck(img: nb.Nifti1Image) -> tuple[nb.Nifti1Image, tuple[slice, slice, slice]]:
    """Crop the voxels more than ``FOV_MM`` below the top of the head (like ``robustfov``).

    A long neck pulls BET's initial sphere (centred on the head's centre of mass) down, and
    the surface then leaks into the neck and face.
    """
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    lo, hi = np.percentile(data, [2, 98])
    fg = data > lo + 0.1 * (hi - lo)
    ornt = nb.orientations.io_orientation(img.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])  # voxel axis running inferior-superior
    up = ornt[axis, 1] > 0
    other = tuple(i for i in range(3) if i != axis)
    per_slice = fg.sum(axis=other)
    rows = np.flatnonzero(per_slice > 0.005 * fg.size / fg.shape[axis])
    keep = [slice(None)] * 3
    if rows.size:
        step = float(img.header.get_zooms()[axis])
        n = int(np.ceil(FOV_MM / step))
        if up:
            keep[axis] = slice(max(0, rows[-1] + 1 - n), rows[-1] + 1)
        else:
            keep[axis] = slice(rows[0], min(fg.shape[axis], rows[0] + n))
    keep = tuple(keep)
    return img.slicer[keep], keep


#: Brain extraction runs on isotropic voxels of this size or coarser (see extract_brain).
EXTRACTION_SPACING_MM = 1.0


def extract_brain(
    in_file: Path | str, out_file: Path | str, mask_file: Path | str, iterations: int = 1000
) -> tuple[Path, Path]:
    """Brain extraction with ``brainextractor`` (FSL BET's surface model in Python).

    The neck is cropped first (see ``_crop_neck``). BET's model is isotropic: an anisotropic
    head is resampled to isotropic voxels for the surface fit and the mask brought back. The
    fit runs at ``EXTRACTION_SPACING_MM`` or coarser: a 0.45x0.45x6 mm clinical head at its
    finest spacing would be ~13x the voxels of the 1 mm grid through a pure-Python fit, for a
    mask that only drives the affine registration (itself on a 2 mm grid).
    """
    from brainextractor import BrainExtractor
    from nibabel.processing import resample_from_to, resample_to_output

    img = nb.load(str(in_file))
    cropped, keep = _crop_neck(img)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    work = cropped
    spacing = max(float(zooms.min()), EXTRACTION_SPACING_MM)
    if not np.allclose(zooms, spacing, rtol=1e-3):
        work = resample_to_output(cropped, voxel_sizes=[spacing] * 3, order=1)
    # brainextractor prints every iteration; keep Nipype's logs readable
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        bet = BrainExtractor(nb.Nifti1Image(work.get_fdata(dtype=np.float32), work.affine))
        bet.run(iterations=iterations)
        sub = bet.compute_mask() > 0
    if work is not cropped:
        back = resample_from_to(nb.Nifti1Image(sub.astype(np.float32), work.affine), cropped)
        sub = back.get_fdata() > 0.5
    mask = np.zeros(img.shape[:3], dtype=bool)
    mask[keep] = sub
    if mask.sum() == 0:
        raise RuntimeError(f"brain extraction found no brain in {in_file}")
    data = img.get_fdata(dtype=np.float32)
    _save_like(data * mask, img, out_file)
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    out = nb.Nifti1Image(mask.astype(np.uint8), img.affine, hdr)
    out.header.set_slope_inter(1.0, 0.0)
    out.to_filename(str(mask_file))
    return Path(out_file), Path(mask_file)


def affine_to_template(
    brain_file: Path | str,
    head_file: Path | str,
    template_brain: Path | str,
    template_grid: Path | str,
    out_file: Path | str,
    xfm_file: Path | str,
    seed: int = REGISTRATION_SEED,
) -> tuple[Path, Path]:
    """Affine (12 dof) from the extracted brain to the template brain; resample the head.

    The registration runs on 2 mm copies of both brains (``REGISTRATION_SPACING_MM``): on the
    1 mm template it took 72 s per head instead of 10-13 s, for the same NCC to 3 decimals
    (Philips 0.826, two IXI heads 0.848, 0.843); the transform is applied at full resolution.
    Global correlation (GC) metric, ANTs' default 4-level pyramid (shrink 6/4/2/1),
    centre-of-mass initialisation, seeded metric sampling. GC rather than Mattes MI because
    Mattes gives a different transform on every run with more than one ITK thread, even with
    a fixed seed (measured); GC is what ANTs' own "Repro" presets use, and is bit-identical
    across runs. Both are T1w-to-T1w here; GC scored 0.01 lower NCC than Mattes.
    """
    import ants

    fixed = _coarsen(ants.image_read(str(template_brain), pixeltype="float"))
    moving = _coarsen(ants.image_read(str(brain_file), pixeltype="float"))
    with tempfile.TemporaryDirectory(prefix="disarm-reg-") as tmp, _ants_seed(seed):
        reg = ants.registration(
            fixed=fixed,
            moving=moving,
            type_of_transform="Affine",
            aff_metric="GC",
            outprefix=str(Path(tmp) / "reg_"),
        )
        tx = ants.read_transform(reg["fwdtransforms"][0])
        ants.write_transform(tx, str(xfm_file))
    grid = ants.image_read(str(template_grid), pixeltype="float")
    head = ants.image_read(str(head_file), pixeltype="float")
    out = ants.apply_transforms(
        fixed=grid, moving=head, transformlist=[str(xfm_file)], interpolator="linear"
    )
    _save_like(out.numpy(), nb.load(str(template_grid)), out_file)
    return Path(out_file), Path(xfm_file)


#: Images finer than this are registered on a grid of this spacing (see affine_to_template).
REGISTRATION_SPACING_MM = 2.0


def _coarsen(img):
    """A linear-interpolated copy at REGISTRATION_SPACING_MM when ``img`` is finer."""
    import ants

    if min(img.spacing) >= REGISTRATION_SPACING_MM - 1e-3:
        return img
    spacing = tuple(max(s, REGISTRATION_SPACING_MM) for s in img.spacing)
    return ants.resample_image(img, spacing, use_voxels=False, interp_type=0)


def apply_inverse_affine(
    in_file: Path | str,
    xfm_file: Path | str,
    reference: Path | str,
    out_file: Path | str,
    interpolation: str = "linear",
) -> Path:
    """Bring an image from template space back onto a native (T1w) grid (ANTs ``.txt`` xfm)."""
    import ants

    fixed = ants.image_read(str(reference), pixeltype="float")
    moving = ants.image_read(str(in_file), pixeltype="float")
    with tempfile.TemporaryDirectory(prefix="disarm-inv-") as tmp:
        # antspyx only inverts transforms named *.mat: the same affine, binary ITK format
        mat = str(Path(tmp) / "xfm.mat")
        ants.write_transform(ants.read_transform(str(xfm_file)), mat)
        out = ants.apply_transforms(
            fixed=fixed,
            moving=moving,
            transformlist=[mat],
            whichtoinvert=[True],
            interpolator=interpolation,
        )
    _save_like(out.numpy(), nb.load(str(reference)), out_file)
    return Path(out_file)


@contextlib.contextmanager
def _ants_seed(seed: int):
    """Pass ``--random-seed`` to antsRegistration (antspyx reads a module global)."""
    import ants

    old = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        yield
    finally:
        ants.config._random_seed = old


@contextlib.contextmanager
def itk_threads(n: int):
    """Ask ITK for ``n`` threads (read when ITK first builds its thread pool in a process)."""
    key = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
    old = os.environ.get(key)
    os.environ[key] = str(max(1, int(n)))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
