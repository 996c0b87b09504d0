"""disarm-pipeline on a real (one-node, loopback) SLURM cluster.

The cluster comes from ``slurm_cluster.py`` and is skipped, with the reason, where SLURM, munge or
root are missing. Three checks: the cluster runs a job; the array-job example of
``examples/slurm`` gives each task its own participant and the documented arguments; and the
pipeline run with Nipype's SLURM plugin submits its nodes as SLURM jobs and writes the same
outputs as a MultiProc run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "slurm"


def _wait_for_queue(cluster: SlurmCluster, timeout: float) -> None:
    """Wait until no job of the cluster is pending or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.run("squeue", "-h", "-o", "%i").stdout.strip():
            return
        time.sleep(0.5)
    queue = cluster.run("squeue", check=False).stdout
    pytest.fail(f"jobs still queued after {timeout:.0f} s:\n{queue}")


def test_cluster_runs_a_batch_job(slurm_cluster, tmp_path):  # noqa: F811
    out = tmp_path / "job.out"
    job = slurm_cluster.sbatch("-o", str(out), "--wrap", "echo job=$SLURM_JOB_ID on $(hostname)")
    assert slurm_cluster.wait(job) == "COMPLETED"
    assert out.read_text().split() == [f"job={job}", "on", os.uname().nodename]
    assert job in slurm_cluster.submitted_job_ids()


RECORDER = """\
import json, os, sys
from pathlib import Path
# Stands in for `singularity run IMAGE`: records what the array task would run.
out = Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
work = sys.argv[sys.argv.index("-w") + 1]
record = {"argv": sys.argv[1:], "task": os.environ["SLURM_ARRAY_TASK_ID"],
          "work_exists": os.path.isdir(work)}
(out / f"task-{record['task']}.json").write_text(json.dumps(record))
"""


def test_array_example_gives_each_task_one_participant(slurm_cluster, tmp_path):  # noqa: F811
    bids = tmp_path / "bids"
    for label in ("03", "01", "10"):
        (bids / f"sub-{label}" / "anat").mkdir(parents=True)
    (bids / "derivatives").mkdir()  # not a participant
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {
        **slurm_cluster.env,
        "DISARM_CMD": f"{sys.executable} {recorder}",
        "DISARM_SCRATCH": str(scratch),
        # Fit the one 2-CPU node; the log goes to tmp_path, not the working directory.
        "SBATCH_EXTRA": f"--cpus-per-task=1 --mem=1536M --time=5 -o {tmp_path}/array-%A_%a.out",
        "MAX_PARALLEL": "2",
    }
    done = subprocess.run(
        [str(EXAMPLES / "submit_array.sh"), str(bids), str(tmp_path / "out"), "--seed", "3"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    job = int(done.stdout.split()[-1])  # "Submitted batch job N"
    _wait_for_queue(slurm_cluster, timeout=90)

    shown = slurm_cluster.run("scontrol", "show", "job", str(job)).stdout
    assert shown.count("JobState=COMPLETED") == 3, shown
    records = {
        int(r["task"]): r["argv"]
        for r in (json.loads(p.read_text()) for p in (tmp_path / "out").glob("task-*.json"))
    }
    # Task i gets the i-th sub-* folder in sorted order.
    assert sorted(records) == [1, 2, 3]
    for task, label in zip((1, 2, 3), ("01", "03", "10"), strict=True):
        argv = records[task]
        assert argv[:3] == [str(bids), str(tmp_path / "out"), "participant"]
        assert argv[argv.index("--participant-label") + 1] == label
        assert argv[argv.index("--nprocs") + 1] == "1"
        assert argv[argv.index("--omp-nthreads") + 1] == "1"
        assert argv[argv.index("--mem-gb") + 1] == "1"
        assert Path(argv[argv.index("-w") + 1]).parent == scratch
        assert argv[-2:] == ["--seed", "3"]
    assert all(json.loads(p.read_text())["work_exists"] for p in (tmp_path / "out").glob("*.json"))
    assert not list(scratch.iterdir()), "the tasks' work dirs must be removed at the end"


def _outputs(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _strip_run_specific(content):
    """JSON minus what legitimately differs between two runs (dates, paths of the run)."""
    if isinstance(content, dict):
        return {
            k: _strip_run_specific(v)
            for k, v in content.items()
            if not any(word in k.lower() for word in ("date", "time", "duration", "plugin"))
        }
    if isinstance(content, list):
        return [_strip_run_specific(v) for v in content]
    return content


@pytest.mark.slow
def test_pipeline_slurm_plugin_matches_multiproc(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    from conftest import run_cli

    from pipeline.demo import make_demo_dataset

    bids = tmp_path / "bids"
    make_demo_dataset(bids, n_subjects=1, n_scanners=2, voxel_mm=3.0, seed=2)
    # The harmonization node runs too once a default model is shipped; preprocessing only before.
    from models.harmonize import DEFAULT_MODEL_DIR

    shipped = (DEFAULT_MODEL_DIR / "model_card.json").is_file()
    common = ["--output-resolution", "2", "--omp-nthreads", "1", "--no-reports", "--seed", "0",
              "--harmonize", "scanner-free" if shipped else "none"]  # fmt: skip

    reference = run_cli(
        bids, tmp_path / "out-multiproc", "participant", "-w", tmp_path / "work-multiproc",
        "--nprocs", "2", *common, timeout=600,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]

    before = set(slurm_cluster.submitted_job_ids())
    plugin_args = {"sbatch_args": "--cpus-per-task=1 --mem=3G --time=10", "max_jobs": 4}
    # Nipype calls sbatch/squeue, and its jobs inherit the environment (sbatch --export=ALL).
    for key in ("SLURM_CONF", "LOGNAME"):
        monkeypatch.setenv(key, slurm_cluster.env[key])
    started = time.monotonic()
    on_slurm = run_cli(
        bids, tmp_path / "out-slurm", "participant", "-w", tmp_path / "work-slurm",
        "--plugin", "SLURM", "--plugin-args", json.dumps(plugin_args), *common,
        timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert on_slurm.returncode == 0, on_slurm.stderr[-3000:]

    # Nipype submitted the nodes as jobs, which all ran to completion on the cluster.
    jobs = sorted(set(slurm_cluster.submitted_job_ids()) - before)
    assert len(jobs) >= 3, f"only {jobs} submitted in {elapsed:.0f} s"
    assert {slurm_cluster.job_state(job) for job in jobs} == {"COMPLETED"}
    logs = {p.name for p in (tmp_path / "work-slurm").rglob("slurm-*.out")}
    assert {f"slurm-{job}.out" for job in jobs} <= logs

    # Same derivatives, file for file.
    ref_files, slurm_files = _outputs(tmp_path / "out-multiproc"), _outputs(tmp_path / "out-slurm")
    assert sorted(slurm_files) == sorted(ref_files)
    assert any(name.endswith(".nii.gz") for name in ref_files)
    for name, ref_path in ref_files.items():
        if name.endswith(".nii.gz"):
            ref_img, slurm_img = nb.load(ref_path), nb.load(slurm_files[name])
            assert np.allclose(ref_img.affine, slurm_img.affine), name
            np.testing.assert_array_equal(
                np.asanyarray(slurm_img.dataobj), np.asanyarray(ref_img.dataobj), err_msg=name
            )
        elif name.endswith(".json"):
            ref_json = json.loads(ref_path.read_text())
            slurm_json = json.loads(slurm_files[name].read_text())
            assert _strip_run_specific(slurm_json) == _strip_run_specific(ref_json), name
        elif name.endswith(".tsv"):
            assert slurm_files[name].read_text() == ref_path.read_text(), name
