"""Shared fixtures: small BIDS datasets made on the fly, the shared real data, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread avoids OpenMP synchronisation costs on a shared CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_bids(root: Path, images: dict[str, np.ndarray | bytes], affine=None) -> Path:
    """A minimal BIDS dataset: ``images`` maps a relative T1w path to its data (or raw bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw"})
    )
    for rel, data in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            nb.save(
                nb.Nifti1Image(data, np.diag([2.0, 2, 2, 1]) if affine is None else affine),
                str(path),
            )
        if path.name.endswith("_T1w.nii.gz"):
            sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
            sidecar.write_text(json.dumps({"Manufacturer": "Test", "ManufacturersModelName": "X"}))
    return root


def blob(shape=(20, 22, 18), seed=0) -> np.ndarray:
    """A smooth positive 3D blob, a stand-in head for input-checking tests."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    data = np.exp(-4 * (grid**2).sum(0)) * 100 + rng.random(shape)
    return data.astype(np.float32)


def run_cli(
    *args: str | Path, cwd: Path | None = None, prefix: list[str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``disarm-pipeline`` in a subprocess, as a user would."""
    cmd, env = cli_command(*args, prefix=prefix)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def cli_command(*args: str | Path, prefix: list[str] | None = None) -> tuple[list[str], dict]:
    """The command line and environment that run ``disarm-pipeline`` from this checkout."""
    cmd = [*(prefix or []), sys.executable, "-m", "pipeline.cli.run", *map(str, args)]
    return cmd, {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available ({SHARED_DATA} absent)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_bids(tmp_path_factory) -> Path:
    """The embedded demo dataset: 3 synthetic heads, 3 mm, two simulated scanners."""
    from pipeline.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "bids"
    make_demo_dataset(root, n_subjects=3, n_scanners=2, voxel_mm=3.0, seed=1)
    return root


def make_random_model(path: Path, scanners: list[str], seed: int = 0) -> Path:
    """A model folder of the shipped ("fast") configuration with random weights: for tests of
    the wiring around the network, not of harmonization quality (tests/test_models_* do that)."""
    import torch

    from models.checkpoint import write_model_dir
    from models.disarm import Disarm
    from models.networks.config import get_config

    torch.manual_seed(seed)
    cfg = get_config("fast", n_scanners=len(scanners))
    card = {
        "name": "random-test-model",
        "config": cfg.to_dict(),
        "scanners": list(scanners),
        "scanner_codes": {s: [0.1 * i] * cfg.z_dim for i, s in enumerate(scanners)},
    }
    return write_model_dir(path, Disarm(cfg).state_dict(), card)
