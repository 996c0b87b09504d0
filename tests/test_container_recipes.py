"""The container recipes (docker/): up to date, complete, and their Python install replayed.

No Docker engine here, so the parts that can be checked without one are: the committed recipes
equal what ``docker/generate.py`` makes now; they hold the FSL packages, the entry point, the
non-root user and the pinned torch; the recipe's own ``pip install`` of the project, replayed in
a fresh virtual environment on a copy of exactly the paths the recipe copies, gives working
console scripts; and ``--backend auto`` picks FSL when ``$FSLDIR`` and ``fast``/``flirt`` exist.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def _load_generator():
    # docker/ is not a package (and `docker` is also a PyPI name): load the script by path.
    spec = importlib.util.spec_from_file_location("disarm_docker_generate", DOCKER / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()
RECIPES = sorted(GEN.RECIPES)


def _text(name: str) -> str:
    return (DOCKER / name).read_text()


def _build_requires() -> set[str]:
    """``[build-system] requires`` of pyproject.toml (no tomllib: Python 3.10 runs the tests)."""
    text = (REPO / "pyproject.toml").read_text()
    table = re.search(r"^\[build-system\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S)
    requires = re.search(r"^requires\s*=\s*\[(.*?)\]", table.group(1), flags=re.M | re.S)
    return set(re.findall(r'"([^"]+)"', requires.group(1)))


def _extra(name: str) -> set[str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return {line.strip() for line in cfg["options.extras_require"][name].splitlines() if line}


def _instructions(name: str) -> str:
    """The recipe without Neurodocker's JSON copy of its own specification."""
    text = _text(name)
    return (
        text.split("# Save specification to JSON.")[0]
        + text.split("# End saving to specification to JSON.")[-1]
    )


