"""The two benchmark scripts run end to end on tiny inputs (no timing is asserted).

Inputs: three 4 mm demo heads (``pipeline.demo``), a random-weight model of the shipped
configuration, K = 2 simulated scanners. ``bench_quality`` gets a derivatives folder made by
resampling the demo heads (which sit in MNI world coordinates up to a small random pose) onto
the 2 mm template grid, so the test does not pay for preprocessing; ``bench_speed`` runs every
real stage on one demo head.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import make_random_model

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
METHODS = ["none", "zscore", "histmatch", "nyul", "whitestripe", "disarm-free", "disarm-target"]


def _run(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(BENCH / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    from scipy import ndimage

    from pipeline.demo import make_demo_dataset
    from pipeline.templates import get_template

    root = tmp_path_factory.mktemp("bench")
    bids = root / "bids"
    make_demo_dataset(bids, n_subjects=3, n_scanners=2, voxel_mm=4.0)  # 3: correlations

    model = make_random_model(root / "model", ["Prisma_fit", "DISCOVERY MR750"])

    tpl = get_template("ants", 2)
    grid = nb.load(str(tpl.brain))
    deriv = root / "deriv"
    for sub in ("01", "02", "03"):
        raw = nb.load(str(bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"))
        vox2vox = np.linalg.inv(raw.affine) @ grid.affine
        data = ndimage.affine_transform(
            np.asarray(raw.dataobj, dtype=np.float32), vox2vox, output_shape=grid.shape, order=1
        )
        anat = deriv / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        stem = f"sub-{sub}_space-{tpl.space}_res-2_desc-preproc_T1w"
        nb.save(nb.Nifti1Image(data, grid.affine), str(anat / f"{stem}.nii.gz"))
        (anat / f"{stem}.json").write_text(json.dumps({"Preprocessing": {"Backend": "ants"}}))
    return {"root": root, "bids": bids, "model": model, "deriv": deriv}


def test_quality_table(demo):
    out = demo["root"] / "quality"
    proc = _run(
        "bench_quality.py", demo["bids"], "--deriv", demo["deriv"], "--model", demo["model"],
        "--profiles", BENCH / "profiles_unseen.json", "--n-scanners", "2", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in _read_csv(out / "quality.csv")}
    assert list(rows) == ["clean", *METHODS]
    assert "| method |" in proc.stdout and "| disarm-target |" in proc.stdout
    assert "| GM CoV ↓ | WM CoV ↓ | GM r clean ↑ | GM~age r | target hit ↑ |" in proc.stdout
    assert (out / "quality.md").read_text() in proc.stdout + "\n"
    value = {m: {k: float(v) for k, v in r.items() if k != "method"} for m, r in rows.items()}
    for m in METHODS:
        assert 0.0 < value[m]["pair_ssim"] <= 1.0
        assert 0.0 < value[m]["clean_ssim"] <= 1.0
        assert 0.0 <= value[m]["scanner_acc"] <= 1.0
        assert 0.0 < value[m]["ad_p_median"] <= 1.0
    # The two scanners differ (gain 1.10 vs 0.90, gamma, blur...): their images disagree.
    assert value["none"]["pair_mad"] > 0.05
    # A per-image normalization removes the gain difference a common scale leaves visible.
    assert value["zscore"]["pair_mad"] < value["none"]["pair_mad"]
    # Anatomy-kept SSIM ignores pure rescaling: z-score (affine) scores exactly like none.
    assert value["zscore"]["clean_ssim"] == pytest.approx(value["none"]["clean_ssim"], abs=1e-4)
    # Downstream: the scanners move the GM/WM fractions of one head; an affine method gets
    # the same segmentation as its input (it is scale-free), so the same CoV.
    assert value["none"]["gm_cov"] > 1e-3 and value["none"]["wm_cov"] > 1e-3
    assert value["zscore"]["gm_cov"] == pytest.approx(value["none"]["gm_cov"], abs=1e-4)
    # Biology: the clean heads are the reference row (only GM~age r); ages are in the TSV.
    assert -1.0 <= value["clean"]["gm_age_r"] <= 1.0
    assert all(np.isnan(v) for k, v in value["clean"].items() if k != "gm_age_r")
    for m in METHODS[:-2]:  # the random-weight model's outputs may be flat: no segmentation
        assert -1.0 <= value[m]["gm_r_clean"] <= 1.0 and -1.0 <= value[m]["gm_age_r"] <= 1.0
    # Target hit exists for disarm-target only; an unchanged input has no checkerboard.
    assert 0.0 <= value["disarm-target"]["target_hit"] <= 1.0
    assert all(np.isnan(value[m]["target_hit"]) for m in METHODS[:-1])
    assert value["none"]["checkerboard"] == pytest.approx(1.0)
    assert value["zscore"]["checkerboard"] == pytest.approx(1.0, abs=1e-3)
    assert value["disarm-free"]["checkerboard"] > 0.0
    per_head = _read_csv(out / "quality_per_head.csv")
    assert len(per_head) == (len(METHODS) + 1) * 3
    for r in per_head:
        assert 0.0 < float(r["gm_frac"]) < 1.0 or r["method"].startswith("disarm"), r
    settings = json.loads((out / "quality_settings.json").read_text())
    assert settings["heads"] == ["01", "02", "03"]
    assert set(settings["ages"]) == {"01", "02", "03"} and None not in settings["ages"].values()
    from models.simulate import unseen_profiles

    assert [p["name"] for p in settings["profiles"]] == [p.name for p in unseen_profiles()[:2]]
    assert settings["target"] == "Prisma_fit"


def test_quality_oracle_curve_bounds_global_curves(demo):
    """oracle-curve and oracle-landmarks (named only): each version histogram-matched to its
    own clean head, or mapped to it through 16 head quantiles. They undo the scanners' global
    intensity changes, so the versions' GM fractions agree better than unharmonized and the
    versions of a head agree better."""
    out = demo["root"] / "quality-oracle"
    proc = _run(
        "bench_quality.py", demo["bids"], "--deriv", demo["deriv"], "--methods", "none",
        "oracle-curve", "oracle-landmarks", "--profiles", BENCH / "profiles_unseen.json",
        "--n-scanners", "2", "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in _read_csv(out / "quality.csv")}
    assert list(rows) == ["clean", "none", "oracle-curve", "oracle-landmarks"]
    value = {m: {k: float(v) for k, v in r.items() if k != "method"} for m, r in rows.items()}
    for oracle in ("oracle-curve", "oracle-landmarks"):
        assert value[oracle]["pair_mad"] < value["none"]["pair_mad"], oracle
        assert value[oracle]["gm_cov"] < value["none"]["gm_cov"], oracle


def test_quality_user_error_is_one_line(demo, tmp_path):
    proc = _run("bench_quality.py", demo["bids"], "--deriv", tmp_path / "absent")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"bench_quality.py: error: derivatives folder not found: {tmp_path / 'absent'}"
    ]


def test_speed_table(demo):
    import torch

    out, work = demo["root"] / "speed", demo["root"] / "speed-work"
    t1w = demo["bids"] / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    proc = _run(
        "bench_speed.py", "--t1w", t1w, "--model", demo["model"], "--resolution", "2",
        "--work", work, "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _read_csv(out / "speed.csv")
    keys = [r["key"] for r in rows]
    assert keys == [
        "baseline", "reorient", "n4", "brain_extraction", "affine", "alignment_ncc",
        "harmonize", "report",
    ]  # fmt: skip
    for r in rows:
        assert float(r["seconds"]) >= 0.0
        assert float(r["peak_mib"]) > 50  # a Python process with numpy is never smaller
    ncc = next(r for r in rows if r["key"] == "alignment_ncc")["note"]
    assert float(ncc.split()[1]) > 0.8, ncc
    # the stages really ran: the harmonized image and the report exist
    anat = work / "deriv" / "sub-bench" / "anat"
    assert len(list(anat.glob("*_desc-harmonized_T1w.nii.gz"))) == 1
    assert (work / "deriv" / "sub-bench.html").is_file()
    if not torch.cuda.is_available():
        assert "GPU: no GPU" in proc.stdout


def test_speed_missing_input_is_one_line(tmp_path):
    proc = _run("bench_speed.py", "--t1w", tmp_path / "none.nii.gz")
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == f"bench_speed.py: error: T1w image not found: {tmp_path}/none.nii.gz"
    )


def test_example_profiles_are_the_held_out_defaults():
    from dataclasses import asdict

    from models.simulate import load_profiles, unseen_profiles

    # to the last bits only: the defaults are computed (exp, powers), and libm's last bit
    # differs between numpy builds
    stored = [asdict(p) for p in load_profiles(BENCH / "profiles_unseen.json")]
    defaults = [asdict(p) for p in unseen_profiles()]
    assert [list(p) for p in stored] == [list(p) for p in defaults]
    for got, want in zip(stored, defaults, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-12), (want["name"], key)
            else:
                assert got[key] == value, (want["name"], key)
