"""How much a DISARM model removes simulated scanner differences, and how much detail it keeps.

    python benchmarks/eval_model.py --model DIR --heads H1.nii.gz H2.nii.gz ... \\
        [--detail-1mm T1W_MNI_1MM.nii.gz] [--profiles unseen|training|FILE.json] [--threads 2]
        [--figure FIG.png]

``--heads``: preprocessed heads (desc-preproc, on the model's template grid) that the model
never saw. Each head is "acquired" on every profile (default: the held-out profiles, never
used in training), harmonized scanner-free, and compared (models.evaluate.travelling_heads):
SSIM and mean absolute difference between the versions of one head (before / after), SSIM to
the clean head, and the checkerboard ratio of each harmonized version to its input
(``models.evaluate.checkerboard_ratio``: about 1 when clean, above 1.05 is a stride-2
up-sampling artefact). ``--detail-1mm``: a 1 mm head on the template grid; prints SSIM
between it and its scanner-free harmonization, and the same after blurring the input to 2 mm
(what a model that blurred to 2 mm would score at best) for comparison, with the fine-band
energy ratio and correlation of ``models.evaluate.fine_detail`` (blur moves them; a change of
contrast does not) and the checkerboard ratio inside the head.
"""

from __future__ import annotations

import argparse
import sys
import time

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from models import evaluate
from models.harmonize import Harmonizer
from models.simulate import (
    resolve_profiles,
    robust_max,
    simulate_scanner,
    training_profiles,
    unseen_profiles,
)


def _head_box(img: nib.Nifti1Image) -> tuple[slice, ...]:
    """The head's bounding box (+4 voxels): SSIM of empty air says nothing."""
    data = np.asarray(img.dataobj, np.float32)
    box = ndimage.find_objects((data > 0.05 * np.percentile(data, 99)).astype(int))[0]
    return tuple(slice(max(s.start - 4, 0), s.stop + 4) for s in box)


def _crop_to_head(img: nib.Nifti1Image) -> nib.Nifti1Image:
    box = _head_box(img)
    return nib.Nifti1Image(np.asarray(img.dataobj, np.float32)[box], img.affine, img.header)


def _brain_mask(path: str | None, img: nib.Nifti1Image) -> np.ndarray | None:
    """The brain mask (a file on the heads' grid) cropped like the head, or ``None``."""
    if not path:
        return None
    mask = np.asarray(nib.load(path).dataobj) > 0
    if mask.shape != img.shape[:3]:
        raise SystemExit(f"eval_model.py: error: {path} is not on the grid of the heads")
    return mask[_head_box(img)]


def _two_mm(data: np.ndarray) -> np.ndarray:
    """2x2x2 average pooling and trilinear upsampling back: what a model that drew the whole
    image at 2 mm would give at best."""
    x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    pad = [(-s) % 2 for s in data.shape]
    x = torch.nn.functional.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    low = torch.nn.functional.avg_pool3d(x, 2)
    up = torch.nn.functional.interpolate(low, scale_factor=2, mode="trilinear")
    return up[0, 0, : data.shape[0], : data.shape[1], : data.shape[2]].numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: shipped)")
    parser.add_argument("--heads", nargs="+", required=True)
    parser.add_argument("--detail-1mm", default=None)
    parser.add_argument("--profiles", default="unseen")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--figure", default=None, help="PNG: the first head on 3 profiles")
    parser.add_argument(
        "--brain-mask", default=None, help="brain mask on the heads' grid (the template's)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profiles = {"unseen": unseen_profiles, "training": training_profiles}.get(
        args.profiles, lambda: resolve_profiles(args.profiles)
    )()
    harmonizer = Harmonizer.from_dir(args.model, device="cpu")
    raw = [nib.load(p) for p in args.heads]
    heads = [_crop_to_head(im) for im in raw]
    masks = [_brain_mask(args.brain_mask, im) for im in raw]
    start = time.time()
    rows = evaluate.travelling_heads(
        heads, lambda im: harmonizer.harmonize(im)[0], profiles, brain_masks=masks
    )
    print(
        f"## Travelling heads: {len(heads)} unseen heads x {len(profiles)} profiles "
        f"({', '.join(p.name for p in profiles)}), scanner-free, {time.time() - start:.0f} s\n"
    )
    print(evaluate.summarize(rows))
    if args.detail_1mm:
        img = _crop_to_head(nib.load(args.detail_1mm))
        out = harmonizer.harmonize(img)[0]
        data = np.asarray(img.dataobj, np.float32)
        head = data > 0.1 * robust_max(data)  # the travelling-head mask
        blurred = ndimage.gaussian_filter(data, 2.0 / 2.355)  # FWHM 2 mm at 1 mm voxels
        rows = (
            ("scanner-free harmonized", out),
            ("input blurred to 2 mm (FWHM)", nib.Nifti1Image(blurred, img.affine, img.header)),
            ("input on a 2 mm grid and back", nib.Nifti1Image(_two_mm(data), img.affine)),
        )
        print("\n## Detail on a 1 mm head\n")
        print(
            "| input vs | SSIM | SSIM structure | fine-band energy ratio | fine-band correlation "
            "| checkerboard |"
        )
        print("|---|---|---|---|---|---|")
        for name, other in rows:
            fine = evaluate.fine_detail(img, other)
            out_data = np.asarray(other.dataobj, np.float32)
            checker = evaluate.checkerboard_ratio(data, out_data, head)
            print(
                f"| {name} | {evaluate.ssim_to_input(img, other):.4f} | "
                f"{evaluate.ssim_structure(data, out_data):.4f} | {fine['energy_ratio']:.3f} | "
                f"{fine['correlation']:.3f} | {checker:.3f} |"
            )
    if args.figure:
        save_figure(args.figure, nib.load(args.heads[0]), harmonizer, profiles[:3])
    return 0


def save_figure(path: str, img: nib.Nifti1Image, harmonizer: Harmonizer, profiles) -> None:
    """Axial slices: the clean head and its simulated versions (top), harmonized (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = np.asarray(img.dataobj, np.float32)
    vox = tuple(float(v) for v in img.header.get_zooms()[:3])
    inputs = [("clean", clean)] + [
        (p.name, simulate_scanner(clean, p, voxel_size_mm=vox, seed=i))
        for i, p in enumerate(profiles)
    ]
    fig, axes = plt.subplots(2, len(inputs), figsize=(3.5 * len(inputs), 7))
    for col, (name, data) in enumerate(inputs):
        out = harmonizer.harmonize(nib.Nifti1Image(data, img.affine, img.header))[0]
        for row, (title, vol) in enumerate(((name, data), ("harmonized", out.get_fdata()))):
            ax = axes[row, col]
            ax.imshow(np.rot90(vol[:, :, vol.shape[2] // 2 + 10]), cmap="gray", vmin=0,
                      vmax=np.percentile(vol, 99.5))  # fmt: skip
            ax.set_title(title)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