def test_recipes_are_up_to_date(tmp_path):
    pytest.importorskip("neurodocker", reason="neurodocker==2.1.2 not installed (.[container])")
    done = subprocess.run(
        [sys.executable, str(DOCKER / "generate.py"), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in RECIPES:
        fresh = (tmp_path / name).read_text()
        assert fresh == _text(name), f"docker/{name} is stale: run `python docker/generate.py`"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_installs_fsl_parts_from_fsl_conda_channel(name):
    text = _instructions(name)
    assert GEN.FSL_CHANNEL in text and "--override-channels" in text
    for package, version in GEN.FSL_PACKAGES.items():
        assert f'"{package}={version}"' in text
    # The build fails unless the tools and templates the pipeline needs are really there.
    for exe in ("fslreorient2std", "fast", "flirt"):
        assert f'"$FSLDIR/bin/{exe}"' in text
    for template in ("MNI152_T1_1mm.nii.gz", "MNI152_T1_1mm_brain_mask.nii.gz"):
        assert f'"$FSLDIR/data/standard/{template}"' in text
    assert f'FSLDIR="{GEN.CONDA_PREFIX}"' in text
    assert f'PATH="{GEN.CONDA_PREFIX}/bin:$PATH"' in text


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_pins_torch_then_installs_the_project(name):
    text = _instructions(name)
    torch_at = text.index(f'"torch=={GEN.TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"')
    project_at = text.index(GEN.PROJECT_INSTALL)
    assert torch_at < project_at, "torch must be installed (from its index) before the project"
    index = GEN.TORCH_CUDA_INDEX if name.endswith(".cuda") else GEN.TORCH_CPU_INDEX
    assert f"TORCH_INDEX_URL={index}" in text
    for rel in GEN.PROJECT_PATHS:
        copy = (
            f'COPY ["{rel}", \\\n      "{GEN.SRC_DIR}/{rel}"]'
            if name == "Dockerfile"
            else f"{rel} {GEN.SRC_DIR}/{rel}"
        )
        assert copy in text
    assert "disarm-pipeline --version" in text


def test_recipe_torch_is_the_tested_torch():
    torch = pytest.importorskip("torch")
    assert torch.__version__.split("+")[0] == GEN.TORCH_VERSION


def test_dockerfile_runs_as_non_root_with_entrypoint_and_labels():
    text = _instructions("Dockerfile")
    users = re.findall(r"^USER (\S+)$", _text("Dockerfile"), re.M)
    assert users and users[-1] == GEN.USER != "root"
    assert f"useradd --no-user-group --create-home --shell /bin/bash {GEN.USER}" in text
    assert 'ENTRYPOINT ["disarm-pipeline"]' in text
    from pipeline import __version__

    assert f'org.opencontainers.image.version="{__version__}"' in text
    assert "ARG TORCH_INDEX_URL=" in text
    # What pipeline.bids.container_info() records as GeneratedBy.Container.
    assert 'DISARM_CONTAINER_TYPE="docker"' in text
    assert f'DISARM_CONTAINER_TAG="disarm-pipeline:{__version__}"' in text


@pytest.mark.parametrize("name", ["Singularity", "Singularity.cuda"])
def test_singularity_runscript_and_build_environment(name):
    text = _instructions(name)
    assert text.splitlines()[3:5] == ["Bootstrap: docker", f"From: {GEN.BASE_IMAGE}"]
    assert '%runscript\ndisarm-pipeline "$@"' in text
    post = text.split("%post")[1].split("%runscript")[0]
    # %environment only applies at run time: %post must export FSLDIR/PATH itself.
    assert post.index("export MAMBA_ROOT_PREFIX=") < post.index("micromamba create")
    assert "su - " not in text  # Singularity runs as the calling user; no user switching
    from pipeline import __version__

    assert f"org.opencontainers.image.version {__version__}" in text


def test_recipe_python_install_replayed_in_fresh_venv(tmp_path):
    """The recipe's pip command, run on a copy of what the recipe copies, in a new venv.

    Offline replay: ``--no-deps --no-build-isolation``; everything else is the recipe's line. The
    new venv sees this environment's packages (the dependencies, and pip, setuptools and wheel to
    build the project) through a ``.pth`` file: ``--system-site-packages`` would not do, since a
    venv made from a venv sees the base interpreter's packages, not those of the venv.
    """
    # The image builds with [build-system]'s requirements in an isolated environment; offline,
    # this environment stands in for it, so the test extra carries them.
    build_requires = _build_requires()
    assert build_requires and build_requires <= _extra("test"), (
        f"pyproject.toml's build requirements {sorted(build_requires)} missing from the test extra"
    )
    missing = [rel for rel in GEN.PROJECT_PATHS if not (REPO / rel).exists()]
    assert not missing, f"the recipes COPY {missing}, absent from the repository: build would fail"
    src = tmp_path / "src" / "disarm-pipeline"
    for rel in GEN.PROJECT_PATHS:
        if (REPO / rel).is_dir():
            shutil.copytree(
                REPO / rel, src / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        else:
            src.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # Plain path lines: the .pth files of this environment (its editable install) are not run.
    ours = site.getsitepackages() + [site.getusersitepackages()] * bool(site.ENABLE_USER_SITE)
    (Path(purelib) / "this_environment.pth").write_text("\n".join(ours) + "\n")
    cmd = shlex.split(GEN.PROJECT_INSTALL)
    assert cmd[0] == "python" and cmd[-1] == GEN.SRC_DIR
    cmd = [str(python), *cmd[1:-1], "--no-deps", "--no-build-isolation", "--quiet", str(src)]
    # No PYTHONPATH, run outside the checkout: the editable install must not stand in.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]

    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as md, pipeline, models, workflows\n"
            "for m in (pipeline, models, workflows): print(m.__file__)\n"
            "eps = md.distribution('disarm-pipeline').entry_points\n"
            "for ep in eps: print(ep.name, ep.value)\n"
            "for ep in eps:\n"
            "    try: ep.load()\n"
            "    except Exception as err: print('BROKEN', ep.name, repr(err))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    broken = [line for line in lines if line.startswith("BROKEN")]
    assert not broken, f"console scripts of the image that cannot start: {broken}"
    venv_lib = str(venv / "lib")
    assert all(line.startswith(venv_lib) for line in lines[:3]), lines[:3]
    scripts = dict(line.split(" ", 1) for line in lines[3:])
    assert scripts["disarm-pipeline"] == "pipeline.cli.run:main"
    for script in scripts:
        assert (venv / "bin" / script).is_file(), f"{script} not installed in the venv's bin"

    # The image's ENTRYPOINT, from the venv's bin.
    version = subprocess.run(
        [str(venv / "bin" / GEN.ENTRYPOINT), "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    from pipeline import __version__

    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"disarm-pipeline {__version__}"

    # Package data the recipe must carry into the image (shipped model weights, HTML templates).
    for pattern in ("pipeline/data/*", "models/weights/*"):
        shipped = {
            p.name
            for p in REPO.glob(pattern)
            if p.suffix in (".json", ".tsv", ".html", ".safetensors")
        }
        installed = {p.name for p in (Path(lines[0]).parents[1]).glob(pattern)}
        assert shipped <= installed, f"{pattern}: {sorted(shipped - installed)} not installed"


@pytest.fixture
def fake_fsl(tmp_path, monkeypatch):
    """A fake FSL: ``$FSLDIR`` with the standard templates' names, stub tools first on PATH."""
    fsldir = tmp_path / "fsl"
    (fsldir / "data" / "standard").mkdir(parents=True)
    for template in GEN.FSL_TEMPLATES:
        (fsldir / "data" / "standard" / template).write_bytes(b"")
    bindir = fsldir / "bin"
    bindir.mkdir()
    for tool in GEN.FSL_EXECUTABLES:
        stub = bindir / tool
        stub.write_text("#!/bin/sh\necho 'stub FSL tool: not for real use' >&2\nexit 1\n")
        stub.chmod(0o755)
    monkeypatch.setenv("FSLDIR", str(fsldir))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return fsldir


def test_backend_auto_picks_fsl_when_fsldir_and_tools_exist(fake_fsl, tmp_path, monkeypatch):
    from pipeline.cli.run import build_config
    from pipeline.templates import resolve_backend

    assert resolve_backend("auto") == "fsl"
    bids = tmp_path / "bids"
    bids.mkdir()
    config = build_config(
        [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    )
    assert config.backend == "fsl"
    # Without $FSLDIR, or with flirt missing from PATH, auto falls back to ants.
    monkeypatch.delenv("FSLDIR")
    assert resolve_backend("auto") == "ants"
    monkeypatch.setenv("FSLDIR", str(fake_fsl))
    (fake_fsl / "bin" / "flirt").unlink()
    monkeypatch.setenv("PATH", str(fake_fsl / "bin"))
    assert resolve_backend("auto") == "ants"


def test_cli_reports_the_backend_it_picked(fake_fsl, tmp_path):
    from conftest import blob, run_cli, write_bids

    bids = write_bids(tmp_path / "bids", {"sub-01/anat/sub-01_T1w.nii.gz": blob((40, 48, 40))})
    done = run_cli(
        bids, tmp_path / "out", "participant", "-w", tmp_path / "work",
        "--nprocs", "1", "--stop-on-first-crash", "--no-reports", "--harmonize", "none",
        timeout=300,
    )  # fmt: skip
    # The stub FSL tools fail the run (exit 1); the backend line comes before any processing.
    assert "backend fsl" in done.stderr, done.stderr[-2000:]
    assert done.returncode == 1, done.stderr[-2000:]
    # ...and the node that failed ran FSL's fslreorient2std (our stub): the fsl workflow was built.
    crashes = list((tmp_path / "work" / "crash").glob("crash-*.txt"))
    assert any("fslreorient2std" in crash.read_text() for crash in crashes), done.stderr[-1500:]
