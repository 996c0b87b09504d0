"""The participant and group levels end to end on the demo dataset (ants backend, real runs)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from conftest import cli_command, make_random_model, run_cli

from pipeline.exitcodes import ExitCode

pytestmark = pytest.mark.slow

SPACE = "MNI152NLin2009aSym"
TARGET = "DISCOVERY MR750"  # the second scanner of the demo data


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_random_model(tmp_path_factory.mktemp("model") / "m", ["Prisma_fit", TARGET])


def _pipeline(bids: Path, out: Path, work: Path, model: Path, *extra: str):
    return run_cli(
        bids,
        out,
        "participant",
        "-w",
        work,
        "--output-resolution",
        "2",
        "--nprocs",
        "2",
        "--omp-nthreads",
        "1",
        "--model",
        model,
        *extra,
    )


@pytest.fixture(scope="module")
def demo_run(demo_bids, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    proc = _pipeline(
        demo_bids, root / "out", root / "work", tiny_model, "--output-spaces", "template", "T1w"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _outputs(sub: str) -> list[str]:
    anat = f"sub-{sub}/anat/sub-{sub}"
    names = [
        f"{anat}_space-{SPACE}_res-2_desc-preproc_T1w",
        f"{anat}_space-{SPACE}_res-2_desc-harmonized_T1w",
        f"{anat}_space-T1w_desc-harmonized_T1w",
        f"{anat}_desc-biasfield_T1w",
    ]
    files = [f"{n}.nii.gz" for n in names] + [f"{n}.json" for n in names]
    return [*files, f"{anat}_from-T1w_to-{SPACE}_mode-image_xfm.txt", f"sub-{sub}.html"]


def test_every_output_with_its_sidecar(demo_run):
    out = demo_run[0] / "out"
    for sub in ("01", "02", "03"):
        for name in _outputs(sub):
            assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp")), "no temporary file may stay behind"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "disarm-pipeline"


def test_sidecars_carry_provenance(demo_run, demo_bids, tiny_model):
    anat = demo_run[0] / "out" / "sub-02" / "anat"
    preproc = json.loads((anat / f"sub-02_space-{SPACE}_res-2_desc-preproc_T1w.json").read_text())
    raw = json.loads((demo_bids / "sub-02" / "anat" / "sub-02_T1w.json").read_text())
    assert preproc["Sources"] == ["bids:raw:sub-02/anat/sub-02_T1w.nii.gz"]
    assert preproc["SkullStripped"] is False
    assert preproc["ManufacturersModelName"] == raw["ManufacturersModelName"]
    assert preproc["Preprocessing"]["AlignmentNCC"] > 0.8
    assert preproc["PipelineVersions"]["antspyx"]
    # --omp-nthreads 1: the ITK threads N4 and the registration ran with (their output
    # depends on it), in the sidecars of the files they made
    assert preproc["Preprocessing"]["NumThreads"] == {"N4": 1, "Registration": 1}
    assert "bit for bit" in preproc["Preprocessing"]["NumThreadsNote"]
    stem = f"sub-02_from-T1w_to-{SPACE}_mode-image_xfm"
    xfm = json.loads((anat / f"{stem}.json").read_text())
    assert xfm["NumThreads"] == {"N4": 1, "Registration": 1}
    bias = json.loads((anat / "sub-02_desc-biasfield_T1w.json").read_text())
    assert bias["NumThreads"] == {"N4": 1}
    # the 3 mm demo source on the 2 mm grid: its voxel size, and a note that detail there is
    # interpolated
    assert preproc["Preprocessing"]["SourceVoxelSizeMM"] == pytest.approx([3.0, 3.0, 3.0])
    note = preproc["Preprocessing"]["SourceResolutionNote"]
    assert "coarser than the 2 mm template grid" in note
    harmonized = json.loads(
        (anat / f"sub-02_space-{SPACE}_res-2_desc-harmonized_T1w.json").read_text()
    )
    card = json.loads((tiny_model / "model_card.json").read_text())
    assert harmonized["Harmonization"]["weights_sha256"] == card["weights_sha256"]
    assert harmonized["Harmonization"]["mode"] == "scanner-free"
    assert harmonized["Harmonization"]["seed"] == 0
    assert harmonized["Harmonization"]["NumThreads"] == 1
    assert harmonized["PipelineVersions"]["torch"]


def test_outputs_on_the_right_grids(demo_run, demo_bids):
    from pipeline.templates import get_template

    anat = demo_run[0] / "out" / "sub-01" / "anat"
    template = nb.load(str(get_template("ants", 2).brain))
    for desc in ("preproc", "harmonized"):
        img = nb.load(str(anat / f"sub-01_space-{SPACE}_res-2_desc-{desc}_T1w.nii.gz"))
        assert img.shape == template.shape
        assert np.allclose(img.affine, template.affine)
    raw = nb.load(str(demo_bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    native = nb.load(str(anat / "sub-01_space-T1w_desc-harmonized_T1w.nii.gz"))
    assert nb.aff2axcodes(native.affine) == ("L", "A", "S")  # fslreorient2std's orientation
    assert sorted(native.shape) == sorted(raw.shape)
    corners = np.array([[0, 0, 0, 1], [*np.array(raw.shape) - 1, 1]]).T
    native_corners = np.array([[0, 0, 0, 1], [*np.array(native.shape) - 1, 1]]).T
    raw_box = np.sort((raw.affine @ corners)[:3], axis=1)
    native_box = np.sort((native.affine @ native_corners)[:3], axis=1)
    assert np.allclose(raw_box, native_box, atol=1e-3)
    assert np.asanyarray(native.dataobj).std() > 0


def test_bids_validator_accepts_outputs(demo_run):
    validator = shutil.which("bids-validator-deno")
    assert validator, "bids-validator-deno is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run(
        [validator, "--no-color", str(demo_run[0] / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_pybids_finds_outputs_by_entities(demo_run):
    from bids import BIDSLayout

    layout = BIDSLayout(str(demo_run[0] / "out"), validate=False, is_derivative=True)
    assert len(layout.get(desc="preproc", suffix="T1w", extension=".nii.gz")) == 3
    assert len(layout.get(space=SPACE, desc="harmonized", extension=".nii.gz")) == 3
    assert len(layout.get(space="T1w", desc="harmonized", extension=".nii.gz")) == 3
    assert len(layout.get(suffix="xfm", extension=".txt", to=SPACE)) == 3
    assert layout.get(subject="03", desc="biasfield", extension=".nii.gz")


def _results(work: Path) -> dict[str, int]:
    """Modification time of every node's result file: a recomputed node rewrites it."""
    return {
        p.relative_to(work).as_posix(): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")
    }


