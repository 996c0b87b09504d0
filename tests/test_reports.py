"""Participant reports (pipeline.reports) on fake participant-level outputs (real NIfTI files)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_group import write_fake_derivatives

from pipeline.exitcodes import ExitCode, UserError
from pipeline.reports import BIDSIGNORE, collect_outputs, generate_participant_report


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory) -> tuple[Path, Path]:
    """Two subjects, two sessions each, preprocessed and harmonized."""
    return write_fake_derivatives(
        tmp_path_factory.mktemp("reports"), n_per_scanner=1, n_scanners=2, sessions=("a", "b")
    )


def _snapshot(out_dir: Path, label: str) -> dict[str, bytes]:
    files = [out_dir / f"sub-{label}.html", *sorted((out_dir / f"sub-{label}").rglob("*.svg"))]
    return {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in files}


def test_collect_outputs_pairs_the_files(derivatives):
    out_dir, _ = derivatives
    outputs = collect_outputs(out_dir, ["sub-01"])
    assert [o.source for o in outputs] == ["sub-01_ses-a", "sub-01_ses-b"]
    for item in outputs:
        assert list(item.harmonized) == ["harmonized"]
        assert item.xfm is not None and item.xfm.name.endswith("_mode-image_xfm.txt")
        assert item.preproc_meta["Preprocessing"]["Backend"] == "ants"


def test_report_links_figures_that_exist(derivatives):
    out_dir, bids_dir = derivatives
    report = generate_participant_report(out_dir, "01", bids_dir)
    assert report == out_dir / "sub-01.html"
    text = report.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    # per image: registration, before/after, histograms
    assert len(sources) == 6
    for src in sources:
        assert not Path(src).is_absolute() and (out_dir / src).is_file(), src
        assert src.startswith("sub-01/figures/sub-01_ses-")
        assert re.search(r"_desc-(registration|harmonized|histogram)_T1w\.svg$", src)
    assert "AlignmentNCC" in text and "0.850" in text  # fake NCC of sub-01
    assert "0" * 64 in text and "disarm-test" in text  # model provenance
    assert "<script" not in text
    assert "age" in text  # participants.tsv row


def test_report_shows_the_model_domain_warnings(derivatives, tmp_path):
    """A harmonized image resampled onto the model's grid, with a warning: both in the report."""
    out_dir = tmp_path / "out"
    shutil.copytree(derivatives[0], out_dir)
    sidecar = next((out_dir / "sub-01").rglob("*_desc-harmonized_T1w.json"))
    meta = json.loads(sidecar.read_text())
    meta["Harmonization"].update(
        ResampledToModelGrid=True,
        ModelSpace="MNI152NLin2009aSym",
        ModelDomainWarnings=["the input is in MNI152NLin6Asym <not the model's>"],
    )
    sidecar.write_text(json.dumps(meta))
    text = generate_participant_report(out_dir, "01", derivatives[1]).read_text()
    assert "ResampledToModelGrid" in text and "MNI152NLin2009aSym" in text
    assert "Warning: the input is in MNI152NLin6Asym &lt;not the model&#x27;s&gt;" in text


def test_rerun_gives_identical_files(derivatives):
    out_dir, bids_dir = derivatives
    generate_participant_report(out_dir, "sub-02", bids_dir)
    first = _snapshot(out_dir, "02")
    generate_participant_report(out_dir, "sub-02", bids_dir)
    assert _snapshot(out_dir, "02") == first
    assert len(first) == 7


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None, reason="no validator")
def test_validator_ignores_reports_and_group_files(derivatives):
    out_dir, bids_dir = derivatives
    generate_participant_report(out_dir, "01", bids_dir)
    (out_dir / "group.html").write_text("<html></html>")
    (out_dir / "group_ssim.tsv").write_text("a\tb\n1\t2\n")
    result = subprocess.run(
        ["bids-validator-deno", "--no-color", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lines = (out_dir / ".bidsignore").read_text().splitlines()
    assert all(lines.count(pattern) == 1 for pattern in BIDSIGNORE)


def test_existing_bidsignore_is_kept(tmp_path):
    out_dir, _ = write_fake_derivatives(tmp_path, n_per_scanner=1, n_scanners=1, harmonize=False)
    (out_dir / ".bidsignore").write_text("extra/\n*.html\n")
    report = generate_participant_report(out_dir, "01")
    lines = (out_dir / ".bidsignore").read_text().splitlines()
    assert lines[:2] == ["extra/", "*.html"] and lines.count("*.html") == 1
    assert set(BIDSIGNORE) <= set(lines)
    # --harmonize none: preprocessing only, said so
    text = report.read_text()
    assert "No harmonized image" in text
    assert len(re.findall(r'<img src="([^"]+)"', text)) == 2


def test_unknown_subject_is_a_user_error(derivatives):
    out_dir, _ = derivatives
    with pytest.raises(UserError) as err:
        generate_participant_report(out_dir, "99")
    assert err.value.code == ExitCode.NO_INPUT
