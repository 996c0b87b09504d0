"""Write a multi-scanner BIDS dataset by simulating scanners on the T1w images of another.

    python benchmarks/simulate_bids.py SRC_BIDS DEST_BIDS [--profiles unseen|training|FILE.json]
        [--participant-label ...] [--skip N] [--n-subjects N] [--assign split|all] [--seed 0]

``split`` gives each subject one simulated scanner (subject i -> profile i mod K: disjoint
subjects per scanner, as in a real multicenter study); ``all`` writes every subject once per
scanner, as ``ses-<profile>`` sessions (travelling heads). Sidecars copy the source's and set
``Manufacturer``, ``ManufacturersModelName`` and ``MagneticFieldStrength`` to the profile's, with
``SimulatedScannerProfile`` naming it; participants.tsv is copied. Source images are read,
never written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nibabel as nb
import numpy as np

from models.simulate import resolve_profiles, training_profiles, unseen_profiles


def _profiles(spec: str):
    if spec == "unseen":
        return unseen_profiles()
    if spec == "training":
        return training_profiles()
    return resolve_profiles(spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--profiles", default="unseen")
    parser.add_argument("--participant-label", nargs="+", default=None)
    parser.add_argument("--skip", type=int, default=0, help="skip the first N sorted subjects")
    parser.add_argument("--n-subjects", type=int, default=None)
    parser.add_argument("--assign", choices=("split", "all"), default="split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    profiles = _profiles(args.profiles)
    subjects = sorted(p.name[4:] for p in args.src.glob("sub-*") if p.is_dir())
    if args.participant_label:
        subjects = [
            s for s in subjects if s in {x.removeprefix("sub-") for x in args.participant_label}
        ]
    subjects = subjects[args.skip :]
    subjects = subjects[: args.n_subjects] if args.n_subjects else subjects
    if args.dest.exists():
        print(f"simulate_bids: {args.dest} exists", file=sys.stderr)
        return 73
    args.dest.mkdir(parents=True)
    description = json.loads((args.src / "dataset_description.json").read_text())
    description["Name"] = f"{description.get('Name', args.src.name)}, simulated scanners"
    description["GeneratedBy"] = [
        {
            "Name": "disarm-pipeline benchmarks/simulate_bids.py",
            "Description": f"profiles {[p.name for p in profiles]}, "
            f"assign {args.assign}, seed {args.seed}",
        }
    ]
    (args.dest / "dataset_description.json").write_text(json.dumps(description, indent=2))
    if (args.src / "participants.tsv").is_file():
        shutil.copy(args.src / "participants.tsv", args.dest / "participants.tsv")
    written = 0
    for index, subject in enumerate(subjects):
        for t1w in sorted((args.src / f"sub-{subject}").rglob("*_T1w.nii*")):
            img = nb.load(str(t1w))
            data = np.asanyarray(img.dataobj).astype(np.float32)
            sidecar = t1w.with_name(t1w.name.split(".nii")[0] + ".json")
            meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
            chosen = profiles if args.assign == "all" else [profiles[index % len(profiles)]]
            for profile in chosen:
                simulated = simulate_scanner_image(data, img, profile, args.seed + index)
                rel = t1w.relative_to(args.src)
                if args.assign == "all":
                    session = "".join(ch for ch in profile.name if ch.isalnum())
                    name = rel.name.replace(f"sub-{subject}_", f"sub-{subject}_ses-{session}_")
                    rel = Path(f"sub-{subject}") / f"ses-{session}" / "anat" / name
                out = args.dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                nb.save(simulated, str(out))
                out_meta = {
                    **meta,
                    "Manufacturer": profile.manufacturer,
                    "ManufacturersModelName": profile.model,
                    "MagneticFieldStrength": profile.field_strength,
                    "SimulatedScannerProfile": profile.name,
                }
                out.with_name(out.name.split(".nii")[0] + ".json").write_text(
                    json.dumps(out_meta, indent=2)
                )
                written += 1
    print(f"simulate_bids: {written} images of {len(subjects)} subjects in {args.dest}")
    return 0


def simulate_scanner_image(data, img, profile, seed: int) -> nb.Nifti1Image:
    from models.simulate import simulate_scanner

    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    out = simulate_scanner(data, profile, voxel_size_mm=zooms, seed=seed)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)
    return nb.Nifti1Image(out.astype(np.float32), img.affine, header)


if __name__ == "__main__":
    sys.exit(main())