def test_rerun_reuses_cache_and_is_identical(demo_run, demo_bids, tiny_model):
    """A rerun, even with another --omp-nthreads (not hashed: it changes no output), reruns no
    computing node and writes identical outputs."""
    root, _ = demo_run
    before = _digests(root / "out")
    nodes = ("n4", "brain_extraction", "affine", "disarm_harmonize")
    computed = {k: v for k, v in _results(root / "work").items() if k.split("/")[-2] in nodes}
    assert len(computed) >= 12  # 3 images x 4 computing nodes
    proc = _pipeline(
        demo_bids, root / "out", root / "work", tiny_model, "--output-spaces", "template", "T1w",
        "--omp-nthreads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _digests(root / "out") == before
    after = _results(root / "work")
    assert {k: after[k] for k in computed} == computed
    # the sidecars still give the thread count that computed the outputs, not this run's
    anat = root / "out" / "sub-01" / "anat"
    preproc = json.loads((anat / f"sub-01_space-{SPACE}_res-2_desc-preproc_T1w.json").read_text())
    assert preproc["Preprocessing"]["NumThreads"] == {"N4": 1, "Registration": 1}
    harmonized = json.loads(
        (anat / f"sub-01_space-{SPACE}_res-2_desc-harmonized_T1w.json").read_text()
    )
    assert harmonized["Harmonization"]["NumThreads"] == 1


def test_progress_names_each_node_and_counts_images(demo_run):
    """Default verbosity: every node started/finished with the image it belongs to, and one
    line per image done (n of N, elapsed)."""
    _, proc = demo_run
    err = proc.stderr
    for sub in ("01", "02", "03"):
        assert re.search(rf"\[sub-{sub}[^\]]*_T1w\] n4: started", err), err[-2000:]
        assert re.search(rf"\[sub-{sub}[^\]]*_T1w\] disarm_harmonize: finished in", err)
    done = re.findall(r"image (\d) of 3 done: (sub-\d\d\S*) \(elapsed \d+:\d\d\)", err)
    assert sorted(n for n, _ in done) == ["1", "2", "3"], err[-2000:]
    assert sorted(name[:6] for _, name in done) == ["sub-01", "sub-02", "sub-03"]


def test_participant_selection(demo_run, demo_bids, tiny_model):
    """One participant (quietly: -q keeps the per-image line only)."""
    root, _ = demo_run
    proc = _pipeline(
        demo_bids,
        root / "out-sel",
        root / "work",
        tiny_model,
        "--output-spaces",
        "template",
        "T1w",
        "--participant-label",
        "sub-03",
        "-q",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "image 1 of 1 done: sub-03" in proc.stderr and ": started" not in proc.stderr
    assert sorted(p.name for p in (root / "out-sel").glob("sub-*.html")) == ["sub-03.html"]
    selected = {k: v for k, v in _digests(root / "out-sel").items() if "/anat/" in k}
    full = _digests(root / "out")
    assert selected and all(full[name] == digest for name, digest in selected.items())


def test_target_scanner_mode(demo_run, demo_bids, tiny_model):
    root, _ = demo_run
    proc = _pipeline(
        demo_bids,
        root / "out-target",
        root / "work",
        tiny_model,
        "--participant-label",
        "01",
        "--harmonize",
        f"target:{TARGET}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "out-target" / "sub-01" / "anat"
    name = f"sub-01_space-{SPACE}_res-2_desc-harmonizedToDiscoveryMr750_T1w"
    sidecar = json.loads((out / f"{name}.json").read_text())
    assert sidecar["Harmonization"]["target"] == TARGET
    assert (out / f"{name}.nii.gz").is_file()


def test_unknown_target_scanner(demo_bids, tiny_model, tmp_path):
    proc = _pipeline(
        demo_bids,
        tmp_path / "out",
        tmp_path / "work",
        tiny_model,
        "--harmonize",
        "target:Nonexistent",
    )
    assert proc.returncode == ExitCode.USAGE
    assert "unknown target scanner 'Nonexistent'" in proc.stderr
    assert "Prisma_fit" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_bad_model(demo_bids, tiny_model, tmp_path, fault):
    model = tmp_path / "model"
    if fault == "truncated":
        shutil.copytree(tiny_model, model)
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        model.mkdir()
    proc = _pipeline(demo_bids, tmp_path / "out", tmp_path / "work", model)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "cannot use the DISARM model" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_group_level(demo_run, demo_bids):
    root, _ = demo_run
    proc = run_cli(demo_bids, root / "out", "group")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in (
        "group.html",
        "group_anderson_darling.tsv",
        "group_ssim.tsv",
        "group_regression.tsv",
    ):
        assert (root / "out" / name).is_file(), name
    assert "Anderson" in proc.stdout


def _processes_of(work: Path) -> list[int]:
    """PIDs whose environment names this run's Nipype config folder (the run, its forkserver
    and its workers)."""
    tag = f"NIPYPE_CONFIG_DIR={work / 'nipype-config'}".encode()
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if tag in env.read_bytes().split(b"\0"):
                pids.append(int(env.parent.name))
        except OSError:
            continue
    return pids


def test_killed_run_leaves_no_half_output_and_resumes(demo_run, demo_bids, tiny_model, tmp_path):
    """SIGTERM mid-run: exit 143 within seconds, no worker left running, nothing half-written
    under a final name; the rerun finishes with outputs identical to an uninterrupted run."""
    root, _ = demo_run
    out, work = tmp_path / "out", tmp_path / "work"
    args = [
        demo_bids, out, "participant", "-w", work, "--output-resolution", "2", "--nprocs", "2",
        "--omp-nthreads", "1", "--model", tiny_model, "--output-spaces", "template", "T1w",
    ]  # fmt: skip
    cmd, env = cli_command(*args)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(work.rglob("result_n4.pklz")) and time.monotonic() < deadline:
        time.sleep(0.5)  # until a first image is bias-corrected: the run is mid-way
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    time.sleep(2)
    assert _processes_of(work) == []  # no orphan worker finishing its node
    full = _digests(root / "out")
    partial = {k: v for k, v in _digests(out).items() if k != "dataset_description.json"}
    assert all(full.get(k) == v for k, v in partial.items()), "a half or stray file"
    rerun = _pipeline(demo_bids, out, work, tiny_model, "--output-spaces", "template", "T1w", "-q")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {k: v for k, v in _digests(out).items() if "/anat/" in k} == {
        k: v for k, v in full.items() if "/anat/" in k
    }
