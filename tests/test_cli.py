"""The command line as a user meets it: exit codes and one-line errors (BIDS-Apps draft)."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import blob, run_cli, write_bids

from pipeline.exitcodes import ExitCode


def _assert_one_line_error(proc: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(lines) == 1, proc.stderr
    assert words.lower() in lines[0].lower()


@pytest.fixture
def good_bids(tmp_path) -> Path:
    return write_bids(
        tmp_path / "bids",
        {
            "sub-01/anat/sub-01_T1w.nii.gz": blob(),
            "sub-02/anat/sub-02_T1w.nii.gz": blob(seed=1),
            "sub-03/func/sub-03_task-rest_bold.nii.gz": np.zeros((8, 8, 8, 4), np.float32),
        },
    )


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("disarm-pipeline ")


def test_unknown_analysis_level(good_bids, tmp_path):
    proc = run_cli(good_bids, tmp_path / "out", "session")
    _assert_one_line_error(proc, ExitCode.UNKNOWN_LEVEL, "unknown analysis level")


def test_usage_error(good_bids, tmp_path):
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--nprocs", "zero")
    _assert_one_line_error(proc, ExitCode.USAGE, "--nprocs")


def test_missing_bids_dir(tmp_path):
    proc = run_cli(tmp_path / "nope", tmp_path / "out", "participant")
    _assert_one_line_error(proc, ExitCode.NO_INPUT, "does not exist")
    assert not (tmp_path / "out").exists()


def test_not_bids(tmp_path):
    (tmp_path / "notbids").mkdir()
    proc = run_cli(tmp_path / "notbids", tmp_path / "out", "participant")
    _assert_one_line_error(proc, ExitCode.INVALID_BIDS, "not a BIDS dataset")


def test_dataset_without_t1w(tmp_path):
    bids = write_bids(tmp_path / "bids", {"sub-01/anat/sub-01_T2w.nii.gz": blob()})
    proc = run_cli(bids, tmp_path / "out", "participant")
    _assert_one_line_error(proc, ExitCode.NO_INPUT, "no T1w image")


def test_unknown_participant(good_bids, tmp_path):
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--participant-label", "sub-99")
    _assert_one_line_error(proc, ExitCode.NO_MATCH, "sub-99")


def test_participant_without_t1w(good_bids, tmp_path):
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--participant-label", "01", "03")
    _assert_one_line_error(proc, ExitCode.NO_MATCH, "no T1w image for sub-03")


def test_filter_selects_nothing(good_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text('{"t1w": {"acquisition": "mprage"}}')
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--bids-filter-file", filters)
    _assert_one_line_error(proc, ExitCode.NO_MATCH, "no T1w image matches")


def test_filter_file_not_json(good_bids, tmp_path):
    filters = tmp_path / "filters.json"
    filters.write_text("{acquisition: mprage")
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--bids-filter-file", filters)
    _assert_one_line_error(proc, ExitCode.USAGE, "not valid JSON")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"this is not a nifti file", "cannot read"),
        ("truncated", "cannot read"),
        (np.ones((12, 12, 12, 3), np.float32), "must be 3D"),
        ("nan", "NaN"),
        (np.zeros((12, 12, 12), np.float32), "empty"),
    ],
    ids=["garbage", "truncated-gzip", "4d", "nan", "all-zero"],
)
def test_unusable_image(tmp_path, content, words):
    if isinstance(content, str) and content == "nan":
        content = blob()
        content[3:5, 4, 4] = np.nan
    bids = write_bids(
        tmp_path / "bids",
        {"sub-01/anat/sub-01_T1w.nii.gz": blob(), "sub-02/anat/sub-02_T1w.nii.gz": blob()},
    )
    bad = bids / "sub-02/anat/sub-02_T1w.nii.gz"
    if isinstance(content, str):  # a gzip stream cut in the middle
        bad.write_bytes(gzip.compress(bad.read_bytes())[:200])
    else:
        write_bids(bids, {"sub-02/anat/sub-02_T1w.nii.gz": content})
    proc = run_cli(bids, tmp_path / "out", "participant", "-w", tmp_path / "work")
    _assert_one_line_error(proc, ExitCode.INVALID_BIDS, words)
    assert "sub-02_T1w.nii.gz" in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written for unusable input"


def test_output_inside_bids_dir(good_bids):
    before = sorted(p for p in good_bids.rglob("*"))
    proc = run_cli(good_bids, good_bids / "derivatives" / "disarm", "participant")
    _assert_one_line_error(proc, ExitCode.USAGE, "inside bids_dir")
    assert sorted(p for p in good_bids.rglob("*")) == before


def test_work_dir_inside_bids_dir(good_bids, tmp_path):
    proc = run_cli(good_bids, tmp_path / "out", "participant", "-w", good_bids / "work")
    _assert_one_line_error(proc, ExitCode.USAGE, "inside bids_dir")


def test_output_dir_is_a_file(good_bids, tmp_path):
    (tmp_path / "out").write_text("a file")
    proc = run_cli(
        good_bids, tmp_path / "out", "participant", "-w", tmp_path / "work", "--harmonize", "none"
    )
    _assert_one_line_error(proc, ExitCode.CANT_CREATE, "cannot write the output_dir")


def test_read_only_output_dir(good_bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    args = [good_bids, out, "participant", "-w", tmp_path / "work", "--harmonize", "none"]
    if (
        shutil.which("unshare")
        and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0
    ):
        # A read-only bind mount: permission bits alone do not stop root.
        script = f'mount --bind "{out}" "{out}" && mount -o remount,bind,ro "{out}" && exec "$@"'
        proc = run_cli(*args, prefix=["unshare", "--mount", "sh", "-c", script, "sh"])
    else:
        out.chmod(0o555)
        proc = run_cli(*args)
        out.chmod(0o755)
        if proc.returncode == 0:
            pytest.skip("running as root without mount namespaces: cannot make a read-only dir")
    _assert_one_line_error(proc, ExitCode.CANT_CREATE, "cannot write the output_dir")
    assert list(out.iterdir()) == []


def test_fsl_backend_without_fsl(good_bids, tmp_path, monkeypatch):
    monkeypatch.delenv("FSLDIR", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    proc = run_cli(good_bids, tmp_path / "out", "participant", "--backend", "fsl")
    if proc.returncode != ExitCode.USAGE and shutil.which("flirt", path="/usr/bin:/bin"):
        pytest.skip("FSL is installed system-wide")
    _assert_one_line_error(proc, ExitCode.USAGE, "needs $FSLDIR")
