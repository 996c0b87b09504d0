"""A small multi-scanner BIDS dataset made from the MNI template that nilearn installs.

``disarm-demo DIR`` writes a few synthetic heads (the ICBM 2009a template given a scalp, a skull
and a neck-free head outline, then a random affine pose and size per subject) as if acquired on
two or more simulated scanners (``models.simulate``), so the pipeline can be tried end to end
without downloading anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from models.atomic import write_json_atomic
from pipeline.exitcodes import ExitCode

#: Field of view of the demo images (mm): larger than a head, as a scanner's would be.
FOV_MM = (200.0, 240.0, 224.0)


def _synthetic_head(voxel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The template brain with CSF, skull and scalp shells around it, at 1 mm; and its affine."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template
    from scipy import ndimage

    template = load_mni152_template(resolution=1)
    brain = template.get_fdata(dtype=np.float32)
    mask = load_mni152_brain_mask(resolution=1).get_fdata() > 0
    # Distance (mm) from the brain, on a padded grid so the shells fit inside the volume.
    pad = 20
    brain = np.pad(brain, pad)
    mask = np.pad(mask, pad)
    smooth_mask = ndimage.gaussian_filter(mask.astype(np.float32), 4) > 0.3
    dist = ndimage.distance_transform_edt(~smooth_mask)
    head = brain.copy()
    csf = (dist > 0) & (dist <= 3)
    skull = (dist > 3) & (dist <= 8)
    scalp = (dist > 8) & (dist <= 14)
    head[csf & ~mask] = 0.12
    head[skull] = 0.05
    head[scalp] = 0.85
    affine = template.affine.copy()
    affine[:3, 3] -= pad
    return ndimage.gaussian_filter(head, 0.6).astype(np.float32), affine


def _pose(rng: np.random.Generator) -> np.ndarray:
    """A random world-space affine: rotation up to 8 degrees, size +-6%, shift up to 8 mm."""
    angles = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rot_z @ rot_y @ rot_x @ np.diag(rng.uniform(0.94, 1.06, 3))
    pose[:3, 3] = rng.uniform(-8, 8, 3)
    return pose


def make_demo_dataset(
    out_dir: Path, n_subjects: int = 6, n_scanners: int = 2, voxel_mm: float = 2.0, seed: int = 0
) -> list[Path]:
    """Write the demo BIDS dataset to ``out_dir``; return the T1w files written."""
    import nibabel as nb
    from scipy import ndimage

    from models.simulate import legacy_profiles, simulate_scanner

    # the synthetic head has no brain mask for the tissue simulator: the first simulator's
    # global-curve scanners (Siemens Prisma_fit, GE DISCOVERY MR750) make the demo's two sites
    profiles = legacy_profiles()[:n_scanners]
    head, head_affine = _synthetic_head()
    rng = np.random.default_rng(seed)
    shape = tuple(int(round(f / voxel_mm)) for f in FOV_MM)
    out_affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    out_affine[:3, 3] = -np.array(FOV_MM) / 2 + np.array([0, -16, 22])  # head centred, as scanned
    out_dir.mkdir(parents=True, exist_ok=True)
    written, rows = [], []
    for index in range(n_subjects):
        label = f"{index + 1:02d}"
        profile = profiles[index % len(profiles)]
        # voxel of the output -> world -> (inverse pose) -> voxel of the template head
        vox2vox = np.linalg.inv(head_affine) @ np.linalg.inv(_pose(rng)) @ out_affine
        data = ndimage.affine_transform(head, vox2vox, output_shape=shape, order=1)
        data = simulate_scanner(data, profile, voxel_size_mm=(voxel_mm,) * 3, seed=seed + index)
        data = np.clip(data / np.percentile(data, 99.9) * 800, 0, 32767).astype(np.int16)
        anat = out_dir / f"sub-{label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        image = nb.Nifti1Image(data, out_affine)
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(out_affine, code=1)
        image.set_sform(out_affine, code=1)
        path = anat / f"sub-{label}_T1w.nii.gz"
        nb.save(image, str(path))
        write_json_atomic(
            path.with_name(f"sub-{label}_T1w.json"),
            {
                "Manufacturer": profile.manufacturer,
                "ManufacturersModelName": profile.model,
                "MagneticFieldStrength": profile.field_strength,
                "Modality": "MR",
                "SimulatedScannerProfile": profile.name,
            },
        )
        rows.append(f"sub-{label}\t{rng.uniform(20, 80):.1f}\t{'MF'[index % 2]}")
        written.append(path)
    (out_dir / "participants.tsv").write_text(
        "participant_id\tage\tsex\n" + "\n".join(rows) + "\n"
    )
    write_json_atomic(
        out_dir / "dataset_description.json",
        {
            "Name": "disarm-pipeline demo: synthetic heads from the ICBM 2009a template",
            "BIDSVersion": "1.10.0",
            "DatasetType": "raw",
            "License": "Derived from the ICBM 2009a nonlinear symmetric template, "
            "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
            "Montreal Neurological Institute; free use with this notice.",
            "GeneratedBy": [{"Name": "disarm-demo", "Description": "pipeline.demo"}],
        },
    )
    (out_dir / "README").write_text(
        "Synthetic T1w heads for trying disarm-pipeline: the ICBM 2009a template with scalp and "
        "skull shells, a random pose per subject, and simulated scanner effects "
        "(see SimulatedScannerProfile in each sidecar).\n"
    )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="disarm-demo", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="where to write the demo BIDS dataset")
    parser.add_argument("--n-subjects", type=int, default=6)
    parser.add_argument("--n-scanners", type=int, default=2, choices=range(2, 6))
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm (isotropic)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        # Re-running the README's demo command reuses the dataset it made the first time.
        description = args.out_dir / "dataset_description.json"
        if description.is_file() and "disarm-pipeline demo" in description.read_text():
            print(f"disarm-demo: {args.out_dir} already holds the demo dataset", file=sys.stderr)
            return 0
        print(f"disarm-demo: error: {args.out_dir} exists and is not empty", file=sys.stderr)
        return int(ExitCode.CANT_CREATE)
    files = make_demo_dataset(
        args.out_dir, args.n_subjects, args.n_scanners, args.voxel_size, args.seed
    )
    print(json.dumps({"bids_dir": str(args.out_dir), "t1w": [str(f) for f in files]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
