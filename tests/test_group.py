"""Group level (pipeline.group) on a small fake derivatives set: real NIfTI files, real stats.

The fake set (:func:`write_fake_derivatives`) is the ICBM template brain on a 4 mm grid, given
a per-subject shape (zoom) and size (the affine's determinant), then recorded by simulated
scanners (``models.simulate``) as ``desc-preproc``; ``desc-harmonized`` is the same anatomy
with no scanner effect, so harmonized images are alike across scanners by construction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from pipeline.exitcodes import ExitCode, UserError
from pipeline.group import format_summary, native_volume_factor, run_group_level

SPACE = "MNI152NLin2009aSym"
GRID_MM = 4.0
RESOLUTION = "4 mm isotropic (a coarse test grid)"


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nb.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, path)


def _template_on_grid() -> tuple[np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_template

    tpl = load_mni152_template(resolution=2)
    factor = GRID_MM / 2.0
    data = ndimage.zoom(tpl.get_fdata(dtype=np.float32), 1 / factor, order=1)
    affine = tpl.affine.copy()
    affine[:3, :3] *= factor
    return data.astype(np.float32), affine


def _itk_affine(scale: float) -> str:
    matrix = " ".join(f"{v:g}" for v in (np.eye(3) * scale).ravel())
    return (
        "#Insight Transform File V1.0\n#Transform 0\nTransform: AffineTransform_double_3_3\n"
        f"Parameters: {matrix} 0.5 -1 2\nFixedParameters: 0 0 0\n"
    )


def write_fake_derivatives(
    root: Path,
    n_per_scanner: int = 3,
    n_scanners: int = 2,
    harmonize: bool = True,
    with_age: bool = True,
    sessions: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """A raw dataset (participants.tsv only) and participant-level outputs; (out_dir, bids_dir).

    Subject ``i`` is ``sub-<i+1>`` on scanner ``i % n_scanners``; ``sessions`` gives each
    subject one image per session (same scanner).
    """
    from models.simulate import legacy_profiles, simulate_scanner

    # the first simulator's global curves: strong, simple scanner differences for the statistics
    profiles = [legacy_profiles()[k] for k in (0, 2, 4)][:n_scanners]
    base, affine = _template_on_grid()
    centre = (np.array(base.shape) - 1) / 2
    bids_dir, out_dir = root / "bids", root / "derivatives"
    bids_dir.mkdir(parents=True)
    (bids_dir / "dataset_description.json").write_text(
        json.dumps({"Name": "fake", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    out_dir.mkdir(parents=True)
    (out_dir / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "fake derivatives",
                "BIDSVersion": "1.10.0",
                "DatasetType": "derivative",
                "GeneratedBy": [{"Name": "disarm-pipeline", "Version": "0.1.0"}],
            }
        )
    )
    n = n_per_scanner * n_scanners
    rows = ["participant_id\tage\tsex" if with_age else "participant_id\tsex"]
    for i in range(n):
        label, profile = f"{i + 1:02d}", profiles[i % n_scanners]
        zoom = 0.96 + 0.08 * i / max(n - 1, 1)  # shape differs per subject
        size = 0.88 + 0.24 * ((i * 7) % n) / max(n - 1, 1)  # native size (xfm determinant)
        anatomy = ndimage.affine_transform(
            base, np.eye(3) / zoom, offset=centre - centre / zoom, order=1
        )
        age = 85 - 120 * (size - 0.88) + 3 * ((i * 5) % 3)
        rows.append(f"sub-{label}\t{age:.1f}\tF" if with_age else f"sub-{label}\tF")
        for ses in sessions or (None,):
            source = f"sub-{label}" + (f"_ses-{ses}" if ses else "")
            anat = out_dir / f"sub-{label}" / (f"ses-{ses}" if ses else "") / "anat"
            anat.mkdir(parents=True, exist_ok=True)
            stem = f"{source}_space-{SPACE}_res-{GRID_MM:g}"
            preproc = simulate_scanner(anatomy, profile, voxel_size_mm=(GRID_MM,) * 3, seed=i)
            _save(preproc * 900, affine, anat / f"{stem}_desc-preproc_T1w.nii.gz")
            raw_name = f"sub-{label}/anat/{source}_T1w.nii.gz"
            (anat / f"{stem}_desc-preproc_T1w.json").write_text(
                json.dumps(
                    {
                        "Sources": [f"bids:raw:{raw_name}"],
                        "SkullStripped": False,
                        "Resolution": RESOLUTION,
                        "Manufacturer": profile.manufacturer,
                        "ManufacturersModelName": profile.model,
                        "Preprocessing": {
                            "Backend": "ants",
                            "Steps": ["N4", "affine"],
                            "Template": SPACE,
                            "TemplateSource": "nilearn",
                            "AlignmentNCC": 0.85 - 0.01 * i,
                        },
                    }
                )
            )
            (anat / f"{source}_from-T1w_to-{SPACE}_mode-image_xfm.txt").write_text(
                _itk_affine(size ** (1 / 3))
            )
            if harmonize:
                _save(anatomy * 0.01, affine, anat / f"{stem}_desc-harmonized_T1w.nii.gz")
                (anat / f"{stem}_desc-harmonized_T1w.json").write_text(
                    json.dumps(
                        {
                            "Sources": [
                                f"bids::{anat.relative_to(out_dir)}/{stem}_desc-preproc_T1w.nii.gz"
                            ],
                            "SkullStripped": False,
                            "Resolution": RESOLUTION,
                            "Harmonization": {  # as models.harmonize writes it
                                "HarmonizationMethod": "DISARM",
                                "mode": "scanner-free",
                                "model": "disarm-test",
                                "weights_sha256": "0" * 64,
                                "seed": 0,
                            },
                        }
                    )
                )
    (bids_dir / "participants.tsv").write_text("\n".join(rows) + "\n")
    return out_dir, bids_dir


@pytest.fixture(scope="module")
def group_run(tmp_path_factory):
    out_dir, bids_dir = write_fake_derivatives(tmp_path_factory.mktemp("group"))
    paths = run_group_level(out_dir, bids_dir, seed=3)
    return out_dir, paths


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def test_every_table_has_its_columns(group_run):
    out_dir, paths = group_run
    expected = {
        "intensity": ["stage", "scanner", "n_images", "bin_start", "bin_end", "density_mean"],
        "anderson_darling": ["stage", "sample", "n_scanners", "statistic", "p_value", "note"],
        "ssim": ["comparison", "image_a", "image_b", "scanner_a", "scanner_b", "ssim"],
        "tgv": ["source", "scanner", "age", "stage", "tgv_ml_template", "tgv_ml"],
        "regression": ["stage", "n_images", "interaction_p", "rmse_insample", "rmse_loocv"],
        "images": ["source", "scanner", "stage", "brain_median_normalized"],
    }
    for key, columns in expected.items():
        assert paths[key] == out_dir / f"group_{key}.tsv" and paths[key].is_file()
        table = _tsv(paths[key])
        assert set(columns) <= set(table.columns), key
        assert set(table["stage"]) == {"preproc", "harmonized"} if "stage" in table else True
    for key in ("html", "fig_intensity", "fig_ssim", "fig_tgv"):
        assert paths[key].is_file() and paths[key].stat().st_size > 1000
    # the mean histograms are densities: each integrates to 1 over the bins
    hist = _tsv(paths["intensity"])
    for _, g in hist.groupby(["stage", "scanner"]):
        widths = g["bin_end"] - g["bin_start"]
        assert (g["density_mean"] * widths).sum() == pytest.approx(1.0, abs=0.02)
    html = paths["html"].read_text()
    for key in ("fig_intensity", "fig_ssim", "fig_tgv"):
        assert f'src="{paths[key].name}"' in html


def test_statistics_are_finite_and_sensible(group_run):
    _, paths = group_run
    ad = _tsv(paths["anderson_darling"]).set_index(["stage", "sample"])
    assert np.isfinite(ad["p_value"]).all() and np.isfinite(ad["statistic"]).all()
    # harmonized images carry no scanner effect: scanners are much less distinguishable
    before = ad.loc[("preproc", "image_median"), "p_value"]
    after = ad.loc[("harmonized", "image_median"), "p_value"]
    assert before <= 0.1 < after
    assert ad.loc[("preproc", "voxels"), "p_value"] < ad.loc[("harmonized", "voxels"), "p_value"]

    ssim = _tsv(paths["ssim"])
    pairs = ssim[ssim["comparison"] == "random_pairs"]
    same = ssim[ssim["comparison"] == "preproc_vs_harmonized"]
    assert len(same) == 6 and len(pairs) == 15  # 6 subjects: all 15 pairs (< 100)
    assert (pairs["image_a"] != pairs["image_b"]).all()
    assert np.isfinite(ssim["ssim"]).all() and ssim["ssim"].between(-1, 1).all()

    tgv = _tsv(paths["tgv"])
    assert np.isfinite(tgv["tgv_ml"]).all()
    # ITK determinant: native = template volume x det; the fake set stores det = size
    assert (tgv["tgv_ml"] / tgv["tgv_ml_template"]).between(0.87, 1.13).all()
    assert tgv["tgv_ml_template"].between(100, 1500).all()
    regression = _tsv(paths["regression"]).set_index("stage")
    for stage in ("preproc", "harmonized"):
        row = regression.loc[stage]
        assert row["n_images"] == 6
        assert 0 <= row["interaction_p"] <= 1
        assert 0 < row["rmse_insample"] <= row["rmse_loocv"]


def test_format_summary_names_the_key_numbers(group_run):
    _, paths = group_run
    text = format_summary(paths)
    for needle in ("Anderson-Darling", "preproc_vs_harmonized", "random_pairs", "interaction p"):
        assert needle in text
    ad = _tsv(paths["anderson_darling"])
    p = ad[(ad["stage"] == "harmonized") & (ad["sample"] == "image_median")]["p_value"].iloc[0]
    assert f"{p:.3g}" in text


def test_no_outputs_is_a_user_error(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError) as err:
        run_group_level(tmp_path / "out", tmp_path)
    assert err.value.code == ExitCode.NO_INPUT
    assert "participant level" in str(err.value)


def test_unknown_scanner_field_is_a_usage_error(group_run, tmp_path):
    out_dir, _ = group_run
    with pytest.raises(UserError) as err:
        run_group_level(out_dir, tmp_path, scanner_field="StationName")
    assert err.value.code == ExitCode.USAGE
    assert "ManufacturersModelName" in str(err.value)  # the fields that do exist are listed


def test_one_scanner_without_harmonization_or_age(tmp_path):
    """--harmonize none and no age: 'before' columns only; undefined tests are NaN + note."""
    out_dir, bids_dir = write_fake_derivatives(
        tmp_path, n_per_scanner=2, n_scanners=1, harmonize=False, with_age=False
    )
    paths = run_group_level(out_dir, bids_dir)
    assert "tgv" not in paths and "regression" not in paths
    ad = _tsv(paths["anderson_darling"])
    assert set(ad["stage"]) == {"preproc"} and ad["p_value"].isna().all()
    assert ad["note"].str.contains("fewer than 2 scanners").all()
    assert "no age column" in paths["html"].read_text()
    ssim = _tsv(paths["ssim"])
    assert list(ssim["comparison"]) == ["random_pairs"]


def test_native_volume_factor_itk_and_flirt(tmp_path):
    itk = tmp_path / "a_xfm.txt"
    itk.write_text(_itk_affine(1.1))
    assert native_volume_factor(itk) == pytest.approx(1.1**3)
    flirt = tmp_path / "a_xfm.mat"
    flirt.write_text("\n".join(" ".join(map(str, r)) for r in np.diag([0.5, 2.0, 0.8, 1.0])))
    assert native_volume_factor(flirt) == pytest.approx(1 / 0.8)
    assert math.isnan(native_volume_factor(None))
    (tmp_path / "bad.txt").write_text("garbage")
    assert math.isnan(native_volume_factor(tmp_path / "bad.txt"))
