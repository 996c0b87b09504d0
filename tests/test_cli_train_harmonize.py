"""disarm-train and disarm-harmonize end to end on tiny real NIfTI files."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.checkpoint import read_card
from models.trainer import LOSS_NAMES
from pipeline.cli import harmonize as cli_harmonize
from pipeline.cli import train as cli_train
from pipeline.cli.train_inputs import preproc_images

SHAPE = (20, 24, 18)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(seed, gain=1.0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    c = [(s - 1) / 2 for s in SHAPE]
    r = np.sqrt(sum(((g - ci) / ci) ** 2 for g, ci in zip((z, y, x), c, strict=True)))
    data = np.where(r < 0.9, 500.0, 3.0) + np.where(r < 0.5 + 0.05 * seed, 300.0, 0.0)
    return (gain * data + rng.normal(0, 8, SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def derivatives(tmp_path_factory):
    """A BIDS-Derivatives-like folder: 4 subjects, 2 scanners, sidecars with the model name."""
    root = tmp_path_factory.mktemp("deriv")
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    rows = ["participant_id\tsite"]
    for i in range(4):
        sub = f"sub-{i:02d}"
        anat = root / sub / "anat"
        anat.mkdir(parents=True)
        stem = f"{sub}_space-MNI152NLin6Asym_desc-preproc_T1w"
        nib.save(nib.Nifti1Image(_head(i, 1.0 + i % 2), affine), anat / f"{stem}.nii.gz")
        model = ["Achieva", "Prisma"][i % 2]
        (anat / f"{stem}.json").write_text(json.dumps({"ManufacturersModelName": model}))
        rows.append(f"{sub}\tsite{i % 2}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


FAST = ["--steps", "2", "--patch-size", "16", "--checkpoint-every", "1", "--code-images", "1",
        "--nthreads", "1", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_train_bids_resume_and_harmonize(derivatives, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_train.main([str(derivatives), "--out", str(out), *FAST]) == 0
    card = read_card(out / "model")
    assert card["scanners"] == ["Achieva", "Prisma"]
    assert set(card["scanner_codes"]) == {"Achieva", "Prisma"}
    assert len(card["scanner_codes"]["Prisma"]) == card["config"]["z_dim"]
    assert card["training"]["steps"] == 2 and card["training"]["seed"] == 0
    assert card["training"]["travelling_heads"] is False  # real scanners never pair
    assert card["training"]["data"]["images_per_scanner"] == {"Achieva": 2, "Prisma": 2}
    assert card["training"]["grid"] == {
        "voxel_size_mm": [1.0, 1.0, 1.0],
        "shape": list(SHAPE),
        "affine": np.diag([-1.0, 1.0, 1.0, 1.0]).tolist(),
    }
    assert card["training"]["data"]["template_space"] == "MNI152NLin6Asym"
    assert json.loads((out / "latest.json").read_text())["step"] == 2
    assert len((out / "losses.tsv").read_text().splitlines()) == 3  # header + 2 steps

    # a second run into the same folder without --resume: refused, one line
    code = cli_train.main([str(derivatives), "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 64 and err.count("\n") == 1 and "--resume" in err
    # resume to 3 steps, from a log written before the last loss column existed and holding
    # a row for step 3, logged by a run stopped before its next checkpoint: the log is
    # rewritten with today's columns, old values under their names, the stale row dropped
    log = out / "losses.tsv"
    lines = [line.split("\t") for line in log.read_text().splitlines()]
    stale = ["3", *lines[-1][1:]]
    log.write_text("".join("\t".join(cells[:-1]) + "\n" for cells in [*lines, stale]))
    args = [str(derivatives), "--out", str(out), *FAST, "--resume"]
    args[args.index("--steps") + 1] = "3"
    assert cli_train.main(args) == 0
    assert read_card(out / "model")["training"]["steps"] == 3
    resumed = [line.split("\t") for line in log.read_text().splitlines()]
    assert resumed[0] == ["step", "lr", *LOSS_NAMES] and len(resumed) == 4
    assert all(len(row) == len(resumed[0]) for row in resumed)
    assert [row[:-1] for row in resumed[1:3]] == [cells[:-1] for cells in lines[1:]]
    assert [row[0] for row in resumed[1:]] == ["1", "2", "3"]  # step 3 once, the new one
    assert len(list((out / "checkpoints").glob("step-*"))) == 2  # --keep-checkpoints 2

    # disarm-harmonize with that model: image + sidecar, affine kept
    src = next(derivatives.rglob("sub-01_*_T1w.nii.gz"))
    dst = tmp_path / "h" / "sub-01_desc-harmonized_T1w.nii.gz"
    argv = [str(src), str(dst), "--model", str(out / "model"), "--nthreads", "1"]
    assert cli_harmonize.main([*argv, "--mode", "target", "--target", "Prisma"]) == 0
    img, ref = nib.load(dst), nib.load(src)
    assert np.array_equal(img.affine, ref.affine) and img.shape == ref.shape
    meta = json.loads(dst.with_name("sub-01_desc-harmonized_T1w.json").read_text())
    assert meta["mode"] == "target" and meta["target"] == "Prisma"
    assert meta["weights_sha256"] == read_card(out / "model")["weights_sha256"]
    assert meta["NumThreads"] == 1  # --nthreads 1: the image's last bits depend on it
    assert sorted(p.name for p in dst.parent.iterdir()) == sorted([dst.name, meta_name(dst)])
    assert "warnings" not in meta and "warning" not in capsys.readouterr().err

    # an image off the training grid (2 mm voxels): harmonized, with a warning said and kept
    coarse = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(_head(1), np.diag([2.0, 2.0, 2.0, 1.0])), coarse)
    coarse_out = tmp_path / "h2" / "coarse_h.nii.gz"
    assert cli_harmonize.main([str(coarse), str(coarse_out), "--model", str(out / "model")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning" in err and "2x2x2 mm voxels" in err
    assert (
        "1x1x1 mm"
        in json.loads(coarse_out.with_suffix("").with_suffix(".json").read_text())["warnings"][0]
    )

    # bad requests: non-zero exit, one line on stderr
    capsys.readouterr()
    bad = {
        "unknown target": ([*argv, "--mode", "target", "--target", "Nope"], 64, "known: "),
        "no target": ([*argv, "--mode", "target"], 64, "--target"),
        "missing input": ([str(tmp_path / "none.nii.gz"), str(dst), "--model",
                           str(out / "model")], 66, "not found"),
        "missing model": ([str(src), str(dst), "--model", str(tmp_path / "x")], 66, "not found"),
        "bad option": ([*argv, "--mode", "magic"], 64, "invalid choice"),
    }  # fmt: skip
    for name, (cmd, expected, text) in bad.items():
        with pytest.raises(SystemExit) if name == "bad option" else _nullcontext() as exc:
            code = cli_harmonize.main(cmd)
        if name == "bad option":
            code = exc.value.code
        err = capsys.readouterr().err
        assert code == expected, name
        assert err.count("\n") == 1 and text in err and "Traceback" not in err, (name, err)

    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.eye(4)), four)
    assert cli_harmonize.main([str(four), str(dst), "--model", str(out / "model")]) == 16
    assert "3D" in capsys.readouterr().err


def test_card_preprocessing_names_the_bias_correction(tmp_path):
    """What the model card records of its training images: the space- entity and the
    sidecar's Preprocessing, with the bias correction (the backend's for older sidecars)."""
    from pipeline.cli.train_inputs import preprocessing_of

    image = tmp_path / "sub-01_space-MNI152NLin6Asym_desc-preproc_T1w.nii.gz"
    sidecar = tmp_path / "sub-01_space-MNI152NLin6Asym_desc-preproc_T1w.json"
    sidecar.write_text(json.dumps({"Preprocessing": {"Backend": "fsl", "AlignmentNCC": 0.9}}))
    assert preprocessing_of(image) == {
        "template_space": "MNI152NLin6Asym",
        "preprocessing": {"Backend": "fsl", "BiasCorrection": "FAST"},
    }
    sidecar.unlink()
    assert preprocessing_of(image)["preprocessing"] == {}


def meta_name(path: Path) -> str:
    return path.name.replace(".nii.gz", ".json")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("config", ["fast", "head-curves", "restoring-curves"])
def test_train_from_tsv_with_simulated_scanners(derivatives, tmp_path, config):
    """Simulated travelling heads train end to end (head curves: each image with its whole
    head's quantiles, the quantile losses in the log; restoring-curves: the model harmonizes
    with its restorer)."""
    files = sorted(derivatives.rglob("*_T1w.nii.gz"))[:2]
    tsv = tmp_path / "images.tsv"
    tsv.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    out = tmp_path / "sim"
    args = [str(tsv), "--out", str(out), "--simulate-scanners", "default", *FAST]
    assert cli_train.main([*args, "--elastic-p", "1.0", "--config", config]) == 0
    log = (out / "losses.tsv").read_text().splitlines()
    quantile_anchor = [row.split("\t")[-1] for row in log[1:]]
    assert any(quantile_anchor) == (config != "fast")
    card = read_card(out / "model")
    assert card["config"]["name"] == config
    assert len(card["scanners"]) == 4
    assert card["scanner_info"]["ge-signa-spgr-1.5t"]["simulated"]
    assert card["training"]["travelling_heads"] and card["training"]["randomized_scanners"]
    assert card["training"]["data"]["images_per_scanner"]["siemens-prisma-mprage-3t"] == 2
    if config == "restoring-curves":
        import nibabel as nib

        from models.harmonize import Harmonizer

        assert card["config"]["restore_channels"] > 0
        img = nib.load(files[0])
        out_img, _ = Harmonizer.from_dir(out / "model").harmonize(img, mode="scanner-free")
        assert out_img.shape == img.shape and np.isfinite(out_img.get_fdata()).all()


def test_train_errors_are_one_line(derivatives, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], 66),
        ([str(derivatives), "--out", str(tmp_path / "o"), "--scanner-field", "Nope"], 16),
        ([str(derivatives), "--out", str(tmp_path / "o"), "--steps", "0"], 64),
        ([str(derivatives), "--out", str(tmp_path / "o"), "--simulate-scanners",
          str(tmp_path / "missing.json")], 64),
        ([str(derivatives), "--out", str(tmp_path / "o"), "--participant-label", "99"], 66),
    ]  # fmt: skip
    for argv, expected in cases:
        assert cli_train.main(argv) == expected, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("disarm-train: error:"), err
    # a participants.tsv column as the scanner label
    out = tmp_path / "col"
    assert cli_train.main([str(derivatives), "--out", str(out), "--scanner-column", "site",
                           *FAST]) == 0  # fmt: skip
    assert read_card(out / "model")["scanners"] == ["site0", "site1"]


def test_train_input_of_raw_dataset_root(derivatives, tmp_path, capsys):
    """pybids does not search a dataset's derivatives/ folder: the error says where to look; a
    broken dataset_description.json in the derivatives does not matter (as before)."""
    raw = tmp_path / "bids"
    shutil.copytree(derivatives, raw / "derivatives" / "disarm")
    (raw / "derivatives" / "disarm" / "dataset_description.json").write_text("{broken")
    assert cli_train.main([str(raw), "--out", str(tmp_path / "o"), *FAST]) == 66
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "derivatives/ inside it is not searched" in err, err
    assert len(preproc_images(raw / "derivatives" / "disarm")) == 4


def test_torchrun_two_process_gloo(derivatives, tmp_path):
    """Two CPU processes (gloo) train 1 step data-parallel and agree on the weights."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "pipeline.cli.train", str(derivatives), "--out", str(out), *FAST]  # fmt: skip
    cmd[cmd.index("--steps") + 1] = "1"
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert time.time() - t0 < 60
    card = read_card(out / "model")
    assert card["training"]["world_size"] == 2 and card["training"]["steps"] == 1


def test_training_is_reproducible_given_a_seed(derivatives, tmp_path):
    """Two runs with one seed (simulated travelling heads, elastic augmentation, checkpoints
    whose scanner codes are computed while the sampler prefetches, D_b-only steps) give
    identical weights and loss logs with fixed columns."""
    from safetensors.torch import load_file

    files = sorted(derivatives.rglob("*_T1w.nii.gz"))[:2]
    tsv = tmp_path / "images.tsv"
    tsv.write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    common = [str(tsv), "--simulate-scanners", "default", "--elastic-p", "0.7",
              "--content-d-every", "2", "--seed", "3", *FAST, "--steps", "4"]  # fmt: skip
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert cli_train.main([*common, "--out", str(out)]) == 0
    a, b = (load_file(out / "model" / "model.safetensors") for out in outs)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    logs = [(out / "losses.tsv").read_text().splitlines() for out in outs]
    assert logs[0] == logs[1] and len(logs[0]) == 5
    columns = logs[0][0].split("\t")
    assert all(len(row.split("\t")) == len(columns) for row in logs[0])
    assert "anchor" in columns and logs[0][1].split("\t")[columns.index("anchor")] == ""
